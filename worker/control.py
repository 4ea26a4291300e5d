"""Celery's remote-control commands, as a visionq worker answers two of them.

`celery control shutdown` is an operator asking the worker to stop: it drains and ends with
exit 0, like SIGTERM, not as a worker that stopped on its own (exit 70, which supervisors
restart). Celery sends `worker_shutting_down` only from its signal handlers, so the command
sends it here too: the heartbeat says `draining` and the worker knows it was asked.
`celery control add_consumer QUEUE` is refused for a queue whose model this worker has not
loaded (by the webhook delivery worker, for every queue but `visionq.webhooks`): it would take
those jobs' messages, find no task for them, and Celery would drop them (the sweeper would
publish them again, to be dropped again, while the queue reads empty).
Every other command is Celery's own, unchanged.

`consume` runs Celery's worker and tells a stop nobody asked for by the exit status.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from celery import signals
from celery.worker.control import Panel

# Celery's own handlers, taken once: the wrappers below replace them in the registry the
# worker's mailbox dispatches from (read at each command), and a second call must not wrap a wrapper.
_CELERY_SHUTDOWN = Panel.data["shutdown"]
_CELERY_ADD_CONSUMER = Panel.data["add_consumer"]
_served: dict[str, Any] = {"worker": "", "queues": []}

log = logging.getLogger("visionq.worker")

EXIT_UNEXPECTED_STOP = 70  # EX_SOFTWARE: the worker stopped on its own


def consume(app: Any, argv: list[str], worker_name: str) -> None:
    """Celery's worker (`argv`: worker_main's), until it stops. Celery returns normally (exit 0)
    after an "Unrecoverable error": unless the worker was asked to stop (a signal, `celery control
    shutdown`), exit EXIT_UNEXPECTED_STOP, so that a supervisor (the fleet's, systemd's
    Restart=on-failure, compose) restarts it."""
    asked_to_stop = threading.Event()
    signals.worker_shutting_down.connect(lambda **_: asked_to_stop.set(), weak=False)
    app.worker_main(argv)
    if not asked_to_stop.is_set():
        log.critical("worker %s stopped without being asked to; exiting %d", worker_name, EXIT_UNEXPECTED_STOP)
        raise SystemExit(EXIT_UNEXPECTED_STOP)


def answer_remote_control(worker_name: str, served_queues: Iterable[str]) -> None:
    """Install the two answers for this worker process, serving `served_queues`."""
    _served.update(worker=worker_name, queues=sorted(set(served_queues)))
    Panel.data["shutdown"] = _stop_as_asked
    Panel.data["add_consumer"] = _consume_served_only


def _stop_as_asked(state: Any, **kwargs: Any) -> Any:
    signals.worker_shutting_down.send(sender=_served["worker"], sig="remote shutdown", how="Warm", exitcode=0)
    return _CELERY_SHUTDOWN(state, **kwargs)


def _consume_served_only(state: Any, queue: str, *args: Any, **kwargs: Any) -> Any:
    if queue not in _served["queues"]:
        return {"error": f"worker {_served['worker']} does not serve queue {queue!r} (its model is not loaded "
                         f"here); it consumes {', '.join(_served['queues'])}"}
    return _CELERY_ADD_CONSUMER(state, queue, *args, **kwargs)
