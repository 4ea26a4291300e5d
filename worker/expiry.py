"""The expirer: every worker ends, for every kind, the queued jobs past their start deadline.

A kind that no worker serves would otherwise keep its jobs `queued` until their
record's TTL, and `wait()` on them would never return. One worker of the
deployment takes each turn (a short Redis lock), so a fleet does the work once.
"""
from __future__ import annotations

import logging
from typing import Callable


from tasks.expiry import QueueEnds
from tasks.record import JobRecord
from tasks.store import JobStore
from worker.chores import Chore

log = logging.getLogger("visionq.expiry")

INTERVAL_S = 2.0


class Expirer(Chore):
    name = "expirer"

    def __init__(self, store: JobStore, on_ended: Callable[[JobRecord], None], interval_s: float = INTERVAL_S) -> None:
        """`on_ended(record)`: for each job this worker expired (its final event, its metrics)."""
        super().__init__(store, interval_s)
        self.ends = QueueEnds(store)
        self.on_ended = on_ended

    def run_once(self) -> list[JobRecord]:
        return self.expire()

    def expire(self) -> list[JobRecord]:
        ended = self.ends.expire_due()
        for record in ended:
            log.warning("job %s expired: %s", record.id, (record.error or {}).get("message"))
            try:
                self.on_ended(record)
            except Exception:  # noqa: BLE001 - an event or a metric never undoes the expiry
                log.exception("job %s: after its expiry", record.id)
        return ended
