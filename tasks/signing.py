"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

`webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>`, the key
being the base64 part of a `whsec_<base64>` secret. Pure functions: the delivery
worker signs with them, receivers verify with `producer.webhooks.verify` (or any
Standard Webhooks library).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from typing import Mapping

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 5 * 60  # a replayed delivery older than this is refused


class WebhookVerificationError(ValueError):
    """The delivery is not authentic (bad signature), or too old/new to trust."""


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret must be whsec_<base64>") from None


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
    and its timestamp is within `tolerance_s` of now. Header names are case-insensitive."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        message_id = lowered["webhook-id"]
        timestamp = int(lowered["webhook-timestamp"])
        signatures = lowered["webhook-signature"]
    except (KeyError, ValueError):
        raise WebhookVerificationError("missing or malformed webhook-* headers") from None
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise WebhookVerificationError(f"timestamp {timestamp} is outside the {tolerance_s} s tolerance")
    data = body.encode() if isinstance(body, str) else body
    expected = sign(secret, message_id, timestamp, data).split(",", 1)[1]
    # The header may carry several space-separated signatures (key rotation).
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise WebhookVerificationError("no valid v1 signature")
