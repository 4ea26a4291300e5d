"""Redis away (restarting, failing over, briefly unreachable): a call waited out in place."""
from __future__ import annotations

import logging
import random
import time
from typing import Callable, TypeVar

import redis
from kombu.exceptions import OperationalError

log = logging.getLogger("visionq.worker")
T = TypeVar("T")

# Redis restarting, failing over or briefly unreachable. kombu's OperationalError is
# what a publish (a webhook event) raises for the same.
REDIS_OUTAGE = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OperationalError)


def until_redis_answers(call: Callable[[], T], max_delay_s: float = 5.0) -> T:
    """`call()`, retried in place with backoff while Redis is away.

    A Redis failure is never a job's (or a webhook delivery's) error and never a reason to give
    up its message: it simply waits. A job's wait is bounded by its clock: a worker still
    waiting at the hard time limit is ended by its watchdog, and the message, unacknowledged in
    Redis, is delivered again."""
    delay = 0.1
    while True:
        try:
            return call()
        except REDIS_OUTAGE as exc:
            log.warning("Redis unavailable (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, max_delay_s)
