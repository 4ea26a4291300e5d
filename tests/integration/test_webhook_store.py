"""The delivery store against a real redis-server: nothing it writes lives forever."""
from __future__ import annotations

import time

import pytest
import redis

import tasks.deliveries
from tasks.deliveries import DeliveryStore
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
