"""Following a job without holding a thread or a connection: server-sent events and `Prefer: wait`.

Every status or progress change is published on the job's event channel by the job store.
A gateway process listens to all the channels it needs on one pub/sub connection (`EventHub`):
each message wakes that job's followers, which read its record again; they also re-read it every
`POLL_S`, so a subscription that lagged or dropped only slows them down.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import redis.asyncio

from tasks.store import RECORD_FIELDS, record_from_fields
from tasks.errors import JobNotFound
from tasks.record import JobRecord
from tasks.webhooks import FINAL_EVENT, EventType

log = logging.getLogger("visionq.gateway")

POLL_S = 15.0  # a safety net: a subscription lost and made again wakes every follower itself
KEEPALIVE_S = 15.0  # a comment line that keeps proxies from closing an idle stream
SNAPSHOT_EVENT = "job.snapshot"
# The hub's read of its connection returns this often when nothing arrives, to send the
# subscriptions of the followers that came meanwhile: what a new follower may wait for them.
READ_S = 0.05
RESUBSCRIBE_S = 1.0  # after the subscription is lost, between two tries to make it again
SUBSCRIBED_WAIT_S = 5.0  # a follower's wait for Redis to confirm its channel, before reading the record
READS_AT_ONCE = 64  # followers' record reads in flight (all of them are woken at once after an outage)
OUTAGE_S = 60.0  # a follower whose record cannot be read for this long gives up (its stream ends)


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
    """The jobs a gateway process follows at once (event streams, `Prefer: wait`), per tenant and in
    all: each holds a client connection and a share of the process's record reads, so without a
    share per tenant one tenant's open streams would take them all. The event loop is the only
    caller: no lock."""

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


@dataclass
class _Channel:
    followers: set[asyncio.Event] = field(default_factory=set)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)  # Redis confirmed the SUBSCRIBE


class EventHub:
    """Every job channel this gateway process follows, on one pub/sub connection.

    A channel is subscribed while anyone follows its job. Followers only change `_channels`
    (no await: a follower cancelled as it leaves, a client gone, still leaves); one reader task
    owns the connection: it sends the SUBSCRIBEs and UNSUBSCRIBEs that bring Redis in line with
    `_channels` before each read, and reads the messages. Nothing else writes to the connection,
    so no command can land in the middle of redis-py reconnecting it. When the connection fails,
    a new one subscribes every channel again, then every follower is woken to read what it may
    have missed. Made and used on the server's event loop only."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self.redis, self.prefix = client, prefix
        self._channels: dict[str, _Channel] = {}  # what Redis should send us
        self._sent: set[str] = set()  # what this connection was last told to send
        self._pubsub = client.pubsub()
        self._wanted = asyncio.Event()  # a follower came or left: the reader has work
        self._reader: asyncio.Task[None] | None = None
        self.stopping = False  # the server is shutting down: followers end now

    def stop(self) -> None:
        """End every follower now (the server is asked to stop): a stream closes and a wait
        answers as its job stands, instead of holding the server open while its client stays."""
        self.stopping = True
        self._wake_all()

    @contextlib.asynccontextmanager
    async def follow(self, job_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set when the job's channel says it changed (or the subscription came back);
        the follower clears it before reading the record. Subscribed on entry (confirmed by
        Redis, or after SUBSCRIBED_WAIT_S), so that no change after its first read slips by."""
        name = f"{self.prefix}:events:{job_id}"
        channel = self._channels.setdefault(name, _Channel())
        changed = asyncio.Event()
        channel.followers.add(changed)
        try:
            self._wanted.set()
            self._start_reading()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(channel.subscribed.wait(), SUBSCRIBED_WAIT_S)
            yield changed
        finally:
            channel.followers.discard(changed)
            if not channel.followers:
                self._wanted.set()  # the reader unsubscribes it, unless someone follows it again first

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._pubsub.aclose()

    def _start_reading(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read(), name="visionq-event-hub")

    async def _read(self) -> None:
        lost = False
        while True:
            try:
                if not self._sent and not any(c.followers for c in self._channels.values()):
                    await self._idle()
                await self._bring_in_line()
                if not self._sent:  # the followers left before their channels were subscribed
                    continue
                message = await self._pubsub.get_message(timeout=READ_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever broke the connection, make a new one
                if not lost:
                    log.warning("the gateway's job event subscription was lost (%s: %s); subscribing "
                                "again every %.0f s", type(exc).__name__, exc, RESUBSCRIBE_S)
                lost = True
                await asyncio.sleep(RESUBSCRIBE_S)
                await self._new_connection()
                continue
            if lost:
                lost = False
                log.info("the gateway's job event subscription is back")
                self._wake_all()  # what changed while it was away
            if message is not None:
                self._dispatch(message)

    async def _idle(self) -> None:
        """Nothing followed and nothing subscribed: wait for a follower, without reading."""
        self._wanted.clear()
        await self._wanted.wait()

    async def _bring_in_line(self) -> None:
        """SUBSCRIBE what is followed and not yet subscribed, UNSUBSCRIBE what no one follows."""
        self._wanted.clear()
        gone = [name for name, channel in self._channels.items() if not channel.followers]
        for name in gone:
            del self._channels[name]
        new = [name for name in self._channels if name not in self._sent]
        old = [name for name in gone if name in self._sent]
        if new:
            await self._pubsub.subscribe(*new)
            self._sent.update(new)
        if old:
            await self._pubsub.unsubscribe(*old)
            self._sent.difference_update(old)

    async def _new_connection(self) -> None:
        old, self._pubsub, self._sent = self._pubsub, self.redis.pubsub(), set()
        with contextlib.suppress(Exception):
            await old.aclose()
        for channel in self._channels.values():
            channel.subscribed.clear()

    def _dispatch(self, message: dict[str, Any]) -> None:
        name = message["channel"]
        channel = self._channels.get(name.decode() if isinstance(name, bytes) else name)
        if channel is None:
            return
        if message["type"] == "subscribe":
            channel.subscribed.set()
        elif message["type"] == "message":
            for changed in channel.followers:
                changed.set()

    def _wake_all(self) -> None:
        for channel in self._channels.values():
            for changed in channel.followers:
                changed.set()


class AsyncJobs:
    def __init__(self, client: redis.asyncio.Redis, prefix: str, hub: EventHub) -> None:
        self.redis = client
        self.prefix = prefix
        self.hub = hub
        self._reads = asyncio.Semaphore(READS_AT_ONCE)

    async def get(self, job_id: str) -> JobRecord:
        async with self._reads:
            record = record_from_fields(await self.redis.hmget(f"{self.prefix}:job:{job_id}", RECORD_FIELDS))
        if record is None:
            raise JobNotFound.for_id(job_id)
        return record

    async def changes(self, job_id: str) -> AsyncIterator[JobRecord | None]:
        """The record now, then again after every change (or every POLL_S); None when nothing
        arrived for KEEPALIVE_S. Ends after a final record. Redis away for less than OUTAGE_S
        after the first read is waited out (the hub wakes its followers when it is back)."""
        async with self.hub.follow(job_id) as changed:
            changed.clear()
            record = await self.get(job_id)  # after subscribing: no change can slip between
            last_read = quiet_since = time.monotonic()
            yield record
            while not record.is_final and not self.hub.stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), POLL_S)
                if self.hub.stopping:
                    return
                if changed.is_set():
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= KEEPALIVE_S:
                    quiet_since = time.monotonic()
                    yield None
                changed.clear()
                try:
                    record = await self.get(job_id)
                except (redis.ConnectionError, redis.TimeoutError):
                    if time.monotonic() - last_read >= OUTAGE_S:
                        raise
                    continue
                last_read = time.monotonic()
                yield record

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
    """`job.snapshot`, then one event per change, ending after the final one. A stream that
    cannot go on (Redis away past OUTAGE_S, the job's record gone) ends after a comment saying
    why, as a stream the server stops does: the client opens it again and is answered what
    stands then (503, 404), never a response cut off mid-body."""
    yield sse_message(SNAPSHOT_EVENT, render(first))
    started_sent = first.status.value == "running"
    previous = first
    if first.is_final:
        yield sse_message(FINAL_EVENT[first.status.value].value, render(first))
        return
    try:
        async for record in jobs.changes(first.id):
            if record is None:
                yield ": keep-alive\n\n"
                continue
            for event in events_between(previous, record, started_sent=started_sent):
                started_sent = started_sent or event is EventType.STARTED
                yield sse_message(event.value, render(record))
            previous = record
    except (redis.RedisError, JobNotFound) as exc:
        log.warning("event stream of job %s ended: %s", first.id, exc)
        yield f": ended: {type(exc).__name__}\n\n"
