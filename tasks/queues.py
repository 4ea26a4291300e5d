"""How many jobs wait in each queue: what `visionq queues` prints and an autoscaler reads."""
from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any, Iterable

import redis

from tasks.heartbeats import SERVING_STATES, list_workers
from tasks.kinds import Priority
from tasks.record import parse_time
from tasks.served_models import models_by_kind, queue_lists


def queue_depths(client: redis.Redis, prefix: str) -> dict[str, dict[str, Any]]:
    """Queued jobs per kind and priority, plus the total, over every model of the kind; and
    under "models", the same per model name (the default's queue and each other model's own).
    Jobs a worker has taken (running, or reserved) are not counted."""
    by_kind = models_by_kind(client, prefix)
    with client.pipeline() as pipe:
        for kind, names in by_kind.items():
            for name in names:
                for key in queue_lists(kind, name, prefix):
                    pipe.llen(key)
        lengths = iter(pipe.execute())
    depths: dict[str, dict[str, Any]] = {}
    for kind, names in by_kind.items():
        per_model = {}
        for name in names:
            per_priority = {priority.value: int(next(lengths)) for priority in Priority}
            per_model[name] = {**per_priority, "total": sum(per_priority.values())}
        totals = {p: sum(m[p] for m in per_model.values()) for p in [*(q.value for q in Priority), "total"]}
        depths[kind.value] = {**totals, "models": per_model}
    return depths


def queue_report(client: redis.Redis, prefix: str) -> dict[str, dict[str, Any]]:
    """`queue_depths` with each kind's `oldest_age_s` and each model's `live_workers` (ready or
    busy workers serving it now): `visionq queues --json` and the gateway's /v1/queues."""
    depths = queue_depths(client, prefix)
    ages = oldest_queued_age_s(client, prefix)
    serving = Counter(model for w in list_workers(client, prefix) if w.get("state") in SERVING_STATES
                      for model in w.get("models", {}))
    for kind, depth in depths.items():
        depth["oldest_age_s"] = round(ages[kind], 3)
        for name, per_model in depth["models"].items():
            per_model["live_workers"] = serving.get(f"{kind}/{name}", 0)
    return depths


def oldest_queued_age_s(client: redis.Redis, prefix: str, now: float | None = None) -> dict[str, float]:
    """Per kind, how long its oldest queued job has waited (0 when none waits): what
    `visionq queues` and `visionq_queue_oldest_age_seconds` show.

    kombu pushes on the left and workers pop on the right, so each priority list's
    tail is its oldest message; its task id is the job id. A message whose job
    already ended (canceled while queued) is skipped, a few at most per list."""
    now = time.time() if now is None else now
    ages: dict[str, float] = {}
    for kind, names in models_by_kind(client, prefix).items():
        created = []
        for key in (key for name in names for key in queue_lists(kind, name, prefix)):
            for raw in client.lrange(key, -_TAIL_LOOKUP, -1)[::-1]:
                job_id = json.loads(raw).get("headers", {}).get("id")
                status, created_at = client.hmget(f"{prefix}:job:{job_id}", "status", "created_at")
                if status is not None and json.loads(status) == "queued" and created_at is not None:
                    created.append(parse_time(json.loads(created_at)).timestamp())
                    break
        ages[kind.value] = max(0.0, now - min(created)) if created else 0.0
    return ages


_TAIL_LOOKUP = 8  # messages looked at from each list's oldest end


# KEYS[1]: a queue list. ARGV: a chunk's distance from the list's tail (0: it ends at the tail), its
# length, '1' to return only the job ids looked for ('': every one), then those ids. Returns {how
# many messages the chunk holds, the job id of each ('' where none is found), tail first}, or only
# the ids looked for that it holds (a search of a deep queue sends back a few ids, not all): only
# ids cross the network, never the messages (one carrying its image inline can be MBs). A
# message's first `"id": "` is Celery's task id header, which is the job id (the producer sets it so).
_IDS_IN_CHUNK = """
local wanted = nil
if ARGV[3] == '1' then
  wanted = {}
  for i = 4, #ARGV do wanted[ARGV[i]] = true end
end
local items = redis.call('LRANGE', KEYS[1], -(tonumber(ARGV[1]) + tonumber(ARGV[2])), -(tonumber(ARGV[1]) + 1))
local out = {#items}
for n = #items, 1, -1 do
  local id = string.match(items[n], '"id": ?"([^"]+)"')
  if not wanted then table.insert(out, id or '')
  elseif id and wanted[id] then table.insert(out, id) end
end
return out
"""


class ChunkReader:
    """The job ids of a queue list, a chunk at a time from its tail (where the oldest wait): one
    short script per chunk, so Redis is held for the chunk and its distance from the tail, never
    for the whole list (a script over every message of a queue 100,000 deep held it for seconds).
    Used by the expirer, `visionq purge` (tasks/expiry.py) and the sweeper (worker/sweeper.py)."""

    def __init__(self, client: redis.Redis) -> None:
        self._script = client.register_script(_IDS_IN_CHUNK)

    def __call__(self, key: str, offset: int, size: int,
                 among: Iterable[str] | None = None) -> tuple[int, list[str]]:
        """(how many messages the chunk `offset` from the tail, `size` long, holds; their job ids,
        tail first, '' for a message without one), or with `among`, only those of its ids found."""
        looked_for = [] if among is None else ["1", *among]
        read, *ids = self._script(keys=[key], args=[offset, size, *looked_for])
        return int(read), [i.decode(errors="replace") for i in ids]
