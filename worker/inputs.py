"""Reading a job's input image from wherever its URI points."""
from __future__ import annotations

from typing import Callable
from urllib.parse import urlsplit

from tasks.errors import InvalidInput
from tasks.limits import Limits
from tasks.schemas import decode_data_uri
from tasks.ssrf import AllowList, BucketAllowList
from tasks.storage import LocalStorage, S3Storage, Storage, open_storage
from worker.outbound import fetch


class InputReader:
    """Fetches image bytes, enforcing the byte caps before anything is decoded.

    s3:// is read only inside the deployment's own bucket and prefix or a location
    of `input_buckets`, file:// only inside the local storage folder, http(s)://
    through the SSRF guard, data: from the message itself.
    """

    def __init__(
        self,
        storage: Storage,
        limits: Limits,
        fetch_allow: AllowList,
        s3_factory: Callable[[], Storage] = lambda: open_storage("s3://visionq-inputs"),
        input_buckets: BucketAllowList = BucketAllowList(),
        fetch_timeout_s: float = 15.0,
    ) -> None:
        self.fetch_timeout_s = fetch_timeout_s
        self.storage = storage
        self.limits = limits
        self.fetch_allow = fetch_allow
        self._s3_factory = s3_factory
        self._s3: Storage | None = storage if isinstance(storage, S3Storage) else None
        if isinstance(storage, S3Storage):
            input_buckets = input_buckets.with_location(storage.bucket, storage.prefix)
        self.input_buckets = input_buckets

    def read(self, uri: str) -> bytes:
        if uri.startswith("data:"):
            return decode_data_uri(uri)
        if uri.startswith("s3://"):
            return self._read_s3(uri)
        if uri.startswith("file://"):
            if not isinstance(self.storage, LocalStorage):
                raise InvalidInput(f"image {uri[:200]!r} is outside the storage folder (this worker stores in S3: "
                                   "does its submitter's VISIONQ_STORAGE_URL name this worker's?)")
            return self.storage.read(uri, self.limits.max_image_bytes)
        if uri.startswith(("http://", "https://")):
            body, _content_type = fetch(
                uri, max_bytes=self.limits.max_image_bytes, timeout_s=self.fetch_timeout_s, allow=self.fetch_allow
            )
            return body
        raise InvalidInput(f"image URI {uri[:80]!r} has an unsupported scheme")

    def _read_s3(self, uri: str) -> bytes:
        parts = urlsplit(uri)
        if not self.input_buckets.allows(parts.netloc, parts.path.lstrip("/")):
            # The very words S3Storage.read uses for a missing or forbidden object:
            # a producer must not learn which buckets exist or what the worker can reach.
            raise InvalidInput(unreadable_image_message(uri))
        if self._s3 is None:
            self._s3 = self._s3_factory()
        return self._s3.read(uri, self.limits.max_image_bytes)


def unreadable_image_message(uri: str) -> str:
    return f"image {uri[:300]} cannot be read (no such object, or not readable by this deployment)"
