"""Where inputs and outputs live: an S3-compatible bucket, or a local folder.

Both backends give the same layout (DESIGN.md) and return FileRefs with our own
sha256, whatever checksums the store computes. Keys are always built by us from
job ids and digests, never from user text.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Protocol, TypeVar
from urllib.parse import unquote, urlparse

from tasks.errors import InvalidInput, StorageError
from tasks.record import FileRef

T = TypeVar("T")


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> FileRef: ...

    def exists(self, key: str) -> bool: ...

    def ref(self, key: str, data: bytes, content_type: str) -> FileRef: ...

    def read(self, uri: str, max_bytes: int) -> bytes: ...


def input_key(sha256: str, extension: str) -> str:
    return f"inputs/{sha256}.{extension}"


def job_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/{name}"


def open_storage(url: str, *, presign_expiry_s: int = 86400, s3_client: object | None = None) -> Storage:
    """`s3://bucket/prefix` or `file:///dir`."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"storage URL {url!r} names no bucket")
        return S3Storage(parsed.netloc, parsed.path.strip("/"), presign_expiry_s, s3_client)
    if parsed.scheme == "file":
        return LocalStorage(Path(unquote(parsed.path)))
    raise ValueError(f"storage URL {url!r} must be s3://bucket/prefix or file:///dir")


def _with_retries(action: str, call: Callable[[], T], attempts: int = 3) -> T:
    """Transient storage failures are retried with backoff, then become StorageError.

    boto3 already retries throttling and 5xx inside each call; this outer loop
    covers connection failures that outlast those."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except (InvalidInput, StorageError):
            raise
        except Exception as exc:  # noqa: BLE001 - every backend failure maps to StorageError
            if attempt == attempts:
                raise StorageError(f"{action} failed after {attempts} attempts: {exc}") from exc
            time.sleep(0.2 * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


class S3Storage:
    def __init__(self, bucket: str, prefix: str, presign_expiry_s: int, client: object | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.presign_expiry_s = presign_expiry_s
        # One client per process: creating one costs ~3 ms and it is thread-safe.
        self.client = client if client is not None else _make_s3_client()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def ref(self, key: str, data: bytes, content_type: str) -> FileRef:
        full_key = self._key(key)
        url = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": full_key}, ExpiresIn=self.presign_expiry_s
        )
        return FileRef(
            uri=f"s3://{self.bucket}/{full_key}", url=url, content_type=content_type,
            bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        )

    def put(self, key: str, data: bytes, content_type: str) -> FileRef:
        _with_retries(
            f"upload of s3://{self.bucket}/{self._key(key)}",
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
            ),
        )
        return self.ref(key, data, content_type)

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=self._key(key))
                return True
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise

        return _with_retries(f"lookup of s3://{self.bucket}/{self._key(key)}", head)

    def read(self, uri: str, max_bytes: int) -> bytes:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
            raise InvalidInput(f"{uri!r} is not an s3://bucket/key URI")
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        from botocore.exceptions import ClientError

        def get() -> bytes:
            try:
                head = self.client.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("404", "NoSuchKey", "NotFound", "403", "AccessDenied"):
                    raise InvalidInput(f"image {uri} cannot be read: {code}") from None
                raise
            size = head["ContentLength"]
            if size > max_bytes:
                raise InvalidInput(f"image {uri} has {size} bytes, more than the limit {max_bytes}")
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read(max_bytes + 1)

        data = _with_retries(f"download of {uri}", get)
        if len(data) > max_bytes:  # the object grew between head and get
            raise InvalidInput(f"image {uri} has more than the limit {max_bytes} bytes")
        return data


def _make_s3_client() -> object:
    import boto3
    from botocore.config import Config

    # Endpoint, region and credentials come from boto3's standard variables and
    # files. For stores that reject the CRC32 checksums recent boto3 adds, set
    # AWS_REQUEST_CHECKSUM_CALCULATION=when_required (also read by boto3 itself).
    return boto3.client(
        "s3",
        config=Config(retries={"mode": "standard", "max_attempts": 5}, signature_version="s3v4"),
    )


class LocalStorage:
    """A folder on this machine; for single-machine use and the demo."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        return self.root / key

    def ref(self, key: str, data: bytes, content_type: str) -> FileRef:
        return FileRef(
            uri=self._path(key).as_uri(), url=None, content_type=content_type,
            bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        )

    def put(self, key: str, data: bytes, content_type: str) -> FileRef:
        path = self._path(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a reader never sees half a file.
            with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
                tmp.write(data)
            os.replace(tmp.name, path)

        _with_retries(f"write of {path}", write)
        return self.ref(key, data, content_type)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def read(self, uri: str, max_bytes: int) -> bytes:
        parsed = urlparse(uri)
        path = Path(unquote(parsed.path)).resolve()
        # A file:// URI from a message may only name something inside our storage
        # folder; anything else would let a producer read the worker's disk.
        if parsed.scheme != "file" or not path.is_relative_to(self.root):
            raise InvalidInput(f"image {uri!r} is outside the storage folder {self.root}")
        if not path.is_file():
            raise InvalidInput(f"image {uri} does not exist")
        size = path.stat().st_size
        if size > max_bytes:
            raise InvalidInput(f"image {uri} has {size} bytes, more than the limit {max_bytes}")
        return path.read_bytes()
