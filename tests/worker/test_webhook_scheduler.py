"""The webhook worker's pure logic, on stand-in stores: the retry scheduler across a Redis outage,
the attempts it counts."""
from __future__ import annotations

import dataclasses
import logging
import threading

import pytest
import redis
from kombu.exceptions import OperationalError

from tasks.record import utc_now
from tasks.settings import Settings
from tasks.store import JobStore
from tasks.webhooks import Attempt, Delivery, DeliveryStatus
from worker.outbound import PostResult
from worker.webhooks import Deliverer, RetryScheduler


class FlakyDeliveries:
    """Redis away for the first `failures` ticks, back after; `done` once `ticks` ticks ran."""

    def __init__(self, failures: int, ticks: int) -> None:
        self.failures, self.ticks, self.calls = failures, ticks, 0
        self.done = threading.Event()

    def claim_due(self) -> list[str]:
        self.calls += 1
        if self.calls >= self.ticks:
            self.done.set()
        if self.calls <= self.failures:
            raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")
        return []


class NoEvents:
    def publish_unpublished(self, grace_s: float) -> None:
        pass


def test_an_outage_is_logged_once_and_its_end_once(caplog: pytest.LogCaptureFixture) -> None:
    """It runs four times a second: a traceback each time filled a log with thousands of lines."""
    deliveries = FlakyDeliveries(failures=6, ticks=9)
    scheduler = RetryScheduler(deliveries, celery=None, events=NoEvents(), grace_s=5)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="visionq.webhooks"):
        scheduler.start()
        try:
            assert deliveries.done.wait(30)
        finally:
            scheduler.stopped.set()
            scheduler.join(10)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "visionq.webhooks"]
    assert said == [("WARNING", "Redis unavailable (Error 111 connecting to 127.0.0.1:6390. Connection refused.); "
                                "webhook retries wait for it"),
                    ("INFO", "Redis is back; webhook retries go on")]
    assert not any(r.exc_info for r in caplog.records)


class ClaimsOnce:
    def __init__(self, ids: list[str]) -> None:
        self.ids = ids

    def claim_due(self) -> list[str]:
        ids, self.ids = self.ids, []
        return ids


class BrokerAwayTwice:
    """Celery's send_task failing as kombu fails when the broker is away (no redis-py error)."""

    def __init__(self, expected: int) -> None:
        self.failures, self.sent, self.expected = 2, [], expected
        self.done = threading.Event()

    def send_task(self, name: str, kwargs: dict, queue: str) -> None:
        if self.failures:
            self.failures -= 1
            raise OperationalError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")
        self.sent.append(kwargs["delivery_id"])
        if len(self.sent) == self.expected:
            self.done.set()


def test_deliveries_claimed_while_the_broker_is_away_are_queued_once_it_is_back() -> None:
    """The claim took them off the schedule in Redis: a failed send must neither stop the scheduler
    (it died on kombu's OperationalError) nor lose them."""
    broker = BrokerAwayTwice(expected=2)
    scheduler = RetryScheduler(ClaimsOnce(["d1", "d2"]), celery=broker, events=NoEvents(), grace_s=5)  # type: ignore[arg-type]
    scheduler.start()
    try:
        assert broker.done.wait(30)
        assert scheduler.is_alive()
    finally:
        scheduler.stopped.set()
        scheduler.join(10)
    assert broker.sent == ["d1", "d2"]


class OneDelivery:
    """Holds one pending delivery, then delivered once an attempt is recorded."""

    def __init__(self) -> None:
        self.delivery = Delivery(id="d1", job_id="j1", type="job.succeeded", url="https://example.com/hook",
                                 body=b"{}", status=DeliveryStatus.PENDING, created_at=utc_now())

    def get(self, delivery_id: str) -> Delivery | None:
        return self.delivery if delivery_id == "d1" else None  # any other: expired

    def record_attempt(self, delivery: Delivery, attempt: Attempt, job_key: str) -> Delivery:
        return dataclasses.replace(delivery, attempts=(*delivery.attempts, attempt))

    def mark_delivered(self, delivery_id: str) -> None:
        self.delivery = dataclasses.replace(self.delivery, status=DeliveryStatus.DELIVERED)


class Answers200(Deliverer):
    def _send(self, job_id: str, delivery_id: str, url: str, body: bytes) -> tuple[PostResult, bool]:
        return PostResult(200, None, None, 1.0), True


def test_the_attempts_counted_are_the_ones_made() -> None:
    """The delivery worker's jobs_done: a duplicate message, or one for an expired delivery, makes no attempt."""
    deliveries = OneDelivery()
    store = JobStore(redis.Redis(), ttl_s=60)  # never connects: only its key names are used
    deliverer = Answers200(Settings.from_env(), deliveries, store)  # type: ignore[arg-type]
    for delivery_id in ("d1", "d1", "gone", "d1"):
        deliverer.attempt(delivery_id)
    assert deliveries.delivery.status is DeliveryStatus.DELIVERED and deliverer.attempts_made == 1
