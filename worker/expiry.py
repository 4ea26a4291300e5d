"""The expirer: every worker ends, for every kind, the queued jobs past their start deadline.

A kind that no worker serves would otherwise keep its jobs `queued` until their
record's TTL, and `wait()` on them would never return. One worker of the
deployment takes each turn (a short Redis lock), so a fleet does the work once.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import redis

from tasks.expiry import QueueEnds
from tasks.record import JobRecord
from tasks.store import JobStore

log = logging.getLogger("visionq.expiry")

INTERVAL_S = 2.0


class Expirer:
    def __init__(self, store: JobStore, on_ended: Callable[[JobRecord], None], interval_s: float = INTERVAL_S) -> None:
        """`on_ended(record)`: for each job this worker expired (its final event, its metrics)."""
        self.store = store
        self.ends = QueueEnds(store)
        self.on_ended = on_ended
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="visionq-expirer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self._take_turn():
                    self.expire()
            except redis.RedisError as exc:
                log.info("expiry skipped, Redis unavailable: %s", exc)
            except Exception:  # noqa: BLE001 - the expirer must outlive any one bad record
                log.exception("expiry failed")

    def _take_turn(self) -> bool:
        key = f"{self.store.prefix}:expirer"
        return bool(self.store.redis.set(key, "1", nx=True, px=int(self.interval_s * 1000)))

    def expire(self) -> list[JobRecord]:
        ended = self.ends.expire_due()
        for record in ended:
            log.warning("job %s expired: %s", record.id, (record.error or {}).get("message"))
            try:
                self.on_ended(record)
            except Exception:  # noqa: BLE001 - an event or a metric never undoes the expiry
                log.exception("job %s: after its expiry", record.id)
        return ended
