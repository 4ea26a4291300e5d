"""Webhook deliveries in Redis: each event to send, its attempts, its retry schedule.

Everything a retry needs lives here, not in a process: a delivery worker that
restarts picks the scheduled retries back up from the sorted set.
"""
from __future__ import annotations

import json
import time
from typing import Any

import redis

from tasks.record import utc_now

# Pops the deliveries that are due; ZREM decides which of several delivery
# workers gets each one, so none is sent twice by the scheduler.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
local claimed = {}
for _, id in ipairs(due) do
  if redis.call('ZREM', KEYS[1], id) == 1 then table.insert(claimed, id) end
end
return claimed
"""

# Appends one attempt to the job record's list, keeping the newest `ARGV[2]`.
_APPEND_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local raw = redis.call('HGET', KEYS[1], 'webhook_attempts')
local list = {}
if raw then list = cjson.decode(raw) end
table.insert(list, cjson.decode(ARGV[1]))
while #list > tonumber(ARGV[2]) do table.remove(list, 1) end
redis.call('HSET', KEYS[1], 'webhook_attempts', cjson.encode(list))
return 1
"""

MAX_ATTEMPTS_ON_RECORD = 100


class DeliveryStore:
    def __init__(self, client: redis.Redis, *, prefix: str, ttl_s: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._append_attempt = client.register_script(_APPEND_ATTEMPT)

    def _key(self, delivery_id: str) -> str:
        return f"{self.prefix}:delivery:{delivery_id}"

    @property
    def scheduled_key(self) -> str:
        return f"{self.prefix}:webhooks:scheduled"

    @property
    def dead_key(self) -> str:
        return f"{self.prefix}:webhooks:dead"

    def _secret_key(self, job_id: str) -> str:
        return f"{self.prefix}:webhook-secret:{job_id}"

    def set_job_secret(self, job_id: str, secret: str) -> None:
        """A per-job secret, kept out of the job record (which anyone polling can read)."""
        self.redis.set(self._secret_key(job_id), secret, ex=self.ttl_s)

    def job_secret(self, job_id: str) -> str | None:
        value = self.redis.get(self._secret_key(job_id))
        return value.decode() if value is not None else None

    def create(self, delivery_id: str, job_id: str, event_type: str, url: str, body: bytes) -> bool:
        """Store a pending delivery; False if one with this id exists (a duplicate event)."""
        key = self._key(delivery_id)
        if not self.redis.hsetnx(key, "id", delivery_id):
            return False
        self.redis.hset(key, mapping={
            "job_id": job_id, "type": event_type, "url": url, "body": body, "status": "pending",
            "attempts": "[]", "created_at": utc_now(),
        })
        self.redis.expire(key, self.ttl_s)
        return True

    def get(self, delivery_id: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self._key(delivery_id))
        if not raw:
            return None
        data = {k.decode(): v for k, v in raw.items()}
        delivery: dict[str, Any] = {k: v.decode() for k, v in data.items() if k != "body"}
        delivery["body"] = data.get("body", b"")
        delivery["attempts"] = json.loads(delivery.get("attempts", "[]"))
        return delivery

    def record_attempt(self, delivery: dict[str, Any], attempt: dict[str, Any], job_key: str) -> None:
        delivery["attempts"].append(attempt)
        self.redis.hset(self._key(delivery["id"]), "attempts", json.dumps(delivery["attempts"]))
        entry = {"delivery_id": delivery["id"], "type": delivery["type"], **attempt}
        self._append_attempt(keys=[job_key], args=[json.dumps(entry), MAX_ATTEMPTS_ON_RECORD])

    def schedule(self, delivery_id: str, delay_s: float) -> None:
        self.redis.zadd(self.scheduled_key, {delivery_id: time.time() + delay_s})
        self.redis.hset(self._key(delivery_id), "next_attempt_in_s", round(delay_s, 3))

    def claim_due(self, limit: int = 100) -> list[str]:
        return [i.decode() for i in self._claim_due(keys=[self.scheduled_key], args=[time.time(), limit])]

    def mark_delivered(self, delivery_id: str) -> None:
        self.redis.hset(self._key(delivery_id), mapping={"status": "delivered", "completed_at": utc_now()})

    def mark_dead(self, delivery_id: str, reason: str) -> None:
        self.redis.hset(self._key(delivery_id), mapping={
            "status": "dead", "completed_at": utc_now(), "reason": reason,
        })
        self.redis.zadd(self.dead_key, {delivery_id: time.time()})

    def list_dead(self, limit: int = 1000) -> list[dict[str, Any]]:
        ids = [i.decode() for i in self.redis.zrevrange(self.dead_key, 0, limit - 1)]
        found = [self.get(i) for i in ids]
        return [d for d in found if d is not None]

    def reopen(self, delivery_id: str) -> dict[str, Any] | None:
        """Back to pending for a replay; None if the delivery is unknown or expired."""
        delivery = self.get(delivery_id)
        if delivery is None:
            return None
        self.redis.hset(self._key(delivery_id), mapping={"status": "pending", "attempts": "[]"})
        self.redis.hdel(self._key(delivery_id), "reason", "completed_at")
        self.redis.zrem(self.dead_key, delivery_id)
        return self.get(delivery_id)
