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

Installed by the worker (worker/process.py: `broker_transport`); producers never ack.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import cached_property
from typing import Any, Iterator

from kombu.transport import redis as kombu_redis

TRANSPORT = "worker.broker:Transport"  # Celery's `broker_transport`: kombu imports it by this name


class Channel(kombu_redis.Channel):
    @cached_property
    def _shared_client(self) -> Any:
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client if client else self._shared_client


class Transport(kombu_redis.Transport):
    Channel = Channel
