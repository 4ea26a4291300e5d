"""Where workers announce themselves in Redis (one heartbeat key each), and how anyone reads them back."""
from __future__ import annotations

import json
import time
from typing import Any

import redis

HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TTL_S = 15  # three missed beats and the worker disappears from the list

# A worker's `state` in its heartbeat: loading (models), ready (consuming, idle),
# busy (a job in hand), draining (warm shutdown).
SERVING_STATES = ("ready", "busy")


# How long a name stays in the workers' index after its last beat. Liveness is the heartbeat
# key's own TTL (Redis's clock); this only bounds the index, so hosts' clocks may differ.
INDEX_KEEP_S = 3600
MARKER_KEEP_S = 7 * 24 * 3600  # see indexed_marker_key


def worker_key(prefix: str, name: str) -> str:
    return f"{prefix}:workers:{name}"


def workers_index_key(prefix: str) -> str:
    """Sorted set of the names of workers that beat within INDEX_KEEP_S, scored by their last beat.
    Reading the workers through it costs a few commands; a SCAN of the keyspace for their keys
    walks every job record (1,000,000 of them: 95,000 round trips, 4.8 s a listing)."""
    return f"{prefix}:workers"


def indexed_marker_key(prefix: str) -> str:
    """Renewed by every heartbeat that writes the index, kept MARKER_KEEP_S: while it exists the
    index is the list, even empty (a fleet scaled to zero). After a rollback to a version without
    the index, delete it (or wait a week) for the older workers to be listed again."""
    return f"{prefix}:workers-indexed"


def announce(client: redis.Redis, prefix: str, name: str, state: str) -> None:
    """A heartbeat: the worker's key, which expires unless renewed, and its name in the index."""
    index = workers_index_key(prefix)
    with client.pipeline(transaction=False) as pipe:
        pipe.set(worker_key(prefix, name), state, ex=HEARTBEAT_TTL_S)
        pipe.zadd(index, {name: time.time()})
        pipe.expire(index, INDEX_KEEP_S)
        pipe.set(indexed_marker_key(prefix), "1", ex=MARKER_KEEP_S)
        pipe.execute()


def withdraw(client: redis.Redis, prefix: str, name: str) -> None:
    with client.pipeline(transaction=False) as pipe:
        pipe.delete(worker_key(prefix, name))
        pipe.zrem(workers_index_key(prefix), name)
        pipe.execute()


DELIVERY_WORKER_KINDS = ["webhooks"]  # what a webhook delivery worker's heartbeat says it serves
ROLES = ("model", "webhooks")


def worker_role(heartbeat: dict[str, Any]) -> str:
    """"webhooks" for a webhook delivery worker (`visionq webhooks`), else "model"."""
    return "webhooks" if heartbeat.get("kinds") == DELIVERY_WORKER_KINDS else "model"


def list_workers(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every live worker's last heartbeat, sorted by name."""
    index = workers_index_key(prefix)
    with client.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(index, "-inf", time.time() - INDEX_KEEP_S)
        pipe.zrange(index, 0, -1)
        pipe.exists(indexed_marker_key(prefix))
        _, names, indexed = pipe.execute()
    if indexed:
        keys = sorted(worker_key(prefix, name.decode()) for name in names)
    else:  # no worker of this version ever beat here: look for earlier versions' keys
        keys = sorted(client.scan_iter(match=worker_key(prefix, "*"), count=1000))
    values = client.mget(keys) if keys else []
    return [json.loads(v) for v in values if v is not None]


def worker_with_pid(client: redis.Redis, prefix: str, pid: int) -> dict[str, Any] | None:
    """The heartbeat of the worker process `pid` (on this host's pid space), if it is live."""
    return next((w for w in list_workers(client, prefix) if w.get("pid") == pid), None)


def serving_kinds(client: redis.Redis, prefix: str) -> set[str]:
    """The job kinds, and the models ("kind/name"), some live worker is consuming now (loading
    and draining ones do not count)."""
    return serving_of(list_workers(client, prefix))


def serving_of(workers: list[dict[str, Any]]) -> set[str]:
    """The kinds and "kind/name" models that the serving ones of these heartbeats consume."""
    return {served for w in workers if w.get("state") in SERVING_STATES
            for served in [*w.get("kinds", []), *w.get("models", {})]}
