"""kombu's Redis transport with one reused client for its synchronous commands.

kombu's `Channel.conn_or_acquire` builds a new redis-py client object (a prefixed
one, with our `global_keyprefix`) for every call that is not the consumer's own
BRPOP: every ack, every receipt's unacked bookkeeping, every reject. The client
is thrown away right after; it shares the channel's connection pool, so no new
connection is opened, but building it costs ~0.17 ms of CPU per call, twice per
job. Here the channel builds that client once and reuses it: redis-py clients
are safe to share between threads (each command borrows a pooled connection),
and the pool, the key prefix and the transaction semantics (kombu still runs its
MULTI/EXEC pipelines) stay exactly kombu's.

The upstream fix (docs/performance.md) is the same two lines in
`kombu.transport.redis.Channel.conn_or_acquire`: yield a cached client instead
of `self._create_client()`.

The ack itself: a job's final transition (tasks/store.py `advance`, `acknowledge`)
removes its message from kombu's unacked index and hash in the same Lua script that
makes the job final, so the message is never acknowledged without its result nor
the reverse, and kombu's own ack (a MULTI/ZREM/HDEL/EXEC round trip) is skipped for
it: `QoS.ack` only updates kombu's in-process books. Any other message (a job that
ended elsewhere, a dropped forgery) is acknowledged by kombu as before.

The receipt: kombu pops a message (BRPOP), then records it in its unacked bookkeeping
(a MULTI/ZADD/HSET/EXEC round trip), one message at a time, whatever the queue holds.
Here the receipt is one Lua script (`_RECEIVE`) that records the popped message and also
takes as many more as the channel's prefetch credit allows, highest priority first,
recording each in the same step: a worker with free slots and a backlog fills them in
one round trip instead of two per message, and those extra messages are never out of
both the queue and the unacked hash (kombu's BRPOP-then-MULTI has that window for every
message). They are delivered to Celery right after the first, as if BRPOP had returned
them one by one. A message the script cannot read, or one too large to parse there (an
image inline), goes back where it was, for kombu's own path to meet (and report) alone.

Installed by the worker (worker/process.py: `broker_transport`); producers never ack.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Iterator

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from tasks.redis_connect import is_sentinel

TRANSPORT = "worker.broker:Transport"  # Celery's `broker_transport`: kombu imports it by this name
SENTINEL_TRANSPORT = "worker.broker:SentinelTransport"


class AcknowledgedTags:
    """Delivery tags whose messages the job store already removed from kombu's unacked
    bookkeeping, in the script that made their job final (tasks/store.py `advance`)."""

    def __init__(self) -> None:
        self._tags: set[str] = set()
        self._lock = threading.Lock()

    def add(self, tag: str) -> None:
        with self._lock:
            self._tags.add(tag)

    def take(self, tag: str) -> bool:
        with self._lock:
            if tag in self._tags:
                self._tags.discard(tag)
                return True
            return False


acknowledged = AcknowledgedTags()

TAKE_ALONG_MAX_BYTES = 64 * 1024  # a job's message with a URI is ~2 KB; one with inline image data, up to MBs

# KEYS: kombu's unacked index and hash, then the worker's queue lists in BRPOP's order (priority
# first). ARGV: now, the tag of the message BRPOP took, its unacked entry, how many more to take,
# the largest message to take along (bytes). The unacked entry is what kombu's QoS.append writes:
# JSON [payload, exchange, routing key], here built around the message's own text. Returns
# {list position (1-based), message, ...}. Taking stops at the first message that is larger
# (one carrying an image inline: parsing it would hold Redis for milliseconds) or unreadable; it
# goes back where it was, for the next BRPOP.
_RECEIVE = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
local taken = {}
local wanted = tonumber(ARGV[4])
for i = 3, #KEYS do
  while wanted > 0 do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    local ok, message = false, nil
    if #item <= tonumber(ARGV[5]) then ok, message = pcall(cjson.decode, item) end
    local props = ok and type(message) == 'table' and message.properties
    local info = type(props) == 'table' and props.delivery_info
    local tag = type(props) == 'table' and props.delivery_tag
    if type(info) ~= 'table' or type(tag) ~= 'string' then  -- too large to parse here, or unreadable
      redis.call('RPUSH', KEYS[i], item)  -- back to the end RPOP and BRPOP take next
      return taken
    end
    redis.call('ZADD', KEYS[1], ARGV[1], tag)
    redis.call('HSET', KEYS[2], tag, '[' .. item .. ',' .. cjson.encode(info.exchange) .. ','
      .. cjson.encode(info.routing_key) .. ']')
    table.insert(taken, i - 2)
    table.insert(taken, item)
    wanted = wanted - 1
  end
end
return taken
"""


class QoS(kombu_redis.QoS):
    def append(self, message: Any, delivery_tag: str) -> None:
        channel = self.channel
        if channel.receiving:
            # The message BRPOP took: recorded, with what else the credit allows, in one step.
            channel.receiving = False
            credit = self.can_consume_max_estimate() or 0  # None: no prefetch limit, take none extra
            channel.record_and_take(message, delivery_tag, max(credit - 1, 0))
        elif delivery_tag in channel.taken_tags:
            channel.taken_tags.discard(delivery_tag)  # recorded by the script that took it
        else:
            super().append(message, delivery_tag)  # kombu's own MULTI (a message from another path)
            return
        virtual.QoS.append(self, message, delivery_tag)  # kombu's in-process books only

    def ack(self, delivery_tag: str) -> None:
        if acknowledged.take(delivery_tag):
            # Already gone from Redis with its job's final status: only kombu's own books remain.
            virtual.QoS.ack(self, delivery_tag)
            return
        super().ack(delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.receiving = False  # inside BRPOP's reply: QoS.append records through _RECEIVE
        self.taken_tags: set[str] = set()  # taken and recorded by _RECEIVE, not yet appended
        self._taken: deque[tuple[Any, str]] = deque()  # (payload, queue) to deliver next
        super().__init__(*args, **kwargs)

    @cached_property
    def _shared_client(self) -> Any:
        return self._create_client()

    @cached_property
    def _record_and_take(self) -> Any:  # (not `_receive`: kombu's channel has one, for pub/sub)
        # A client without kombu's key prefixing (which prefixes only an EVALSHA's first key):
        # the script's keys are named in full.
        return redis.Redis(connection_pool=self.pool).register_script(_RECEIVE)

    def record_and_take(self, message: Any, delivery_tag: str, more: int) -> None:
        delivery = message.delivery_info
        entry = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        queues = self._queue_cycle.consume(len(self.active_queues)) if more else []
        lists = [(self._q_for_pri(queue, pri), queue) for pri in self.priority_steps for queue in queues]
        prefix = self.global_keyprefix
        keys = [prefix + self.unacked_index_key, prefix + self.unacked_key, *(prefix + key for key, _ in lists)]
        taken = self._record_and_take(keys=keys, args=[time.time(), delivery_tag, entry, more, TAKE_ALONG_MAX_BYTES])
        for position, item in zip(taken[::2], taken[1::2]):
            payload = loads(bytes_to_str(item))
            self.taken_tags.add(payload["properties"]["delivery_tag"])
            self._taken.append((payload, lists[position - 1][1]))

    def _brpop_read(self, **options: Any) -> Any:
        self.receiving = True
        try:
            delivered = super()._brpop_read(**options)
        finally:
            self.receiving = False
        # Before kombu sends its next BRPOP: the credit these take is counted by then. (When the
        # first delivery raised, they go at the next read, at most a BRPOP timeout later.)
        self._deliver_taken()
        return delivered

    def _deliver_taken(self) -> None:
        # One by one, as BRPOP would have: an error in one delivery leaves the rest for the next read.
        while self._taken:
            payload, queue = self._taken.popleft()
            self.connection._deliver(payload, queue)

    def close(self) -> None:
        # Taken but never handed to Celery: back on their queues now rather than after the
        # visibility timeout (kombu restores only what it delivered).
        while self._taken:
            payload, _queue = self._taken.popleft()
            tag = payload["properties"]["delivery_tag"]
            self.taken_tags.discard(tag)
            try:
                self.qos.restore_by_tag(tag)
            except redis.RedisError:
                pass  # still in the unacked hash: restored after the visibility timeout
        super().close()

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client if client else self._shared_client


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The same channel, its connections to the primary Redis Sentinel names (a sentinel:// URL)."""


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def transport_for(redis_url: str) -> str:
    """Celery's `broker_transport` for this worker's Redis URL."""
    return SENTINEL_TRANSPORT if is_sentinel(redis_url) else TRANSPORT
