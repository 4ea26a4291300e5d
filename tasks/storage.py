"""Where inputs and outputs live: an S3-compatible bucket, or a local folder.

Both backends give the same layout (DESIGN.md) and return FileRefs with our own
sha256, whatever checksums the store computes. Keys are always built by us from
job ids and digests, never from user text.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import stat
import threading
import time
from pathlib import Path
from typing import Callable, Protocol, TypeVar
from urllib.parse import unquote, urlparse

from tasks.errors import InvalidInput, StorageError, VisionqError
from tasks.record import FileRef

T = TypeVar("T")

log = logging.getLogger("visionq.storage")

SUBMIT_RETRY_S = 10.0  # a submit's upload (SDK, gateway): a caller is waiting


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> FileRef: ...

    def exists(self, key: str) -> bool: ...

    def ref(self, key: str, data: bytes, content_type: str) -> FileRef: ...

    def read(self, uri: str, max_bytes: int) -> bytes: ...

    def delete(self, key: str) -> None:
        """One attempt (no outage budget: nothing waits on it), StorageError if it failed; a key
        that is not there is no error."""


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW


def input_key(sha256: str, extension: str) -> str:
    return f"inputs/{sha256}.{extension}"


def job_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/{name}"


def open_storage(
    url: str, *, presign_expiry_s: int = 86400, s3_client: object | None = None,
    retry_s: float | None = None,
) -> Storage:
    """`s3://bucket/prefix` or `file:///dir`. S3 calls wait out an outage of up to
    `retry_s` seconds (workers pass VISIONQ_STORAGE_RETRY_S; None: a submit's SUBMIT_RETRY_S)."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"storage URL {url!r} names no bucket")
        return S3Storage(parsed.netloc, parsed.path.strip("/"), presign_expiry_s, s3_client, retry_s)
    if parsed.scheme == "file":
        return LocalStorage(Path(unquote(parsed.path)))
    raise ValueError(f"storage URL {url!r} must be s3://bucket/prefix or file:///dir")


class Outage:
    """The one retry layer of storage calls: waits out an unreachable store.

    botocore's own retries are off (`_make_s3_client`), so each S3 call is tried
    here, with exponential backoff and jitter, until it succeeds, fails for a
    reason that waiting cannot fix (a 4xx), or `budget_s` has passed; then it
    becomes a StorageError naming the object and the time waited. Local disk
    writes are not retried: a full or read-only disk does not heal by waiting.
    """

    first_delay_s = 0.5
    max_delay_s = 10.0

    def __init__(
        self, budget_s: float, *, sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic, budget_named: str = "VISIONQ_STORAGE_RETRY_S is",
    ) -> None:
        """`budget_named`: how the refusal names the budget, before its seconds."""
        self.budget_s = budget_s
        self.budget_named = budget_named
        self.sleep = sleep
        self.clock = clock

    def call(self, what: str, action: Callable[[], T]) -> T:
        started = self.clock()
        delay = self.first_delay_s
        while True:
            try:
                return action()
            except (InvalidInput, StorageError):
                raise
            except Exception as exc:  # noqa: BLE001 - every backend failure maps to StorageError
                waited = self.clock() - started
                if not is_transient(exc):
                    raise StorageError(f"{what} failed: {exc}") from exc
                pause = delay * random.uniform(0.8, 1.2)
                if waited + pause > self.budget_s:  # the jittered pause: never wait past the budget
                    # Said as such: "unreachable for 7 s (budget 10 s)" read as giving up early.
                    raise StorageError(
                        f"{what} failed: storage unreachable for {waited:.0f} s, and the next try would "
                        f"come past the budget ({self.budget_named} {self.budget_s:g} s): {exc}"
                    ) from exc
                log.warning("%s failed after %.0f s, retrying in %.1f s: %s", what, waited, pause, exc)
                self.sleep(pause)
                delay = min(delay * 2, self.max_delay_s)


_TRANSIENT_S3_CODES = frozenset({
    "RequestTimeout", "RequestTimeTooSkewed", "SlowDown", "Throttling", "ThrottlingException",
    "InternalError", "ServiceUnavailable", "RequestLimitExceeded",
})


def is_transient(exc: BaseException) -> bool:
    """A failure that waiting may fix: no connection, a timeout, a 5xx, throttling."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, (ConnectionError, HTTPClientError, OSError)):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or error.get("Code") in _TRANSIENT_S3_CODES
    return False


class S3Storage:
    def __init__(
        self, bucket: str, prefix: str, presign_expiry_s: int, client: object | None = None,
        retry_s: float | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.presign_expiry_s = presign_expiry_s
        self.outage = Outage(SUBMIT_RETRY_S, budget_named="a submit's budget is") if retry_s is None \
            else Outage(retry_s)
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
        self.outage.call(
            f"upload of s3://{self.bucket}/{self._key(key)}",
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
            ),
        )
        return self.ref(key, data, content_type)

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"delete of s3://{self.bucket}/{self._key(key)} failed: {exc}") from exc

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

        return self.outage.call(f"lookup of s3://{self.bucket}/{self._key(key)}", head)

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
                # Missing and forbidden read alike: a producer must not learn what exists.
                if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket", "403", "AccessDenied", "Forbidden"):
                    raise InvalidInput(
                        f"image {uri[:300]} cannot be read (no such object, or not readable by this deployment)"
                    ) from None
                raise
            size = head["ContentLength"]
            if size > max_bytes:
                raise InvalidInput(f"image {uri} has {size} bytes, more than the limit {max_bytes}")
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read(max_bytes + 1)

        data = self.outage.call(f"download of {uri}", get)
        if len(data) > max_bytes:  # the object grew between head and get
            raise InvalidInput(f"image {uri} has more than the limit {max_bytes} bytes")
        return data


def _make_s3_client() -> object:
    import boto3
    from botocore.config import Config

    # Endpoint, region and credentials come from boto3's standard variables and
    # files. For stores that reject the CRC32 checksums recent boto3 adds, set
    # AWS_REQUEST_CHECKSUM_CALCULATION=when_required (also read by boto3 itself).
    # One attempt per call: `Outage` is the only retry layer. Short connect and read
    # timeouts so a store that stops answering is noticed and retried, not waited on.
    return boto3.client(
        "s3",
        config=Config(
            retries={"mode": "standard", "total_max_attempts": 1}, signature_version="s3v4",
            connect_timeout=5, read_timeout=30,
        ),
    )


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# A folder is only walked through: O_PATH (Linux) needs no more than the search permission that
# open() needs to pass through it, where O_RDONLY would need read permission too.
_FOLDER = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | _CLOEXEC


def _open_below(folder: str, parts: list[str]) -> int:
    """`folder`/`parts` opened read-only, each part relative to the one before, following no link
    (ELOOP or ENOTDIR at a link) and not waiting on a FIFO."""
    fd = os.open(folder, _FOLDER)
    try:
        for part in parts[:-1]:
            inner = os.open(part, _FOLDER | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


class LocalStorage:
    """A folder on this machine; for single-machine use and the demo."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        # Keys are built from checked job ids and digests; this is the last line of defence.
        # Lexical (normpath, not resolve: no realpath syscalls twice per stored file): only we
        # write into this folder, so no link inside it leads out.
        path = Path(os.path.normpath(self.root / key))
        if not path.is_relative_to(self.root):
            raise InvalidInput(f"storage key {key[:200]!r} leads outside the storage folder {self.root}")
        return path

    def ref(self, key: str, data: bytes, content_type: str) -> FileRef:
        return self._ref(self._path(key), data, content_type)

    @staticmethod
    def _ref(path: Path, data: bytes, content_type: str) -> FileRef:
        return FileRef(
            uri=path.as_uri(), url=None, content_type=content_type,
            bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        )

    def put(self, key: str, data: bytes, content_type: str) -> FileRef:
        path = self._path(key)
        # Write then rename, so a reader never sees half a file. The temporary name is this
        # thread's own (no two writers share it); the folder is made only when missing: a job's
        # second file finds it (tempfile and mkdir's stat calls were a tenth of a job's CPU).
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        try:
            try:
                fd = os.open(tmp, _NEW_FILE, 0o600)
            except FileNotFoundError:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(tmp, _NEW_FILE, 0o600)
            try:
                written = memoryview(data)
                while written:  # os.write, not a file object: no buffer to build for one write
                    written = written[os.write(fd, written):]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(f"write of {path} failed: {exc}") from exc
        return self._ref(path, data, content_type)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"delete of {self._path(key)} failed: {exc}") from exc

    def read(self, uri: str, max_bytes: int) -> bytes:
        parsed = urlparse(uri)
        path = unquote(parsed.path)
        shown = uri[:300]
        # A file of this machine, named from the root: no other host, no relative path, no NUL.
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost") or not path.startswith("/") \
                or "\x00" in path:
            raise self._outside(shown)
        fd = self._open_inside(shown, path)
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise InvalidInput(f"image {shown} does not exist")
            if status.st_size > max_bytes:
                raise InvalidInput(f"image {shown} has {status.st_size} bytes, more than the limit {max_bytes}")
            data = b""  # st_size + 1 asked for: a file that grew shows it (a short read asks again)
            while len(data) <= status.st_size and (chunk := os.read(fd, status.st_size + 1 - len(data))):
                data += chunk
        finally:
            os.close(fd)
        if len(data) != status.st_size:
            raise InvalidInput(f"image {shown} changed while it was read")
        return data

    def _open_inside(self, uri: str, path: str) -> int:
        """A file:// URI from a message may only name something inside our storage folder;
        anything else would let a producer read the worker's disk. The file is opened one folder
        at a time from the storage folder, following no link (what is opened is what was
        checked: no link swapped in between), and without blocking on a FIFO. A path with a link
        in it, or that reaches the folder through one, is resolved first (`os.path.realpath`),
        then opened the same way. The usual case costs an open per folder below the storage
        folder; `Path.resolve` lstats every component from `/` in Python (5 % of a 0 ms stand-in
        job's worker CPU in a py-spy profile)."""
        lexical = os.path.normpath(path)
        parts = self._parts_inside(lexical)
        if parts is not None:
            try:
                return _open_below(str(self.root), parts)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):  # ELOOP, ENOTDIR: maybe a link on the way
                    raise self._read_error(uri, exc) from None
        parts = self._parts_inside(os.path.realpath(lexical))
        if parts is None:
            raise self._outside(uri)
        try:
            return _open_below(str(self.root), parts)
        except OSError as exc:  # ELOOP: a link swapped in since realpath
            raise (self._outside(uri) if exc.errno == errno.ELOOP else self._read_error(uri, exc)) from None

    def _outside(self, uri: str) -> InvalidInput:
        return InvalidInput(f"image {uri!r} is outside the storage folder {self.root} (does its submitter's "
                            "VISIONQ_STORAGE_URL name this worker's folder?)")

    @staticmethod
    def _read_error(uri: str, exc: OSError) -> VisionqError:
        """A name that is not there is the producer's error; another failure (permissions, too many
        open files, I/O) is the storage's, not to be blamed on the input."""
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return InvalidInput(f"image {uri} does not exist")
        return StorageError(f"reading {uri} failed: {exc.strerror}")

    def _parts_inside(self, path: str) -> list[str] | None:
        root = str(self.root)
        return path[len(root) + 1:].split(os.sep) if path.startswith(root + os.sep) else None
