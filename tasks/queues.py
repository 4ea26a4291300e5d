"""How many jobs wait in each queue: what `visionq queues` prints and an autoscaler reads."""
from __future__ import annotations

import json
import time

import redis

from tasks.kinds import JobKind, Priority, queue_list_key
from tasks.record import parse_time


def queue_depths(client: redis.Redis, prefix: str) -> dict[str, dict[str, int]]:
    """Queued jobs per kind and priority, plus the total.
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


def oldest_queued_age_s(client: redis.Redis, prefix: str, now: float | None = None) -> dict[str, float]:
    """Per kind, how long its oldest queued job has waited (0 when none waits): what
    `visionq queues` and `visionq_queue_oldest_age_seconds` show.

    kombu pushes on the left and workers pop on the right, so each priority list's
    tail is its oldest message; its task id is the job id. A message whose job
    already ended (canceled while queued) is skipped, a few at most per list."""
    now = time.time() if now is None else now
    ages: dict[str, float] = {}
    for kind in JobKind:
        created = []
        for priority in Priority:
            key = queue_list_key(kind, priority, prefix)
            for raw in client.lrange(key, -_TAIL_LOOKUP, -1)[::-1]:
                job_id = json.loads(raw).get("headers", {}).get("id")
                status, created_at = client.hmget(f"{prefix}:job:{job_id}", "status", "created_at")
                if status is not None and json.loads(status) == "queued" and created_at is not None:
                    created.append(parse_time(json.loads(created_at)).timestamp())
                    break
        ages[kind.value] = max(0.0, now - min(created)) if created else 0.0
    return ages


_TAIL_LOOKUP = 8  # messages looked at from each list's oldest end
