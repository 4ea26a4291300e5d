"""`/readyz`: can this gateway do its work now (Redis answers, storage is reachable)?"""
from __future__ import annotations

import os

import redis

from producer.gateway.services import Services
from producer.http_errors import Unavailable
from tasks.storage import LocalStorage, S3Storage


def check_ready(services: Services) -> None:
    """Unavailable naming what is not reachable."""
    try:
        services.redis.ping()
    except redis.RedisError as exc:
        raise Unavailable(f"Redis (VISIONQ_REDIS_URL) does not answer: {type(exc).__name__}", retry_after_s=5) from None
    storage = services.storage
    if isinstance(storage, LocalStorage):
        folder = storage.root if storage.root.exists() else storage.root.parent
        if not os.access(folder, os.W_OK):
            raise Unavailable(f"storage folder {storage.root} is not writable", retry_after_s=5)
    elif isinstance(storage, S3Storage):
        try:
            storage.client.head_bucket(Bucket=storage.bucket)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready; the message says which
            raise Unavailable(f"storage bucket {storage.bucket!r} is not reachable: {exc}", retry_after_s=5) from None
