"""Celery's remote-control commands, as a visionq worker answers two of them.

`celery control shutdown` is an operator asking the worker to stop: it ends with exit 0, like
SIGTERM, not as a worker that stopped on its own (exit 70, which supervisors restart).
`celery control add_consumer QUEUE` is refused for a queue whose model this worker has not
loaded: it would take those jobs' messages, find no task for them, and Celery would drop them
(the sweeper would publish them again, to be dropped again, while the queue reads empty).
Every other command is Celery's own, unchanged.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from celery.worker.control import Panel


def answer_remote_control(worker_name: str, served_queues: Iterable[str], asked_to_stop: threading.Event) -> None:
    """Wrap Celery's `shutdown` and `add_consumer` handlers for this worker process."""
    served = sorted(set(served_queues))
    shutdown: Callable[..., Any] = Panel.data["shutdown"]
    add_consumer: Callable[..., Any] = Panel.data["add_consumer"]

    def stop_as_asked(state: Any, **kwargs: Any) -> Any:
        asked_to_stop.set()
        return shutdown(state, **kwargs)

    def consume_served_only(state: Any, queue: str, *args: Any, **kwargs: Any) -> Any:
        if queue not in served:
            return {"error": f"worker {worker_name} does not serve queue {queue!r} (its model is not loaded "
                             f"here); it consumes {', '.join(served)}"}
        return add_consumer(state, queue, *args, **kwargs)

    # Panel.data is the registry the worker's mailbox dispatches from, read at each command.
    Panel.data["shutdown"] = stop_as_asked
    Panel.data["add_consumer"] = consume_served_only
