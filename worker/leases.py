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
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import redis

log = logging.getLogger("visionq.worker")


def unacked_index_key(prefix: str) -> str:
    """kombu's sorted set of unacknowledged delivery tags by time taken (under our prefix)."""
    return f"{prefix}:unacked_index"


# This process's leases (one per worker process), for `give_back_all`.
_ALL: list[Leases] = []


def give_back_all() -> None:
    """The worker is about to exit on its own with jobs in hand (its model process died, a job
    stuck past its time limit): what it holds becomes deliverable again at kombu's next look
    for abandoned messages (every few seconds), not a visibility timeout (an hour) later."""
    for leases in list(_ALL):
        leases.give_back()


def exit_giving_back(code: int) -> None:
    """End this worker process now with `code` (os._exit), its messages given back first."""
    give_back_all()
    os._exit(code)


class Leases:
    def __init__(self, client: redis.Redis, prefix: str, visibility_timeout_s: float) -> None:
        self.client = client
        self.key = unacked_index_key(prefix)
        # Renewed several times per timeout, so one missed renewal (Redis away a
        # moment) does not let the message come back.
        self.interval_s = max(0.2, min(30.0, visibility_timeout_s / 4))
        self._tags: set[str] = set()
        self._lock = threading.Lock()
        self._given_back = False
        self._thread = threading.Thread(target=self._loop, name="visionq-leases", daemon=True)
        self._thread.start()
        _ALL.append(self)

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
            tags = [] if self._given_back else list(self._tags)
        if tags:
            # XX: only tags still unacknowledged; an acknowledged one is not brought back.
            self.client.zadd(self.key, {tag: time.time() for tag in tags}, xx=True)

    def give_back(self) -> None:
        """Date the messages held here as taken at the epoch: abandoned, for kombu's next look."""
        with self._lock:
            self._given_back = True  # no renewal dates them again before the exit
            tags = list(self._tags)
        if tags:
            try:
                self.client.zadd(self.key, {tag: 0 for tag in tags}, xx=True)
            except redis.RedisError as exc:  # they come back after the visibility timeout
                log.warning("messages in hand not given back, Redis unavailable: %s", exc)

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval_s)
            try:
                self.renew()
            except redis.RedisError as exc:
                log.info("leases not renewed, Redis unavailable: %s", exc)


def delivery_tag(request: Any) -> str | None:
    """kombu's delivery tag of the message a Celery task runs (its request); it travels
    in the message properties, Celery's own `delivery_info` leaves it out."""
    return (getattr(request, "properties", None) or {}).get("delivery_tag")


def survive_reconnects(client: redis.Redis, prefix: str) -> None:
    """Make kombu's Redis transport outlive a Redis restart in a consuming worker.

    On a lost connection kombu closes the consumer's channel, but messages taken on
    it are still being worked on here. Two things then went wrong:

    - closing the channel pushed every such message back onto its queue while its
      task was still running (a second worker could run it too), and, when the
      connection object was already torn down, failed with `AttributeError:
      'NoneType' object has no attribute 'hostname'`;
    - a task finishing after the reconnect acknowledged its message on the closed
      channel: `AttributeError: 'NoneType' object has no attribute 'client'`.

    Celery treats both as unrecoverable and stops the worker. Instead the messages
    stay in kombu's unacked hash: a task that finishes removes its message there
    with this process's own client, and the messages of a worker that died come
    back through the visibility timeout like any other.
    """
    from kombu.transport import redis as kombu_redis
    from kombu.transport import virtual

    kombu_redis.QoS.restore_at_shutdown = False
    if getattr(kombu_redis.QoS.ack, "survives_reconnects", False):
        return
    ack_on_open_channel = kombu_redis.QoS.ack
    index_key, hash_key = unacked_index_key(prefix), f"{prefix}:unacked"

    def ack(qos: Any, delivery_tag: str) -> None:
        connection = qos.channel.connection
        if connection is not None and connection.client is not None:
            ack_on_open_channel(qos, delivery_tag)
            return
        try:
            client.pipeline().zrem(index_key, delivery_tag).hdel(hash_key, delivery_tag).execute()
        except redis.RedisError as exc:  # it comes back after the visibility timeout, finds its job final
            log.warning("message %s not acknowledged, Redis unavailable: %s", delivery_tag, exc)
        virtual.QoS.ack(qos, delivery_tag)

    ack.survives_reconnects = True  # type: ignore[attr-defined]
    kombu_redis.QoS.ack = ack
