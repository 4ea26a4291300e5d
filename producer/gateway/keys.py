"""API keys and tenants, in Redis so that every gateway replica sees the same ones.

A key is shown once, when it is created (`visionq keys create`); Redis keeps only
its SHA-256. Keys are 32 random bytes, so a fast hash is enough: there is nothing
to brute-force. Each tenant has one webhook signing secret, made with its first
key and kept by the next ones. Per-key limits (queued jobs, submits per second)
live on the key's hash, read on every request, so a change holds at once everywhere.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

import redis

from tasks.errors import InvalidInput
from tasks.record import utc_now
from tasks.webhooks import generate_secret

KEY_PREFIX = "vq_"
TENANT_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")
# vq_<key id: 12 hex>_<secret: 43 url-safe base64 characters>
KEY_PATTERN = re.compile(r"vq_([0-9a-f]{12})_([A-Za-z0-9_\-]{43})")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    created_at: str
    max_queued: int | None  # the tenant's unfinished jobs this key may leave behind; None: no limit
    rate: float | None  # submitted jobs per second (a token bucket as deep as one second); None: no limit

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "tenant": self.tenant, "created_at": self.created_at,
                "max_queued": self.max_queued, "rate": self.rate}


@dataclass(frozen=True)
class NewKey:
    """What `visionq keys create` prints once: nothing here can be read back later."""

    tenant: str
    key_id: str
    key: str
    webhook_secret: str

    def to_dict(self) -> dict[str, str]:
        return {"tenant": self.tenant, "key_id": self.key_id, "key": self.key, "webhook_secret": self.webhook_secret}


def check_tenant(name: Any) -> str:
    if not isinstance(name, str) or not TENANT_PATTERN.fullmatch(name):
        shown = name[:80] if isinstance(name, str) else type(name).__name__
        raise InvalidInput(
            f"tenant {shown!r} must be 1..64 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix

    def _key(self, key_id: str) -> str:
        return f"{self.prefix}:apikey:{key_id}"

    @property
    def _index(self) -> str:
        return f"{self.prefix}:apikeys"

    def _secret_key(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:webhook-secret"

    def create(self, tenant: str, *, max_queued: int | None = None, rate: float | None = None) -> NewKey:
        check_tenant(tenant)
        if max_queued is not None and max_queued < 1:
            raise InvalidInput(f"--max-queued {max_queued} must be at least 1")
        if rate is not None and not rate > 0:
            raise InvalidInput(f"--rate {rate} must be a positive number of jobs per second")
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        fields = {"tenant": tenant, "sha256": _digest(key), "created_at": utc_now()}
        if max_queued is not None:
            fields["max_queued"] = str(max_queued)
        if rate is not None:
            fields["rate"] = repr(float(rate))
        webhook_secret = self.ensure_tenant(tenant)
        with self.redis.pipeline() as pipe:
            pipe.hset(self._key(key_id), mapping=fields)
            pipe.sadd(self._index, key_id)
            pipe.execute()
        return NewKey(tenant=tenant, key_id=key_id, key=key, webhook_secret=webhook_secret)

    def ensure_tenant(self, tenant: str) -> str:
        """The tenant's webhook secret, made now (32 random bytes) if it has none yet."""
        self.redis.set(self._secret_key(check_tenant(tenant)), generate_secret(), nx=True)
        return self.tenant_secret(tenant)

    def tenant_secret(self, tenant: str) -> str:
        value = self.redis.get(self._secret_key(tenant))
        if value is None:
            raise InvalidInput(f"tenant {tenant!r} has no webhook secret: create a key for it first")
        return value.decode()

    def list(self) -> list[ApiKey]:
        ids = sorted(i.decode() for i in self.redis.smembers(self._index))
        with self.redis.pipeline() as pipe:
            for key_id in ids:
                pipe.hgetall(self._key(key_id))
            found = pipe.execute()
        keys = [_api_key(key_id, raw) for key_id, raw in zip(ids, found) if raw]
        return sorted(keys, key=lambda k: (k.tenant, k.created_at))

    def revoke(self, key_id: str) -> bool:
        """False when there is no such key."""
        with self.redis.pipeline() as pipe:
            pipe.delete(self._key(key_id))
            pipe.srem(self._index, key_id)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def any_keys(self) -> bool:
        return bool(self.redis.scard(self._index))

    def authenticate(self, key: str) -> ApiKey | None:
        """The key's record, or None for a malformed, unknown or revoked key."""
        match = KEY_PATTERN.fullmatch(key)
        if match is None:
            return None
        raw = self.redis.hgetall(self._key(match.group(1)))
        if not raw or not hmac.compare_digest(raw.get(b"sha256", b"").decode(), _digest(key)):
            return None
        return _api_key(match.group(1), raw)


def _api_key(key_id: str, raw: dict[bytes, bytes]) -> ApiKey:
    text = {k.decode(): v.decode() for k, v in raw.items()}
    return ApiKey(
        key_id=key_id, tenant=text["tenant"], created_at=text["created_at"],
        max_queued=int(text["max_queued"]) if "max_queued" in text else None,
        rate=float(text["rate"]) if "rate" in text else None,
    )
