"""Leases: the messages a live worker holds are never delivered a second time.

kombu's Redis transport redelivers a message once it has been unacknowledged for
the visibility timeout, whether or not its worker is alive. A job may
legitimately outlast that timeout (a long generation, a storage outage waited
out for VISIONQ_STORAGE_RETRY_S), so while a job is in hand this worker keeps
moving its message's timestamp in kombu's unacked index forward. Only a worker
that is gone stops renewing, and only its messages come back: the visibility
timeout becomes "how long after a worker dies", not "the longest job".
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import redis

log = logging.getLogger("visionq.worker")


def unacked_index_key(prefix: str) -> str:
    """kombu's sorted set of unacknowledged delivery tags by time taken (under our prefix)."""
    return f"{prefix}:unacked_index"


class Leases:
    def __init__(self, client: redis.Redis, prefix: str, visibility_timeout_s: float) -> None:
        self.client = client
        self.key = unacked_index_key(prefix)
        # Renewed several times per timeout, so one missed renewal (Redis away a
        # moment) does not let the message come back.
        self.interval_s = max(0.2, min(30.0, visibility_timeout_s / 4))
        self._tags: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="visionq-leases", daemon=True)
        self._thread.start()

    @contextmanager
    def hold(self, delivery_tag: str | None) -> Iterator[None]:
        if delivery_tag is None:  # not from the broker (a direct call)
            yield
            return
        with self._lock:
            self._tags.add(delivery_tag)
        try:
            yield
        finally:
            with self._lock:
                self._tags.discard(delivery_tag)

    def renew(self) -> None:
        with self._lock:
            tags = list(self._tags)
        if tags:
            # XX: only tags still unacknowledged; an acknowledged one is not brought back.
            self.client.zadd(self.key, {tag: time.time() for tag in tags}, xx=True)

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval_s)
            try:
                self.renew()
            except redis.RedisError as exc:
                log.info("leases not renewed, Redis unavailable: %s", exc)


def keep_unacked_on_close() -> None:
    """Leave a closed channel's unacknowledged messages where they are, in Redis.

    On a lost connection (a Redis restart), kombu closes the consumer's channel and
    pushes every message it delivered back onto its queue, while their tasks are
    still running here: a second worker may then run them too. And if the
    connection object is already torn down at that moment, kombu fails with
    `AttributeError: 'NoneType' object has no attribute 'hostname'`, which Celery
    treats as unrecoverable (the worker stopped, 4 restarts in 5). Without the
    restore, the messages stay in the unacked hash: the running tasks acknowledge
    them when they finish, and those of a worker that died come back through the
    visibility timeout like any other.
    """
    from kombu.transport import redis as kombu_redis

    kombu_redis.QoS.restore_at_shutdown = False
