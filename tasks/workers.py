"""Where workers announce themselves in Redis, and how clients read that back."""
from __future__ import annotations

import json
from typing import Any

import redis

HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TTL_S = 15  # three missed beats and the worker disappears from the list


def worker_key(prefix: str, name: str) -> str:
    return f"{prefix}:workers:{name}"


def list_workers(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    """Every live worker's last heartbeat (state: loading, ready, draining)."""
    keys = sorted(client.scan_iter(match=worker_key(prefix, "*")))
    values = client.mget(keys) if keys else []
    return [json.loads(v) for v in values if v is not None]
