"""The delivery store against a real redis-server: nothing it writes lives forever, and no
job's final event is lost between the step that ends the job and the one that queues the event."""
from __future__ import annotations

import base64
import json
import time

import pytest
import redis

import tasks.deliveries
from tasks.app import make_celery
from tasks.deliveries import DELIVER_TASK, DeliveryStore, EventPublisher
from tasks.expiry import QueueEnds
from tasks.kinds import WEBHOOKS_QUEUE, JobKind, Priority, priority_list_key
from tasks.record import JobRecord, utc_now
from tasks.settings import Settings
from tasks.status import JobStatus
from tasks.store import JobStore
from tasks.webhooks import Attempt, DeliveryStatus

pytestmark = pytest.mark.integration

TTL_S = 1000


@pytest.fixture
def deliveries(redis_client: redis.Redis, key_prefix: str) -> DeliveryStore:
    return DeliveryStore(redis_client, prefix=key_prefix, ttl_s=TTL_S)


def dead_delivery(deliveries: DeliveryStore, n: int) -> str:
    delivery_id = f"msg_job{n}_1"
    assert deliveries.create(delivery_id, f"job{n}", "job.succeeded", "http://hooks.example/cb", b'{"n": %d}' % n)
    deliveries.mark_dead(delivery_id, f"gave up {n}")
    return delivery_id


def test_the_dead_letter_list_keeps_the_newest_and_expires(
    deliveries: DeliveryStore, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tasks.deliveries, "MAX_DEAD", 3)
    ids = [dead_delivery(deliveries, n) for n in range(5)]
    assert [d.id for d in deliveries.list_dead()] == ids[:1:-1]  # newest first, two oldest dropped
    assert 0 < redis_client.ttl(deliveries.dead_key) <= TTL_S
    assert all(0 < redis_client.ttl(f"{deliveries.prefix}:delivery:{i}") <= TTL_S for i in ids)


def test_dead_letters_older_than_the_ttl_are_dropped(deliveries: DeliveryStore, redis_client: redis.Redis) -> None:
    redis_client.zadd(deliveries.dead_key, {"msg_ancient_1": time.time() - 2 * TTL_S})
    dead_delivery(deliveries, 1)
    assert redis_client.zrange(deliveries.dead_key, 0, -1) == [b"msg_job1_1"]


def test_a_delivery_is_a_dataclass_through_its_life(deliveries: DeliveryStore) -> None:
    assert deliveries.create("msg_a_1", "a", "job.failed", "http://hooks.example/cb", b'{"x":1}')
    assert not deliveries.create("msg_a_1", "a", "job.failed", "http://hooks.example/cb", b'{"x":1}')
    delivery = deliveries.get("msg_a_1")
    assert delivery is not None and delivery.status is DeliveryStatus.PENDING and delivery.attempts == ()
    attempt = Attempt(at="2026-01-01T00:00:00.000Z", status=503, error="HTTP 503 Busy", latency_ms=1.5)
    updated = deliveries.record_attempt(delivery, attempt, "no-such-job-key")
    assert updated.attempts == (attempt,) and deliveries.get("msg_a_1").attempts == (attempt,)
    deliveries.mark_dead("msg_a_1", "not retried: HTTP 503 Busy")
    dead = deliveries.get("msg_a_1")
    assert dead.status is DeliveryStatus.DEAD and dead.reason == "not retried: HTTP 503 Busy"
    assert dead.to_dict()["body"] == {"x": 1}
    reopened = deliveries.reopen("msg_a_1")
    assert reopened.status is DeliveryStatus.PENDING and reopened.attempts == () and reopened.reason is None
    assert deliveries.list_dead() == []
    assert deliveries.reopen("msg_unknown_1") is None


def test_the_event_sequence_of_an_expired_job_expires_too(
    deliveries: DeliveryStore, redis_client: redis.Redis, key_prefix: str
) -> None:
    job_key = f"{key_prefix}:job:gone"
    assert deliveries.next_sequence(job_key) == 1  # the job's hash expired: HINCRBY recreates it
    assert 0 < redis_client.ttl(job_key) <= TTL_S
    redis_client.expire(job_key, 50)
    assert deliveries.next_sequence(job_key) == 2
    assert redis_client.ttl(job_key) <= 50  # a live job's own TTL is left as it is


# The final event of a job with a webhook: noted in the step that ends the job, queued once.

HOOK = {"url": "http://hooks.example/cb", "events": ["job.succeeded", "job.failed", "job.canceled"]}


@pytest.fixture
def events(redis_server, redis_client: redis.Redis, key_prefix: str, deliveries: DeliveryStore) -> EventPublisher:
    settings = Settings.from_env({"VISIONQ_REDIS_URL": redis_server.url, "VISIONQ_REDIS_PREFIX": key_prefix})
    store = JobStore(redis_client, ttl_s=TTL_S, prefix=key_prefix)
    return EventPublisher(store, deliveries, make_celery(settings))


def ended(events: EventPublisher, webhook: dict | None = HOOK) -> JobRecord:
    """A job that ran and succeeded, as a worker killed right after its final transition leaves it."""
    store = events.store
    record, _ = store.create(JobKind.GENERATE, {"prompt": "a"}, webhook=webhook)
    assert store.advance(record.id, JobStatus.RUNNING, attempt_increment=1).applied
    assert store.advance(record.id, JobStatus.SUCCEEDED, completed_at=utc_now()).applied
    return store.get(record.id)


def unpublished(events: EventPublisher) -> list[str]:
    return [i.decode() for i in events.store.redis.zrange(events.store.unpublished_key, 0, -1)]


def queued_deliveries(events: EventPublisher) -> list[str]:
    """The delivery ids of the Celery messages on the webhooks queue, decoded as kombu would."""
    key = priority_list_key(WEBHOOKS_QUEUE, Priority.HIGH, events.store.prefix)
    ids = []
    for raw in events.store.redis.lrange(key, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == DELIVER_TASK
        _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.append(kwargs["delivery_id"])
    return ids


def test_a_final_event_is_queued_once_by_whoever_comes_first(events: EventPublisher, deliveries: DeliveryStore) -> None:
    record = ended(events)
    assert unpublished(events) == [record.id]
    assert events.publish_unpublished(grace_s=60) == 0  # just ended: its own process has the grace to queue it
    assert events.publish_unpublished(grace_s=0) == 1  # its process died: queued here
    assert unpublished(events) == [] and queued_deliveries(events) == [f"msg_{record.id}_1"]
    events.publish_final(record)  # the original process, late: nothing more
    assert events.publish_unpublished(grace_s=0) == 0
    assert queued_deliveries(events) == [f"msg_{record.id}_1"]
    delivery = deliveries.get(f"msg_{record.id}_1")
    assert delivery.status is DeliveryStatus.PENDING and json.loads(delivery.body)["type"] == "job.succeeded"


def test_every_way_a_job_ends_notes_its_final_event(events: EventPublisher) -> None:
    store = events.store
    succeeded = ended(events)
    canceled, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k"}, webhook=HOOK)
    store.request_cancel(canceled.id)
    expired, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k"}, webhook=HOOK, queue_timeout_s=1)
    assert [r.id for r in QueueEnds(store).expire_due(now=time.time() + 10)] == [expired.id]
    ended(events, webhook=None)  # no webhook: nothing to note
    assert sorted(unpublished(events)) == sorted([succeeded.id, canceled.id, expired.id])
    for job_id in (succeeded.id, canceled.id, expired.id):
        events.publish_final(store.get(job_id))
    assert unpublished(events) == [] and len(queued_deliveries(events)) == 3


def test_a_final_event_the_webhook_does_not_ask_for_leaves_the_list(events: EventPublisher) -> None:
    record = ended(events, webhook={**HOOK, "events": ["job.started"]})
    assert unpublished(events) == [record.id]
    events.publish_final(record)
    assert unpublished(events) == [] and queued_deliveries(events) == []


def test_an_expired_job_leaves_the_list_without_an_event(events: EventPublisher) -> None:
    record = ended(events)
    events.store.redis.delete(events.store.job_key(record.id))
    assert events.publish_unpublished(grace_s=0) == 1
    assert unpublished(events) == [] and queued_deliveries(events) == []


def test_a_job_without_a_webhook_noted_by_hand_leaves_the_list(events: EventPublisher) -> None:
    # The scripts note only jobs with a webhook, and publish returns at once for one without.
    record = ended(events, webhook=None)
    events.store.redis.zadd(events.store.unpublished_key, {record.id: 0})
    assert events.publish_unpublished(grace_s=0) == 1
    assert unpublished(events) == [] and queued_deliveries(events) == []
