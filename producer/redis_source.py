"""The job store in Redis as a `JobSource`: how a `Job` of the direct-Redis SDK reads itself."""
from __future__ import annotations

from typing import Callable

from tasks.deliveries import EventPublisher
from tasks.expiry import QueueEnds
from tasks.heartbeats import serving_kinds
from tasks.record import JobRecord
from tasks.settings import redacted_url
from tasks.store import JobStore


class RedisJobSource:
    def __init__(self, store: JobStore, events: EventPublisher, redis_url: str) -> None:
        self.store = store
        self.events = events
        self.ends = QueueEnds(store)
        self.address = redacted_url(redis_url)
        if store.prefix != "visionq":  # workers under another VISIONQ_REDIS_PREFIX are not seen either
            self.address += f" with VISIONQ_REDIS_PREFIX={store.prefix}"

    def get(self, job_id: str) -> JobRecord:
        return self.store.get(job_id)

    def cancel(self, job_id: str) -> JobRecord:
        _, canceled_now = self.store.request_cancel(job_id)
        record = self.store.get(job_id)
        if canceled_now:
            # A queued job never reaches a worker, so its final event is sent from here.
            self.events.publish_final(record)
            self.ends.take_message_of(record)  # out of the queue depth
        return record

    def wait(
        self, job_id: str, timeout_s: float | None, on_change: Callable[[JobRecord], None] | None = None,
        seen: JobRecord | None = None,
    ) -> JobRecord:
        return self.store.wait_for_final(job_id, timeout_s, on_change=on_change, seen=seen)

    def serving_kinds(self) -> set[str]:
        return serving_kinds(self.store.redis, self.store.prefix)

