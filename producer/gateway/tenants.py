"""A tenant's jobs in Redis: the index behind `GET /v1/jobs`, and the count behind `--max-queued`.

Both are shared by every gateway replica. The index is a sorted set scored by a
per-tenant sequence number, so pages never skip or repeat jobs that share a
millisecond and the cursor is simply the last score seen. Unfinished jobs are a
second sorted set; workers know nothing of tenants, so finished jobs are pruned
from it lazily, by the admission script.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis

from producer.http_errors import RateLimited
from tasks.record import JobRecord
from tasks.store import RECORD_FIELDS, record_from_fields

MAX_INDEXED = 100_000  # newest jobs listed per tenant; older ones still answer GET /v1/jobs/{id}
RESERVATION_TTL_S = 60  # a reservation whose gateway died before it created the job stops counting
PRUNE_OLDEST = 16  # entries of the unfinished set each admission looks at

# KEYS[1] unfinished set. ARGV: limit (0: none), now, reservation token, job key prefix,
# reservation TTL, how many of the oldest entries each call looks at. Finished jobs leave the
# set here: the oldest few on every call (jobs mostly end in the order they came, so this
# keeps up), all of them only when the count reaches the limit, before a refusal.
# Returns the count with the reservation, or -count when refused.
_ADMIT = """
local now, ttl = tonumber(ARGV[2]), tonumber(ARGV[5])
local function prune(members)
  for i = 1, #members, 2 do
    local id, score = members[i], tonumber(members[i + 1])
    if string.sub(id, 1, 2) == 'r:' then
      if score < now - ttl then redis.call('ZREM', KEYS[1], id) end
    else
      local status = redis.call('HGET', ARGV[4] .. id, 'status')
      if status ~= '"queued"' and status ~= '"running"' then redis.call('ZREM', KEYS[1], id) end
    end
  end
end
local limit = tonumber(ARGV[1])
prune(redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[6]) - 1, 'WITHSCORES'))
local n = redis.call('ZCARD', KEYS[1])
if limit > 0 and n >= limit then
  prune(redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES'))
  n = redis.call('ZCARD', KEYS[1])
  if n >= limit then return -n end
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
return n + 1
"""

# KEYS[1] index, KEYS[2] sequence, KEYS[3] unfinished set. ARGV: job id, reservation, now, cap, ttl.
_REGISTER = """
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], seq, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[4]) + 1))
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
return seq
"""


@dataclass(frozen=True)
class Page:
    records: list[JobRecord]
    next_cursor: str | None


class TenantJobs:
    def __init__(self, client: redis.Redis, *, prefix: str, ttl_s: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._admit = client.register_script(_ADMIT)
        self._register = client.register_script(_REGISTER)

    def _keys(self, tenant: str) -> tuple[str, str, str]:
        base = f"{self.prefix}:tenant:{tenant}"
        return f"{base}:jobs", f"{base}:jobs-seq", f"{base}:unfinished"

    def admit(self, tenant: str, max_queued: int | None) -> str:
        """A reservation for one more unfinished job; RateLimited when the tenant is at `max_queued`."""
        token = f"r:{uuid.uuid4().hex}"
        _, _, unfinished = self._keys(tenant)
        count = int(self._admit(keys=[unfinished], args=[
            max_queued or 0, time.time(), token, f"{self.prefix}:job:", RESERVATION_TTL_S, PRUNE_OLDEST,
        ]))
        if count < 0:
            raise RateLimited(
                f"tenant {tenant!r} has {-count} unfinished jobs, the limit of this key is {max_queued}",
                retry_after_s=5,
            )
        return token

    def release(self, tenant: str, token: str) -> None:
        self.redis.zrem(self._keys(tenant)[2], token)

    def register(self, tenant: str, job_id: str, token: str) -> None:
        """The job joins the tenant's listing and takes the place of its reservation."""
        index, sequence, unfinished = self._keys(tenant)
        self._register(keys=[index, sequence, unfinished],
                       args=[job_id, token, time.time(), MAX_INDEXED, self.ttl_s])

    def page(
        self, tenant: str, *, limit: int, cursor: int | None, kind: str | None, status: str | None,
    ) -> Page:
        """Newest first, after `cursor` (a score from an earlier page). Filters are applied to
        what is read, so a page may hold fewer than `limit` jobs and still have a next cursor."""
        index, _, _ = self._keys(tenant)
        top = f"({cursor}" if cursor is not None else "+inf"
        scan = limit if kind is None and status is None else limit * 10
        entries = self.redis.zrevrangebyscore(index, top, "-inf", start=0, num=scan, withscores=True)
        with self.redis.pipeline() as pipe:
            for member, _ in entries:
                pipe.hmget(f"{self.prefix}:job:{member.decode()}", RECORD_FIELDS)
            found = pipe.execute()
        records: list[JobRecord] = []
        expired: list[bytes] = []
        last_score: float | None = None
        for (member, score), raw in zip(entries, found):
            if len(records) == limit:
                break
            last_score = score
            record = record_from_fields(raw)
            if record is None:
                expired.append(member)
                continue
            if (kind is None or record.kind.value == kind) and (status is None or record.status.value == status):
                records.append(record)
        if expired:
            self.redis.zrem(index, *expired)
        more = last_score is not None and bool(
            self.redis.zrevrangebyscore(index, f"({int(last_score)}", "-inf", start=0, num=1)
        )
        return Page(records, str(int(last_score)) if more else None)


