"""Our signatures against the independent `standardwebhooks` package."""
from __future__ import annotations

import base64

import pytest
from standardwebhooks.webhooks import Webhook

from tasks.webhooks import WebhookVerificationError, generate_secret, secret_key, signature_headers, verify
from tests.conftest import WEBHOOK_SECRET

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


@pytest.mark.parametrize("secret, decoded_bytes", [
    ("whsec_", 0),
    ("whsec_" + base64.b64encode(b"abc").decode(), 3),
    ("whsec_" + base64.b64encode(bytes(23)).decode(), 23),
])
def test_secrets_under_24_bytes_are_refused(secret: str, decoded_bytes: int) -> None:
    with pytest.raises(ValueError, match=f"decodes to {decoded_bytes} bytes; it must be at least 24"):
        secret_key(secret)
    with pytest.raises(ValueError, match="at least 24"):
        signature_headers(secret, "msg_6", BODY)


def test_a_24_byte_secret_and_the_test_suites_secret_are_accepted() -> None:
    assert len(secret_key("whsec_" + base64.b64encode(bytes(range(24))).decode())) == 24
    assert len(secret_key(WEBHOOK_SECRET)) >= 24


@pytest.mark.parametrize("mangle", [
    lambda h: {**h, "webhook-signature": "v1,\u00e9t\u00e9" + h["webhook-signature"][3:]},  # non-ASCII
    lambda h: {**h, "webhook-signature": "v1,\U0001f600"},
    lambda h: {**h, "webhook-id": "msg_\u00e9"},
    lambda h: {**h, "webhook-timestamp": "\u0661\u0662\u0663"},  # Arabic-Indic digits: int() takes them
    lambda h: {**h, "webhook-timestamp": "1_700_000_000"},
    lambda h: {**h, "webhook-timestamp": "9" * 5000},
    lambda h: {**h, "webhook-timestamp": ""},
    lambda h: {**h, "webhook-signature": None},
    lambda h: {**h, "webhook-id": b"msg_7"},
    lambda h: {k: v for k, v in h.items() if k != "webhook-signature"},
])
def test_malformed_headers_raise_the_verification_error_only(mangle) -> None:
    secret = generate_secret()
    headers = mangle(signature_headers(secret, "msg_7", BODY))
    with pytest.raises(WebhookVerificationError):
        verify(secret, headers, BODY)
