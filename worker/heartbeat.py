"""A worker's presence in Redis: what `visionq workers` lists, refreshed while alive."""
from __future__ import annotations

import json
import os
import socket
import sys
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
        self.state["memory_mb"] = _memory_mb()
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

        def task_started(task_id: str = "", **_: Any) -> None:
            if self.state["state"] != "draining":
                self.update(state="busy", current_job=task_id)

        def task_done(**_: Any) -> None:
            changes: dict[str, Any] = {"current_job": None}
            if self.state["state"] != "draining":
                changes["state"] = "ready"
            if jobs_done is not None:
                changes["jobs_done"] = jobs_done()
            self.update(**changes)

        # weak=False: these closures have no other reference and would be collected.
        signals.worker_ready.connect(ready, weak=False)
        signals.worker_shutting_down.connect(draining, weak=False)
        signals.task_prerun.connect(task_started, weak=False)
        signals.task_postrun.connect(task_done, weak=False)

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            self.beat()



def _memory_mb() -> dict[str, float]:
    """Resident memory of this process, and the GPU memory torch holds if it is loaded."""
    memory: dict[str, float] = {}
    try:
        with open("/proc/self/statm") as statm:
            memory["rss"] = round(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except OSError:
        pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        memory["gpu_allocated"] = round(torch.cuda.memory_allocated() / 2**20, 1)
        memory["gpu_reserved"] = round(torch.cuda.memory_reserved() / 2**20, 1)
    return memory
