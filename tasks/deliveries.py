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
import uuid
from dataclasses import replace
from typing import Any

import redis

from tasks.errors import JobNotFound
from tasks.kinds import WEBHOOKS_QUEUE, Priority, priority_list_key
from tasks.messages import redis_db, sent_event, task_message
from tasks.record import JobRecord, utc_now
from tasks.store import Enqueue, JobStore
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

# Stores a pending delivery and queues its Celery message in one step: a process that dies
# around it leaves both or neither (a delivery stored but never sent would be lost). KEYS:
# the delivery hash, the webhooks queue list, [the unpublished final events, for a final event].
# ARGV: delivery id, ttl, the Celery message, the channel and message of Celery's task-sent event
# ('' ''), the job id to take out of the unpublished final events ('' for other events), then the
# delivery's field/value pairs. Returns 0 when the delivery exists, or when the final event was
# queued already by another process (the job is no longer among the unpublished).
_CREATE = """
if ARGV[6] ~= '' and not redis.call('ZSCORE', KEYS[3], ARGV[6]) then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[3])
if ARGV[6] ~= '' then redis.call('ZREM', KEYS[3], ARGV[6]) end
redis.call('HSET', KEYS[1], 'id', ARGV[1], unpack(ARGV, 7))
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
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
        self._create = client.register_script(_CREATE)

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

    def create(
        self, delivery_id: str, job_id: str, event_type: str, url: str, body: bytes, *,
        sent_event_db: int | None = None, unpublished_key: str | None = None,
    ) -> bool:
        """Store a pending delivery and queue its first attempt, in one step; False if one with this
        id exists (a duplicate event). `sent_event_db`: the Redis database number, when Celery's
        task-sent event is published along. `unpublished_key`: a final event, queued only while its
        job is among the unpublished final events there (JobStore.unpublished_key), and taken out."""
        kwargs = {"delivery_id": delivery_id}
        task_id = str(uuid.uuid4())
        # Priority.HIGH is kombu's level 0: the queue's own list, where send_task puts a message.
        enqueue = Enqueue(priority_list_key(WEBHOOKS_QUEUE, Priority.HIGH, self.prefix),
                          task_message(DELIVER_TASK, task_id, kwargs, WEBHOOKS_QUEUE, Priority.HIGH))
        if sent_event_db is not None:
            channel, event = sent_event(DELIVER_TASK, task_id, kwargs, WEBHOOKS_QUEUE, self.prefix, sent_event_db)
            enqueue = replace(enqueue, event_channel=channel, event=event)
        keys = [self._key(delivery_id), enqueue.list_key]
        if unpublished_key is not None:
            keys.append(unpublished_key)
        fields = {
            "job_id": job_id, "type": event_type, "url": url, "body": body,
            "status": DeliveryStatus.PENDING.value, "attempts": "[]", "created_at": utc_now(),
        }
        args = [delivery_id, self.ttl_s, enqueue.message, enqueue.event_channel, enqueue.event,
                job_id if unpublished_key is not None else "", *(part for pair in fields.items() for part in pair)]
        return bool(self._create(keys=keys, args=args))

    def unpublished(self, unpublished_key: str, ended_before: float, limit: int = 100) -> list[str]:
        """The jobs among the unpublished final events that ended before `ended_before` (epoch s)."""
        return [i.decode() for i in self.redis.zrangebyscore(unpublished_key, "-inf", ended_before, start=0, num=limit)]

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
        """`celery`: the app whose configuration says whether Celery's task-sent event goes along."""
        self.store = store
        self.deliveries = deliveries
        conf = celery.conf
        self._sent_event_db = redis_db(conf.broker_url) if conf.task_send_sent_event else None
        self._last_progress: dict[str, float] = {}

    def publish(self, record: JobRecord, event: EventType) -> None:
        webhook = record.webhook
        if not webhook:
            return  # nothing to send; never among the unpublished final events (the scripts note only jobs with one)
        final = event.value in FINAL_EVENT.values()
        if event.value not in webhook["events"]:
            if final:  # nothing to send: off the unpublished list (if Redis is away, the next look drops it)
                try:
                    self.store.redis.zrem(self.store.unpublished_key, record.id)
                except redis.RedisError as exc:
                    log.warning("job %s: not taken off the unpublished final events yet: %s", record.id, exc)
            return
        if event is EventType.PROGRESS and not self._progress_due(record.id):
            return
        try:
            sequence = self.deliveries.next_sequence(self.store.job_key(record.id))
            delivery_id = f"msg_{record.id}_{sequence}"
            data = record.to_dict()
            data.pop("webhook_attempts", None)
            body = event_body(event, utc_now(), sequence, data)
            self.deliveries.create(
                delivery_id, record.id, event.value, webhook["url"], body, sent_event_db=self._sent_event_db,
                unpublished_key=self.store.unpublished_key if final else None,
            )
        except Exception:  # noqa: BLE001 - see the class docstring
            log.exception("could not publish %s for job %s to %s", event.value, record.id, mask_url(webhook["url"]))
        if final:
            self._last_progress.pop(record.id, None)

    def publish_final(self, record: JobRecord) -> None:
        """The final event of `record`, once per job: whoever queues it first (the process that
        ended the job, or `publish_unpublished` after a crash) takes the job off the unpublished list."""
        self.publish(record, FINAL_EVENT[record.status.value])

    def publish_unpublished(self, grace_s: float) -> int:
        """The final events of the jobs that ended over `grace_s` ago and whose process died
        before it queued them; returns how many jobs it looked at."""
        job_ids = self.deliveries.unpublished(self.store.unpublished_key, time.time() - grace_s)
        for job_id in job_ids:
            try:
                record = self.store.get(job_id)
            except redis.RedisError:
                raise
            except Exception as exc:  # noqa: BLE001 - expired meanwhile, or a record nobody can read
                if not isinstance(exc, JobNotFound):
                    log.warning("job %s: its record cannot be read (%s); no final event", job_id, exc)
                self.store.redis.zrem(self.store.unpublished_key, job_id)
                continue
            if not record.webhook:  # noted by hand, or by a script of another version: nothing to send
                self.store.redis.zrem(self.store.unpublished_key, job_id)
                continue
            log.warning("job %s ended %s but its final event was not queued (its process died?); queueing it",
                        job_id, record.status.value)
            self.publish_final(record)
        return len(job_ids)

    def _progress_due(self, job_id: str) -> bool:
        now = time.monotonic()
        if now - self._last_progress.get(job_id, 0.0) < PROGRESS_INTERVAL_S:
            return False
        self._last_progress[job_id] = now
        return True


def enqueue_delivery(celery: Any, delivery_id: str) -> None:
    """One attempt of this delivery, for the delivery worker to make."""
    celery.send_task(DELIVER_TASK, kwargs={"delivery_id": delivery_id}, queue=WEBHOOKS_QUEUE)
