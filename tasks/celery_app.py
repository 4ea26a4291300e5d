"""The Celery app operators' tools load: `celery -A tasks.app inspect|status|events|flower`.

`tasks.app:app` is this app, built from the environment (VISIONQ_REDIS_URL,
VISIONQ_REDIS_PREFIX, ...) on first access, like `Client()`: the workers'
configuration (broker, key prefix, queues, JSON only), so Celery's tools see the
real deployment. It is never a worker: `celery -A tasks.app worker` would consume
visionq's queues with no models loaded, so it refuses to start and points to
`visionq worker`. `visionq celery ...` runs Celery's own CLI with this app (immune
to a user's `tasks.py` in the current folder, which Celery would import first).
"""
from __future__ import annotations

import functools
import sys
from typing import Any

from celery import Celery

from tasks.settings import Settings

REFUSAL = (
    "visionq: `celery -A tasks.app worker` would take visionq jobs with no models loaded; "
    "start workers with `visionq worker` (docs/fleet.md). The Celery app is for inspect, "
    "control, status, events and flower (docs/observability.md)."
)


class OperatorCelery(Celery):
    """Celery as operators' tools use it, unable to become a worker."""

    @property
    def Worker(self) -> Any:  # noqa: N802 - Celery's name; `celery worker` builds its worker from it
        print(REFUSAL, file=sys.stderr)
        raise SystemExit(2)


@functools.cache
def operator_app() -> Celery:
    from tasks.app import make_celery  # tasks.app imports this module lazily, in its __getattr__

    return make_celery(Settings.from_env(), app_class=OperatorCelery)


def run_celery_cli(argv: list[str]) -> int:
    """`visionq celery ARGS`: `celery -A tasks.app ARGS`, with our `tasks` package.

    Our `tasks` is imported already (this module is in it), so Celery's import of
    `tasks.app` finds it in sys.modules before the current folder's `tasks.py`."""
    from celery.bin.celery import celery as celery_command

    try:
        celery_command.main(args=["-A", "tasks.app", *argv], prog_name="visionq celery")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
