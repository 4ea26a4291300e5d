"""The webhook contract: events, the delivered body, Standard Webhooks signatures,
the delivery record and the retry schedule.

Pure data and functions, imported by both sides: the SDK validates a job's webhook
and publishes the cancel of a queued job, workers publish events, the delivery
worker (worker/webhooks.py) signs and sends, receivers verify with
`producer.webhooks.verify` or any Standard Webhooks library
(https://www.standardwebhooks.com/).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import random
import secrets
import time
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from tasks.errors import InvalidInput
from tasks.limits import Limits
from tasks.ssrf import AllowList, check_url


class EventType(StrEnum):
    STARTED = "job.started"  # a worker took the job (again after a redelivery)
    PROGRESS = "job.progress"  # throttled: at most one per second per job
    SUCCEEDED = "job.succeeded"
    FAILED = "job.failed"
    CANCELED = "job.canceled"


DEFAULT_EVENTS = (EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELED)
FINAL_EVENT = {"succeeded": EventType.SUCCEEDED, "failed": EventType.FAILED, "canceled": EventType.CANCELED}
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


# --- Signatures -------------------------------------------------------------------

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24  # an HMAC key shorter than this can be guessed offline from one delivery
DEFAULT_TOLERANCE_S = 5 * 60  # a replayed delivery older than this is refused


class WebhookVerificationError(ValueError):
    """The delivery is not authentic (bad signature), or too old/new to trust."""


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; ValueError unless it decodes to at
    least MIN_SECRET_BYTES bytes."""
    if not isinstance(secret, str):
        raise ValueError(f"webhook secret must be a whsec_<base64> string, got {type(secret).__name__}")
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret must be whsec_<base64>") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"webhook secret decodes to {len(key)} bytes; it must be at least {MIN_SECRET_BYTES} "
            f"random bytes (make one with: python -c \"from tasks.webhooks import generate_secret; "
            f"print(generate_secret())\")"
        )
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(secret: str, message_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


def verify(
    secret: str, headers: Mapping[str, str], body: bytes | str, *,
    tolerance_s: int = DEFAULT_TOLERANCE_S, now: float | None = None,
) -> None:
    """Raise WebhookVerificationError unless the delivery is signed with `secret`
    and its timestamp is within `tolerance_s` of now. Header names are case-insensitive.

    Whatever a sender puts in the headers ends here as WebhookVerificationError (a 4xx
    for the receiver), never as another exception (a 500).
    """
    lowered = {str(k).lower(): v for k, v in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not all(isinstance(v, str) and v.isascii() for v in (message_id, timestamp_text, signatures)):
        raise WebhookVerificationError("missing, non-ASCII or malformed webhook-* headers")
    # int() alone would accept "1_000", " 7" and non-ASCII digits.
    if not (timestamp_text.isdigit() and len(timestamp_text) <= 12):
        raise WebhookVerificationError(f"webhook-timestamp {timestamp_text[:20]!r} is not a Unix time")
    timestamp = int(timestamp_text)
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise WebhookVerificationError(f"timestamp {timestamp} is outside the {tolerance_s} s tolerance")
    data = body.encode() if isinstance(body, str) else body
    expected = sign(secret, message_id, timestamp, data).split(",", 1)[1].encode()
    # The header may carry several space-separated signatures (key rotation).
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return
    raise WebhookVerificationError("no valid v1 signature")


# --- Deliveries ---------------------------------------------------------------------


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt (scheduled or on the queue)
    DELIVERED = "delivered"  # the receiver answered 2xx
    DEAD = "dead"  # given up (schedule exhausted or not retryable); can be replayed


@dataclass(frozen=True)
class Attempt:
    """One try at a delivery, as recorded on the delivery and on the job record."""

    at: str
    status: int | None  # the HTTP status; None when no answer came (refused, timeout)
    error: str | None  # the failure, control characters stripped (it reaches terminals)
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Delivery:
    """One event on its way to one receiver. `id` is the `webhook-id` header, stable
    across retries and replays, so a receiver can drop duplicates."""

    id: str
    job_id: str
    type: str
    url: str
    body: bytes
    status: DeliveryStatus
    created_at: str
    attempts: tuple[Attempt, ...] = field(default_factory=tuple)
    completed_at: str | None = None
    reason: str | None = None  # why it is dead
    next_attempt_in_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """For `visionq webhooks dead --json`: the body as the JSON it is."""
        data = asdict(self)
        data["status"] = self.status.value
        data["body"] = json.loads(self.body)
        return data


# --- Retry schedule -------------------------------------------------------------------


def retry_delay_s(
    schedule: Sequence[float], attempts_made: int, retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt, or None when the schedule is exhausted.

    Jitter of up to +-20 % spreads the retries of many deliveries that failed together.
    A receiver's Retry-After is honoured when it asks for longer, up to the schedule's
    longest delay: a receiver cannot park a delivery beyond the schedule (1e300 s).
    """
    if attempts_made >= len(schedule):
        return None
    base = schedule[attempts_made]
    jitter = (rng or random).uniform(-0.2, 0.2) * base
    delay = base + jitter
    if retry_after_s is not None and not math.isnan(retry_after_s):
        delay = max(delay, min(retry_after_s, max(schedule)))
    return delay


def is_retryable(status: int | None) -> bool:
    """None: no HTTP answer (connection error, timeout) — worth another try."""
    return status is None or status in RETRY_STATUSES


# --- What reaches logs and terminals -----------------------------------------------------

MAX_REMOTE_TEXT_CHARS = 300


def mask_url(url: str) -> str:
    """scheme://host[:port]/path: no userinfo, query or fragment, where tokens live."""
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "<unparseable URL>"
    return clean_text(f"{parts.scheme}://{host}{parts.path}")


def clean_text(text: str) -> str:
    """Remote text (an HTTP reason phrase, an error) made safe to print: control and other
    non-printable characters dropped (no terminal escapes), length capped."""
    return "".join(c for c in text if c.isprintable())[:MAX_REMOTE_TEXT_CHARS]
