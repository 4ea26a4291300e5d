"""A worker's presence in Redis: what `visionq workers` lists, refreshed while alive."""
from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any, Callable

import redis
from celery import signals

from tasks.record import utc_now
from tasks.workers import HEARTBEAT_INTERVAL_S, HEARTBEAT_TTL_S, worker_key


class Heartbeat:
    """Writes this worker's state every few seconds on a daemon thread."""

    def __init__(self, client: redis.Redis, prefix: str, name: str, info: dict[str, Any]) -> None:
        self.client = client
        self.key = worker_key(prefix, name)
        self.state: dict[str, Any] = {
            "name": name, "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": utc_now(), "state": "loading", "jobs_done": 0, **info,
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="visionq-heartbeat", daemon=True)

    def start(self) -> None:
        self.beat()
        self._thread.start()

    def update(self, **changes: Any) -> None:
        self.state.update(changes)
        self.beat()

    def beat(self) -> None:
        self.state["updated_at"] = utc_now()
        try:
            self.client.set(self.key, json.dumps(self.state), ex=HEARTBEAT_TTL_S)
        except redis.RedisError:
            pass  # Redis is briefly away; the next beat tries again

    def stop(self) -> None:
        self._stop.set()
        try:
            self.client.delete(self.key)
        except redis.RedisError:
            pass

    def follow_celery(self, jobs_done: Callable[[], int] | None = None) -> None:
        """ready once Celery consumes, draining on warm shutdown, jobs_done after each task."""
        def ready(**_: Any) -> None:
            self.update(state="ready")

        def draining(**_: Any) -> None:
            self.update(state="draining")

        def task_done(**_: Any) -> None:
            if jobs_done is not None:
                self.update(jobs_done=jobs_done())

        # weak=False: these closures have no other reference and would be collected.
        signals.worker_ready.connect(ready, weak=False)
        signals.worker_shutting_down.connect(draining, weak=False)
        signals.task_postrun.connect(task_done, weak=False)

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            self.beat()

