"""The retry schedule's arithmetic and what remote text may reach logs and terminals."""
from __future__ import annotations

import math
import random

import pytest

from tasks.webhooks import clean_text, is_retryable, mask_url, retry_delay_s

SCHEDULE = (0.0, 5.0, 300.0, 1800.0)


def test_each_attempt_waits_its_delay_within_the_jitter() -> None:
    rng = random.Random(1)
    for attempts_made, base in enumerate(SCHEDULE):
        delay = retry_delay_s(SCHEDULE, attempts_made, rng=rng)
        assert delay is not None and base * 0.8 <= delay <= base * 1.2
    assert retry_delay_s(SCHEDULE, len(SCHEDULE)) is None  # exhausted: dead letter


def test_a_longer_retry_after_is_honoured() -> None:
    assert retry_delay_s(SCHEDULE, 1, retry_after_s=120.0, rng=random.Random(1)) == 120.0


@pytest.mark.parametrize("retry_after_s", [1e300, math.inf, 10 * 365 * 86400.0])
def test_retry_after_is_capped_at_the_longest_delay(retry_after_s: float) -> None:
    delay = retry_delay_s(SCHEDULE, 1, retry_after_s=retry_after_s, rng=random.Random(1))
    assert delay == max(SCHEDULE)


@pytest.mark.parametrize("retry_after_s", [math.nan, -5.0, 0.0])
def test_meaningless_retry_after_leaves_the_schedule_alone(retry_after_s: float) -> None:
    assert retry_delay_s(SCHEDULE, 1, retry_after_s=retry_after_s, rng=random.Random(1)) == \
        retry_delay_s(SCHEDULE, 1, rng=random.Random(1))


def test_what_is_retried() -> None:
    assert all(is_retryable(s) for s in (None, 408, 429, 500, 503, 599))
    assert not any(is_retryable(s) for s in (200, 302, 400, 401, 404, 410))


@pytest.mark.parametrize("url, shown", [
    ("https://user:pa55@hooks.example.com:8443/cb/1?token=s3cret#frag", "https://hooks.example.com:8443/cb/1"),
    ("http://hooks.example.com/cb?sig=abc", "http://hooks.example.com/cb"),
    ("http://[2001:db8::1]:80/x?k=v", "http://[2001:db8::1]:80/x"),
    ("http://h.example/\x1b[31mred", "http://h.example/[31mred"),
])
def test_webhook_urls_are_masked_for_logs(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_remote_text_loses_control_characters_and_length() -> None:
    assert clean_text("Bad\x1b[2J Gateway\r\n\x07\u202e") == "Bad[2J Gateway"
    assert len(clean_text("x" * 10_000)) == 300
