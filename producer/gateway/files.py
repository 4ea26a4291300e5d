"""Links to a job's output files that a browser can follow.

An `<img>` cannot send a bearer header, so outputs are reached through URLs that
carry their own proof. With local storage the gateway serves them itself
(`GET /v1/files/{job_id}/{name}`) under an HMAC signature with an expiry; the
signing key lives in Redis so that every replica accepts every other's links.
With S3 the presigned URLs serve; when clients reach the store under another host
name than the workers (compose), the gateway presigns for that public endpoint.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

import redis

from producer.http_errors import Forbidden, NotFound
from tasks.record import FileRef, check_job_id
from tasks.settings import Settings
from tasks.storage import LocalStorage, S3Storage, Storage

# Output names are ours (output-0.png, mask-1.png, overlay.png, result.json).
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,99}")
# Expiries are rounded up to this step, so that a page reloaded within it gets the
# same URLs and the browser's cache still holds the images.
EXPIRY_STEP_S = 3600


class FileLinks:
    def __init__(self, storage: Storage, key: bytes, expiry_s: int, s3_public_client: Any = None) -> None:
        self.storage = storage
        self.key = key
        self.expiry_s = expiry_s
        self.s3_public_client = s3_public_client

    @classmethod
    def for_deployment(cls, settings: Settings, storage: Storage, client: redis.Redis) -> FileLinks:
        name = f"{settings.redis_prefix}:gateway:file-signing-key"
        client.set(name, secrets.token_bytes(32), nx=True)
        public = None
        if settings.storage_public_url and isinstance(storage, S3Storage):
            import boto3

            public = boto3.client("s3", endpoint_url=settings.storage_public_url)
        return cls(storage, client.get(name), settings.presign_expiry_s, public)

    def signature(self, job_id: str, name: str, expires: int) -> str:
        digest = hmac.new(self.key, f"{job_id}/{name}:{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def signed_path(self, job_id: str, name: str, now: float | None = None) -> str:
        now = time.time() if now is None else now
        expires = math.ceil((now + self.expiry_s) / EXPIRY_STEP_S) * EXPIRY_STEP_S
        sig = self.signature(job_id, name, expires)
        return f"/v1/files/{job_id}/{quote(name)}?expires={expires}&sig={sig}"

    def local_file(self, job_id: str, name: str, expires: int, sig: str) -> Path:
        """The file a signed link names; Forbidden for a bad or expired signature."""
        check_job_id(job_id)
        if not FILE_NAME.fullmatch(name):
            raise NotFound(f"no file {name[:100]!r} in job {job_id}")
        # As bytes: compare_digest refuses str with non-ASCII characters, and `sig` is anything a URL held.
        if not hmac.compare_digest(self.signature(job_id, name, expires).encode(), sig.encode()):
            raise Forbidden(f"the signature of this link to {job_id}/{name} is not valid")
        if expires < time.time():
            raise Forbidden(f"this link to {job_id}/{name} expired at {expires} (Unix time)")
        if not isinstance(self.storage, LocalStorage):
            raise NotFound("this deployment stores files in S3: use the file's presigned url")
        path = self.storage.root / "jobs" / job_id / name
        if not path.is_file():
            raise NotFound(f"no file {name!r} in job {job_id}")
        return path

    def with_links(self, record: dict[str, Any], base_url: str) -> dict[str, Any]:
        """The record with every FileRef's `url` one that its reader can follow."""
        if record.get("output"):
            record = {**record, "output": self._walk(record["output"], record["id"], base_url.rstrip("/"))}
        return record

    def _walk(self, value: Any, job_id: str, base_url: str) -> Any:
        if isinstance(value, list):
            return [self._walk(v, job_id, base_url) for v in value]
        if not isinstance(value, dict):
            return value
        if FileRef.described_by(value):
            return {**value, "url": self._url(value["uri"], job_id, base_url) or value.get("url")}
        return {k: self._walk(v, job_id, base_url) for k, v in value.items()}

    def _url(self, uri: str, job_id: str, base_url: str) -> str | None:
        if uri.startswith("file://") and isinstance(self.storage, LocalStorage):
            path = Path(unquote(urlparse(uri).path))
            if path.parent == self.storage.root / "jobs" / job_id:
                return base_url + self.signed_path(job_id, path.name)
            return None
        if uri.startswith("s3://") and self.s3_public_client is not None:
            bucket, _, key = uri[len("s3://"):].partition("/")
            return self.s3_public_client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.expiry_s,
            )
        return None
