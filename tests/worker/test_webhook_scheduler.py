"""The webhook worker's retry scheduler across a Redis outage (pure logic: stand-in stores)."""
from __future__ import annotations

import logging
import threading

import pytest
import redis

from worker.webhooks import RetryScheduler


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
