"""Following a job without holding a thread: server-sent events and `Prefer: wait`.

Both listen on the job's event channel (every status or progress change is
published there by the job store) with asyncio Redis, and re-read the record
every `POLL_S` as well, so a dropped subscription only slows them down.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Callable

import redis.asyncio

from tasks.store import RECORD_FIELDS, record_from_fields
from tasks.errors import JobNotFound
from tasks.record import JobRecord
from tasks.webhooks import FINAL_EVENT, EventType

POLL_S = 2.0
KEEPALIVE_S = 15.0  # a comment line that keeps proxies from closing an idle stream
SNAPSHOT_EVENT = "job.snapshot"


def events_between(previous: JobRecord, current: JobRecord, *, started_sent: bool) -> list[EventType]:
    """The webhook event types that lead from `previous` to `current`, `job.started` always
    before a final one when the job ran (even if its running state was never seen)."""
    if current.status.is_final:
        events = [] if started_sent or current.started_at is None else [EventType.STARTED]
        return [*events, FINAL_EVENT[current.status.value]]
    if current.status.value == "running":
        if previous.status.value != "running" or current.attempt != previous.attempt:
            return [EventType.STARTED]
        if current.progress != previous.progress:
            return [EventType.PROGRESS]
    return []


def sse_message(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class StreamSlots:
    """The jobs a gateway process follows at once (event streams, `Prefer: wait`). Each holds a
    pub/sub connection of the process's one Redis pool while it lasts, so without a share per
    tenant one tenant's open streams would take the whole pool and every other tenant's stream
    and wait would fail. The event loop is the only caller: no lock."""

    def __init__(self, per_tenant: int, total: int) -> None:
        self.per_tenant, self.total = per_tenant, total
        self._held: dict[str | None, int] = {}
        self._all = 0

    def take(self, tenant: str | None) -> bool:
        if self._all >= self.total or self._held.get(tenant, 0) >= self.per_tenant:
            return False
        self._held[tenant] = self._held.get(tenant, 0) + 1
        self._all += 1
        return True

    def give_back(self, tenant: str | None) -> None:
        self._all -= 1
        self._held[tenant] -= 1
        if not self._held[tenant]:
            del self._held[tenant]

    def pool_size(self) -> int:
        """Connections the pool needs: one per slot, one more per slot for a stream's record read,
        and some for everything else the routes read."""
        return 2 * self.total + 50


class AsyncJobs:
    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    async def get(self, job_id: str) -> JobRecord:
        record = record_from_fields(await self.redis.hmget(f"{self.prefix}:job:{job_id}", RECORD_FIELDS))
        if record is None:
            raise JobNotFound.for_id(job_id)
        return record

    async def changes(self, job_id: str) -> AsyncIterator[JobRecord | None]:
        """The record now, then again after every change (or every POLL_S); None when
        nothing arrived for KEEPALIVE_S. Ends after a final record."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(f"{self.prefix}:events:{job_id}")
        try:
            quiet_since = time.monotonic()
            while True:
                record = await self.get(job_id)  # after subscribing: no change can slip between
                yield record
                if record.is_final:
                    return
                message = await pubsub.get_message(timeout=POLL_S)
                if message is not None:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                    quiet_since = time.monotonic()
                    yield None
        finally:
            await pubsub.aclose()

    async def wait(self, job_id: str, timeout_s: float) -> JobRecord:
        """The record once final, or as it is after `timeout_s`."""
        record = await self.get(job_id)
        if record.is_final or timeout_s <= 0:
            return record
        try:
            async with asyncio.timeout(timeout_s):
                async for changed in self.changes(job_id):
                    if changed is not None:
                        record = changed
        except TimeoutError:
            pass
        return record


async def event_stream(
    jobs: AsyncJobs, first: JobRecord, render: Callable[[JobRecord], dict[str, Any]],
) -> AsyncIterator[str]:
    """`job.snapshot`, then one event per change, ending after the final one."""
    yield sse_message(SNAPSHOT_EVENT, render(first))
    started_sent = first.status.value == "running"
    previous = first
    if first.is_final:
        yield sse_message(FINAL_EVENT[first.status.value].value, render(first))
        return
    async for record in jobs.changes(first.id):
        if record is None:
            yield ": keep-alive\n\n"
            continue
        for event in events_between(previous, record, started_sent=started_sent):
            started_sent = started_sent or event is EventType.STARTED
            yield sse_message(event.value, render(record))
        previous = record
