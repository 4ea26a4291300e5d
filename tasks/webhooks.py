"""Webhook events: which exist, how a job asks for them, what a delivery carries.

Pure data and functions; the delivery store and the HTTP side live elsewhere.
"""
from __future__ import annotations

import json
import random
from enum import Enum
from typing import Any, Sequence

from tasks.errors import InvalidInput
from tasks.limits import Limits
from tasks.ssrf import AllowList, check_url


class EventType(str, Enum):
    STARTED = "job.started"  # a worker took the job (again after a redelivery)
    PROGRESS = "job.progress"  # throttled: at most one per second per job
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELED = "job.canceled"


DEFAULT_EVENTS = (EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELED)
FINAL_EVENT = {"succeeded": EventType.SUCCEEDED, "failed": EventType.FAILED, "canceled": EventType.CANCELED}

# Seconds to wait before each attempt: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DEFAULT_SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
RETRY_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


def validate_webhook(
    url: Any, events: Any, limits: Limits, allow: AllowList
) -> dict[str, Any]:
    """The job's webhook as its record stores it: {"url", "events"}. Checked against the
    SSRF guard without DNS here; the deliverer checks the resolved addresses again."""
    if not isinstance(url, str):
        raise InvalidInput(f"webhook must be a URL string, got {type(url).__name__}")
    if len(url) > limits.max_url_chars:
        raise InvalidInput(f"webhook URL has {len(url)} characters, more than {limits.max_url_chars}")
    check_url(url, allow, resolve=False)
    if events is None:
        chosen = list(DEFAULT_EVENTS)
    else:
        if isinstance(events, str) or not isinstance(events, (list, tuple)) or not events:
            raise InvalidInput("webhook_events must be a non-empty list of event names")
        chosen = []
        for name in events:
            try:
                chosen.append(EventType(name))
            except ValueError:
                known = ", ".join(e.value for e in EventType)
                raise InvalidInput(f"unknown webhook event {name!r}; known events: {known}") from None
    return {"url": url, "events": sorted({e.value for e in chosen})}


def event_body(event_type: EventType, timestamp: str, sequence: int, record: dict[str, Any]) -> bytes:
    """The delivered JSON. `sequence` grows with every event of one job, so a receiver
    can drop an event older than one it already has."""
    return json.dumps(
        {"type": event_type.value, "timestamp": timestamp, "sequence": sequence, "data": record},
        separators=(",", ":"),
    ).encode()


def parse_schedule(text: str) -> tuple[float, ...]:
    """"0,5,300" -> (0.0, 5.0, 300.0): the delay before each attempt."""
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"VISIONQ_WEBHOOK_SCHEDULE {text!r} must be comma-separated seconds") from None
    if not delays or any(d < 0 for d in delays):
        raise ValueError(f"VISIONQ_WEBHOOK_SCHEDULE {text!r} needs at least one delay, none negative")
    return delays


def retry_delay_s(
    schedule: Sequence[float], attempts_made: int, retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt, or None when the schedule is exhausted.

    Jitter of up to +-20 % spreads the retries of many deliveries that failed together;
    a receiver's Retry-After is honoured when it asks for longer.
    """
    if attempts_made >= len(schedule):
        return None
    base = schedule[attempts_made]
    jitter = (rng or random).uniform(-0.2, 0.2) * base
    delay = base + jitter
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay


def is_retryable(status: int | None) -> bool:
    """None: no HTTP answer (connection error, timeout) — worth another try."""
    return status is None or status in RETRY_STATUSES

