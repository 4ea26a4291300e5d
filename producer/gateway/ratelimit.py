"""Submits per second per API key: a token bucket in Redis, shared by every gateway replica.

The bucket holds at most one second of tokens (at least one), refills continuously,
and is read and updated by one script on Redis's own clock, so replicas with
skewed clocks still agree.
"""
from __future__ import annotations

import math

import redis

from producer.http_errors import RateLimited

# KEYS[1] bucket. ARGV: rate per second, capacity, tokens wanted.
# Returns {1, 0} when taken, else {0, seconds until enough tokens}.
_TAKE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
local rate, capacity, wanted = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or t
tokens = math.min(capacity, tokens + math.max(0, t - at) * rate)
local ok = 0
if tokens >= wanted then tokens = tokens - wanted; ok = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(t))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
if ok == 1 then return {1, '0'} end
return {0, tostring((wanted - tokens) / rate)}
"""


class RateLimiter:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.prefix = prefix
        self._take = client.register_script(_TAKE)

    def take(self, key_id: str, rate: float | None) -> None:
        """One submit for this key; RateLimited (with Retry-After) when its bucket is empty."""
        if rate is None:
            return
        capacity = max(rate, 1.0)
        taken, wait_s = self._take(keys=[f"{self.prefix}:ratelimit:{key_id}"], args=[rate, capacity, 1])
        if not int(taken):
            raise RateLimited(
                f"API key {key_id} is limited to {rate:g} submitted jobs per second",
                retry_after_s=max(1, math.ceil(float(wait_s))),
            )
