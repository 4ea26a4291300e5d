"""Reading a job's input image from wherever its URI points."""
from __future__ import annotations

from typing import Callable

from tasks.errors import InvalidInput
from tasks.limits import Limits
from tasks.schemas import decode_data_uri
from worker.outbound import fetch
from tasks.ssrf import AllowList
from tasks.storage import LocalStorage, S3Storage, Storage, open_storage


class InputReader:
    """Fetches image bytes, enforcing the byte caps before anything is decoded.

    s3:// is read with the worker's own S3 client (any bucket its credentials
    reach), file:// only inside the local storage folder, http(s):// through the
    SSRF guard, data: from the message itself.
    """

    def __init__(
        self,
        storage: Storage,
        limits: Limits,
        fetch_allow: AllowList,
        s3_factory: Callable[[], Storage] = lambda: open_storage("s3://visionq-inputs"),
    ) -> None:
        self.storage = storage
        self.limits = limits
        self.fetch_allow = fetch_allow
        self._s3_factory = s3_factory
        self._s3: Storage | None = storage if isinstance(storage, S3Storage) else None

    def read(self, uri: str) -> bytes:
        if uri.startswith("data:"):
            return decode_data_uri(uri)
        if uri.startswith("s3://"):
            if self._s3 is None:
                self._s3 = self._s3_factory()
            return self._s3.read(uri, self.limits.max_image_bytes)
        if uri.startswith("file://"):
            if not isinstance(self.storage, LocalStorage):
                raise InvalidInput(f"image {uri[:200]!r} is outside the storage folder (this worker stores in S3)")
            return self.storage.read(uri, self.limits.max_image_bytes)
        if uri.startswith(("http://", "https://")):
            body, _content_type = fetch(uri, max_bytes=self.limits.max_image_bytes, allow=self.fetch_allow)
            return body
        raise InvalidInput(f"image URI {uri[:80]!r} has an unsupported scheme")
