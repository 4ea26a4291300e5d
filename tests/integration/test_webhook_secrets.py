"""Weak webhook secrets are refused where they enter: the global one before anything
is sent, a job's own at submit (tests/integration/test_webhooks.py)."""
from __future__ import annotations

import base64

import pytest

from producer.client import Client
from tasks.settings import Settings
from tests.support.cli import run_visionq

pytestmark = pytest.mark.integration

WEAK = ["whsec_", "whsec_" + base64.b64encode(b"abc").decode()]


@pytest.mark.parametrize("weak", WEAK)
def test_the_delivery_worker_does_not_start_with_a_weak_global_secret(service_env: dict, weak: str) -> None:
    result = run_visionq("webhooks", env={**service_env, "VISIONQ_WEBHOOK_SECRET": weak}, timeout=60)
    assert result.returncode != 0
    assert "VISIONQ_WEBHOOK_SECRET" in result.stderr or "webhook secret" in result.stderr
    assert "at least 24 random bytes" in result.stderr


@pytest.mark.parametrize("weak", WEAK)
def test_a_webhook_is_not_accepted_with_a_weak_global_secret(service_env: dict, weak: str) -> None:
    # Refused when the settings are read or, at the latest, at submit: never sent signed with it.
    with pytest.raises(ValueError, match="at least 24 random bytes"):
        client = Client(settings=Settings.from_env({**service_env, "VISIONQ_WEBHOOK_SECRET": weak}))
        client.caption("http://127.0.0.1:9/x.png", webhook="https://hooks.example/cb")
