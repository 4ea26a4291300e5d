"""How many jobs wait in each queue: what `visionq queues` prints and an autoscaler reads."""
from __future__ import annotations

import redis

from tasks.kinds import JobKind, Priority, queue_list_key


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
