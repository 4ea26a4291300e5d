"""Webhook deliveries in Redis, and the publisher that turns job changes into them.

Everything a retry needs lives in Redis, not in a process: a delivery worker that
restarts picks the scheduled retries back up from the sorted set. Workers publish
started/progress/final events, the SDK publishes the cancel of a queued job, the
CLI lists and replays dead deliveries; the HTTP side is worker/webhooks.py.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any

import redis

from tasks.kinds import WEBHOOKS_QUEUE
from tasks.record import JobRecord, utc_now
from tasks.store import JobStore
from tasks.webhooks import FINAL_EVENT, Attempt, Delivery, DeliveryStatus, EventType, event_body, mask_url

log = logging.getLogger("visionq.events")

DELIVER_TASK = "visionq.webhooks.deliver"
PROGRESS_INTERVAL_S = 1.0  # at most one job.progress per second per job
MAX_ATTEMPTS_ON_RECORD = 100
MAX_DEAD = 10_000  # dead letters kept, newest first; older ones are dropped

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

# 1, 2, 3 ... per job. HINCRBY recreates a job hash that expired meanwhile: give it
# the TTL back, or the counter would outlive every record.
_NEXT_SEQUENCE = """
local n = redis.call('HINCRBY', KEYS[1], 'event_sequence', 1)
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""


class DeliveryStore:
    def __init__(self, client: redis.Redis, *, prefix: str, ttl_s: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._append_attempt = client.register_script(_APPEND_ATTEMPT)
        self._next_sequence = client.register_script(_NEXT_SEQUENCE)

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

    def next_sequence(self, job_key: str) -> int:
        return int(self._next_sequence(keys=[job_key], args=[self.ttl_s]))

    def create(self, delivery_id: str, job_id: str, event_type: str, url: str, body: bytes) -> bool:
        """Store a pending delivery; False if one with this id exists (a duplicate event)."""
        key = self._key(delivery_id)
        if not self.redis.hsetnx(key, "id", delivery_id):
            return False
        self.redis.hset(key, mapping={
            "job_id": job_id, "type": event_type, "url": url, "body": body,
            "status": DeliveryStatus.PENDING.value, "attempts": "[]", "created_at": utc_now(),
        })
        self.redis.expire(key, self.ttl_s)
        return True

    def get(self, delivery_id: str) -> Delivery | None:
        raw = self.redis.hgetall(self._key(delivery_id))
        if not raw or b"job_id" not in raw:
            return None
        text = {k.decode(): v.decode() for k, v in raw.items() if k != b"body"}
        next_in = text.get("next_attempt_in_s")
        return Delivery(
            id=text["id"], job_id=text["job_id"], type=text["type"], url=text["url"], body=raw[b"body"],
            status=DeliveryStatus(text["status"]), created_at=text["created_at"],
            attempts=tuple(Attempt(**a) for a in json.loads(text["attempts"])),
            completed_at=text.get("completed_at"), reason=text.get("reason"),
            next_attempt_in_s=float(next_in) if next_in is not None else None,
        )

    def record_attempt(self, delivery: Delivery, attempt: Attempt, job_key: str) -> Delivery:
        """The delivery with `attempt` added, stored here and on the job record."""
        attempts = (*delivery.attempts, attempt)
        self.redis.hset(self._key(delivery.id), "attempts", json.dumps([a.to_dict() for a in attempts]))
        entry = {"delivery_id": delivery.id, "type": delivery.type, **attempt.to_dict()}
        self._append_attempt(keys=[job_key], args=[json.dumps(entry), MAX_ATTEMPTS_ON_RECORD])
        return replace(delivery, attempts=attempts)

    def schedule(self, delivery_id: str, delay_s: float) -> None:
        self.redis.zadd(self.scheduled_key, {delivery_id: time.time() + delay_s})
        self.redis.hset(self._key(delivery_id), "next_attempt_in_s", round(delay_s, 3))

    def claim_due(self, limit: int = 100) -> list[str]:
        return [i.decode() for i in self._claim_due(keys=[self.scheduled_key], args=[time.time(), limit])]

    def mark_delivered(self, delivery_id: str) -> None:
        self.redis.hset(self._key(delivery_id), mapping={
            "status": DeliveryStatus.DELIVERED.value, "completed_at": utc_now(),
        })

    def mark_dead(self, delivery_id: str, reason: str) -> None:
        """Dead letters live one job TTL from their death and at most MAX_DEAD of them
        are kept, so a receiver that stays down cannot grow Redis without bound."""
        now = time.time()
        with self.redis.pipeline() as pipe:
            pipe.hset(self._key(delivery_id), mapping={
                "status": DeliveryStatus.DEAD.value, "completed_at": utc_now(), "reason": reason,
            })
            pipe.expire(self._key(delivery_id), self.ttl_s)
            pipe.zadd(self.dead_key, {delivery_id: now})
            pipe.zremrangebyscore(self.dead_key, "-inf", now - self.ttl_s)
            pipe.zremrangebyrank(self.dead_key, 0, -(MAX_DEAD + 1))
            pipe.expire(self.dead_key, self.ttl_s)
            pipe.execute()

    def list_dead(self, limit: int = 1000) -> list[Delivery]:
        ids = [i.decode() for i in self.redis.zrevrange(self.dead_key, 0, limit - 1)]
        found = [self.get(i) for i in ids]
        return [d for d in found if d is not None]

    def reopen(self, delivery_id: str) -> Delivery | None:
        """Back to pending for a replay; None if the delivery is unknown or expired."""
        if self.get(delivery_id) is None:
            return None
        key = self._key(delivery_id)
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={"status": DeliveryStatus.PENDING.value, "attempts": "[]"})
            pipe.hdel(key, "reason", "completed_at", "next_attempt_in_s")
            pipe.expire(key, self.ttl_s)
            pipe.zrem(self.dead_key, delivery_id)
            pipe.execute()
        return self.get(delivery_id)


class EventPublisher:
    """Stores the delivery of a job's event and enqueues it on `visionq.webhooks`: the
    HTTP call happens in the delivery worker, so a slow receiver never holds a GPU.
    A failure here is logged, never raised: a webhook problem must not fail the job."""

    def __init__(self, store: JobStore, deliveries: DeliveryStore, celery: Any) -> None:
        self.store = store
        self.deliveries = deliveries
        self.celery = celery
        self._last_progress: dict[str, float] = {}

    def publish(self, record: JobRecord, event: EventType) -> None:
        webhook = record.webhook
        if not webhook or event.value not in webhook["events"]:
            return
        if event is EventType.PROGRESS and not self._progress_due(record.id):
            return
        try:
            sequence = self.deliveries.next_sequence(self.store.job_key(record.id))
            delivery_id = f"msg_{record.id}_{sequence}"
            data = record.to_dict()
            data.pop("webhook_attempts", None)
            body = event_body(event, utc_now(), sequence, data)
            if self.deliveries.create(delivery_id, record.id, event.value, webhook["url"], body):
                enqueue_delivery(self.celery, delivery_id)
        except Exception:  # noqa: BLE001 - see the class docstring
            log.exception("could not publish %s for job %s to %s", event.value, record.id, mask_url(webhook["url"]))
        if event.value in FINAL_EVENT.values():
            self._last_progress.pop(record.id, None)

    def publish_final(self, record: JobRecord) -> None:
        self.publish(record, FINAL_EVENT[record.status.value])

    def _progress_due(self, job_id: str) -> bool:
        now = time.monotonic()
        if now - self._last_progress.get(job_id, 0.0) < PROGRESS_INTERVAL_S:
            return False
        self._last_progress[job_id] = now
        return True


def enqueue_delivery(celery: Any, delivery_id: str) -> None:
    """One attempt of this delivery, for the delivery worker to make."""
    celery.send_task(DELIVER_TASK, kwargs={"delivery_id": delivery_id}, queue=WEBHOOKS_QUEUE)
