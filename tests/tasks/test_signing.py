"""Our signatures against the independent `standardwebhooks` package."""
from __future__ import annotations

import pytest
from standardwebhooks.webhooks import Webhook

from tasks.webhooks import WebhookVerificationError, generate_secret, signature_headers, verify

BODY = b'{"type":"job.succeeded","data":{"id":"abc"}}'


def test_standard_webhooks_library_accepts_our_signature() -> None:
    secret = generate_secret()
    headers = signature_headers(secret, "msg_1", BODY)
    assert Webhook(secret).verify(BODY, headers) == {"type": "job.succeeded", "data": {"id": "abc"}}


def test_we_accept_the_libraries_signature() -> None:
    secret = generate_secret()
    wh = Webhook(secret)
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    signature = wh.sign("msg_2", now, BODY.decode())
    verify(secret, {"Webhook-Id": "msg_2", "Webhook-Timestamp": str(int(now.timestamp())),
                    "Webhook-Signature": signature}, BODY)


def test_tampering_and_staleness_are_refused() -> None:
    secret = generate_secret()
    headers = signature_headers(secret, "msg_3", BODY)
    with pytest.raises(WebhookVerificationError, match="no valid v1 signature"):
        verify(secret, headers, BODY + b" ")
    with pytest.raises(WebhookVerificationError, match="no valid v1 signature"):
        verify(generate_secret(), headers, BODY)
    old = signature_headers(secret, "msg_4", BODY, timestamp=1_000_000)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(secret, old, BODY)
    with pytest.raises(WebhookVerificationError, match="missing"):
        verify(secret, {}, BODY)


def test_rotated_signatures_any_valid_one_passes() -> None:
    secret, old_secret = generate_secret(), generate_secret()
    headers = signature_headers(secret, "msg_5", BODY)
    stale = signature_headers(old_secret, "msg_5", BODY, timestamp=int(headers["webhook-timestamp"]))
    headers["webhook-signature"] = stale["webhook-signature"] + " " + headers["webhook-signature"]
    verify(secret, headers, BODY)
