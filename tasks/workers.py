"""Where workers announce themselves in Redis, and how clients read that back."""
from __future__ import annotations

import json
from typing import Any

import redis

from tasks.kinds import JobKind, Priority, queue_list_key

HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TTL_S = 15  # three missed beats and the worker disappears from the list


def worker_key(prefix: str, name: str) -> str:
    return f"{prefix}:workers:{name}"


def list_workers(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every live worker's last heartbeat (state: loading, ready, draining)."""
    keys = sorted(client.scan_iter(match=worker_key(prefix, "*")))
    values = client.mget(keys) if keys else []
    return [json.loads(v) for v in values if v is not None]


def queue_depths(client: redis.Redis, prefix: str) -> dict[str, dict[str, int]]:
    """Queued jobs per kind and priority, plus the total: what an autoscaler reads.
    Jobs a worker has taken (running, or reserved) are not counted."""
    kinds = list(JobKind)
    with client.pipeline() as pipe:
        for kind in kinds:
            for priority in Priority:
                pipe.llen(queue_list_key(kind, priority, prefix))
        lengths = iter(pipe.execute())
    depths: dict[str, dict[str, int]] = {}
    for kind in kinds:
        per_priority = {priority.value: int(next(lengths)) for priority in Priority}
        depths[kind.value] = {**per_priority, "total": sum(per_priority.values())}
    return depths
