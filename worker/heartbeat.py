"""A worker's presence in Redis: what `visionq workers` lists, refreshed while alive."""
from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any

import redis

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

    def _loop(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            self.beat()

