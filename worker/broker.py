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

Installed by the worker (worker/process.py: `broker_transport`); producers never ack.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Iterator

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

TRANSPORT = "worker.broker:Transport"  # Celery's `broker_transport`: kombu imports it by this name


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


class QoS(kombu_redis.QoS):
    def ack(self, delivery_tag: str) -> None:
        if acknowledged.take(delivery_tag):
            # Already gone from Redis with its job's final status: only kombu's own books remain.
            virtual.QoS.ack(self, delivery_tag)
            return
        super().ack(delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS

    @cached_property
    def _shared_client(self) -> Any:
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client if client else self._shared_client


class Transport(kombu_redis.Transport):
    Channel = Channel
