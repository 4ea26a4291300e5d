"""A chore that one worker of the deployment does per interval, in a background thread.

Every worker runs the sweeper and the expirer, but a short Redis lock (the turn) makes
one of them do each round, so a fleet does the work once. A round that fails (Redis
away, one bad record) is logged and the next one comes: the chore outlives it.
"""
from __future__ import annotations

import logging
import threading

import redis

from tasks.store import JobStore

log = logging.getLogger("visionq.chores")


class Chore:
    name: str  # the thread's name, the Redis key of the turn, the log lines

    def __init__(self, store: JobStore, interval_s: float) -> None:
        self.store = store
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"visionq-{self.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> object:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self._take_turn():
                    self.run_once()
            except redis.RedisError as exc:
                log.info("%s skipped, Redis unavailable: %s", self.name, exc)
            except Exception:  # noqa: BLE001 - see the module docstring
                log.exception("%s failed", self.name)

    def _take_turn(self) -> bool:
        key = f"{self.store.prefix}:{self.name}"
        return bool(self.store.redis.set(key, "1", nx=True, px=int(self.interval_s * 1000)))
