"""Where workers announce themselves in Redis (one heartbeat key each), and how anyone reads them back."""
from __future__ import annotations

import json
from typing import Any

import redis

HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TTL_S = 15  # three missed beats and the worker disappears from the list

# A worker's `state` in its heartbeat: loading (models), ready (consuming, idle),
# busy (a job in hand), draining (warm shutdown).
SERVING_STATES = ("ready", "busy")


def worker_key(prefix: str, name: str) -> str:
    return f"{prefix}:workers:{name}"


def list_workers(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every live worker's last heartbeat, sorted by name."""
    keys = sorted(client.scan_iter(match=worker_key(prefix, "*")))
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
