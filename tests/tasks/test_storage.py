from __future__ import annotations

import hashlib
import os
import urllib.request
import uuid
from pathlib import Path

import pytest

from tasks.errors import InvalidInput, StorageError
from tasks.storage import LocalStorage, Outage, S3Storage, job_key, open_storage
from tests.conftest import BUCKET


@pytest.mark.integration
def test_s3_put_returns_fileref_readable_with_plain_boto3(s3: object, s3_env: dict) -> None:
    prefix = f"t-{uuid.uuid4().hex[:6]}"
    storage = open_storage(f"s3://{BUCKET}/{prefix}", presign_expiry_s=600)
    ref = storage.put(job_key("job1", "output-0.png"), b"png-bytes", "image/png")
    assert ref.uri == f"s3://{BUCKET}/{prefix}/jobs/job1/output-0.png"
    assert ref.sha256 == hashlib.sha256(b"png-bytes").hexdigest()
    assert ref.bytes == 9 and ref.content_type == "image/png"
    obj = s3.get_object(Bucket=BUCKET, Key=f"{prefix}/jobs/job1/output-0.png")
    assert obj["Body"].read() == b"png-bytes"
    assert obj["ContentType"] == "image/png"
    with urllib.request.urlopen(ref.url) as response:  # the presigned URL works as is
        assert response.read() == b"png-bytes"
    assert storage.exists("jobs/job1/output-0.png")
    assert not storage.exists("jobs/job1/missing.png")
    assert storage.read(ref.uri, max_bytes=100) == b"png-bytes"
    storage.delete("jobs/job1/output-0.png")  # a cancel's discarded output
    storage.delete("jobs/job1/output-0.png")  # gone already: no error
    assert not storage.exists("jobs/job1/output-0.png")


@pytest.mark.integration
def test_s3_read_limits_and_missing(s3_env: dict) -> None:
    storage = open_storage(f"s3://{BUCKET}/limits")
    ref = storage.put("inputs/big.png", b"x" * 1000, "image/png")
    with pytest.raises(InvalidInput, match="1000 bytes, more than the limit 10"):
        storage.read(ref.uri, max_bytes=10)
    with pytest.raises(InvalidInput, match="cannot be read"):
        storage.read(f"s3://{BUCKET}/limits/inputs/none.png", max_bytes=10)


class FakeClock:
    """A clock that moves only when the retry layer sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def unreachable_client(budget_s: float, clock: FakeClock) -> S3Storage:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url="http://127.0.0.1:9", aws_access_key_id="x", aws_secret_access_key="x",
        region_name="us-east-1", config=Config(retries={"max_attempts": 1}, connect_timeout=0.5),
    )
    storage = S3Storage("bucket", "p", 600, client, retry_s=budget_s)
    storage.outage = Outage(budget_s, sleep=clock.sleep, clock=lambda: clock.now)
    return storage


def test_s3_outage_is_waited_out_for_the_budget_then_names_object_and_time() -> None:
    clock = FakeClock()
    storage = unreachable_client(180, clock)
    with pytest.raises(StorageError) as caught:
        storage.put("jobs/x/result.json", b"{}", "application/json")
    message = caught.value.message
    assert "upload of s3://bucket/p/jobs/x/result.json" in message
    assert "unreachable for 1" in message and "VISIONQ_STORAGE_RETRY_S is 180" in message
    # waited (almost) the whole budget, with growing but capped delays
    assert 150 <= clock.now <= 180
    assert clock.sleeps[1] > clock.sleeps[0] and max(clock.sleeps) <= Outage.max_delay_s * 1.2


def test_an_outage_never_waits_past_its_budget_whatever_the_jitter() -> None:
    import random

    from botocore.exceptions import EndpointConnectionError

    def unreachable() -> None:
        raise EndpointConnectionError(endpoint_url="http://s3")

    state = random.getstate()
    try:
        for seed in range(100):  # the pauses are jittered: each seed is another sequence of them
            random.seed(seed)
            clock = FakeClock()
            with pytest.raises(StorageError, match="VISIONQ_STORAGE_RETRY_S is 180"):
                Outage(180, sleep=clock.sleep, clock=lambda: clock.now).call("upload of s3://b/k", unreachable)
            assert 180 - Outage.max_delay_s * 1.2 < clock.now <= 180, f"seed {seed}: waited {clock.now:.2f} s"
    finally:
        random.setstate(state)


def test_s3_call_that_recovers_within_the_budget_succeeds() -> None:
    from botocore.exceptions import EndpointConnectionError

    clock = FakeClock()
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 6:
            raise EndpointConnectionError(endpoint_url="http://s3")
        return "done"

    outage = Outage(180, sleep=clock.sleep, clock=lambda: clock.now)
    assert outage.call("upload of s3://b/k", flaky) == "done"
    assert len(calls) == 6


def test_refusals_are_not_retried() -> None:
    from botocore.exceptions import ClientError

    calls: list[int] = []

    def refused() -> None:
        calls.append(1)
        raise ClientError({"Error": {"Code": "InvalidBucketName"}, "ResponseMetadata": {"HTTPStatusCode": 400}},
                          "PutObject")

    with pytest.raises(StorageError, match="upload of s3://b/k failed"):
        Outage(180, sleep=lambda s: None).call("upload of s3://b/k", refused)
    assert calls == [1]


def test_botocore_does_not_retry_underneath() -> None:
    """One retry layer: the client we build tries each call once."""
    from tasks.storage import _make_s3_client

    client = _make_s3_client()
    assert client.meta.config.retries["total_max_attempts"] == 1


def test_local_storage_layout_and_confinement(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    ref = storage.put("jobs/j/mask-0.png", b"abc", "image/png")
    assert ref.uri == (tmp_path / "store" / "jobs/j/mask-0.png").as_uri()
    assert ref.url is None
    assert storage.read(ref.uri, 10) == b"abc"
    storage.delete("jobs/j/mask-0.png")
    storage.delete("jobs/j/mask-0.png")
    assert not storage.exists("jobs/j/mask-0.png")
    with pytest.raises(InvalidInput, match="outside the storage folder"):
        storage.delete("../secret.txt")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    with pytest.raises(InvalidInput, match="outside the storage folder"):
        storage.read(secret.as_uri(), 100)
    with pytest.raises(InvalidInput, match="outside the storage folder"):
        storage.read((tmp_path / "store" / ".." / "secret.txt").as_uri(), 100)


def test_local_storage_read_follows_no_link_out(tmp_path: Path) -> None:
    """A link planted in the folder leads nowhere outside it, whether it is the file or a folder
    on the way; links that stay inside, and a folder reached through a link, still read."""
    storage = LocalStorage(tmp_path / "store")
    ref = storage.put("inputs/a.png", b"inside", "image/png")
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    store = tmp_path / "store"
    (store / "inputs" / "file-link.png").symlink_to(secret)
    (store / "folder-link").symlink_to(tmp_path)
    for uri in ((store / "inputs" / "file-link.png").as_uri(), (store / "folder-link" / "secret.txt").as_uri()):
        with pytest.raises(InvalidInput, match="outside the storage folder"):
            storage.read(uri, 100)
    (store / "inputs" / "inner-link.png").symlink_to(store / "inputs" / "a.png")
    assert storage.read((store / "inputs" / "inner-link.png").as_uri(), 100) == b"inside"
    (tmp_path / "store-link").symlink_to(store)
    assert storage.read(ref.uri.replace("/store/", "/store-link/"), 100) == b"inside"
    assert LocalStorage(tmp_path / "store-link").read(ref.uri, 100) == b"inside"


def test_local_storage_read_refuses_what_is_not_a_file(tmp_path: Path) -> None:
    """A FIFO would block a plain read until someone writes to it; a folder is no image."""
    storage = LocalStorage(tmp_path / "store")
    storage.put("inputs/a.png", b"12345", "image/png")
    os.mkfifo(tmp_path / "store" / "inputs" / "fifo.png")
    for name in ("fifo.png", "missing.png", ""):
        with pytest.raises(InvalidInput, match="does not exist"):
            storage.read((tmp_path / "store" / "inputs" / name).as_uri(), 100)
    with pytest.raises(InvalidInput, match="has 5 bytes, more than the limit 4"):
        storage.read((tmp_path / "store" / "inputs" / "a.png").as_uri(), 4)
    with pytest.raises(InvalidInput, match="does not exist"):  # a file where a folder should be
        storage.read((tmp_path / "store" / "inputs" / "a.png" / "b.png").as_uri(), 100)
    inside = (tmp_path / "store" / "inputs" / "a.png").as_uri()
    assert storage.read(inside.replace("file://", "file://localhost"), 100) == b"12345"
    for uri in ("s3://bucket/inputs/a.png", inside + "%00.png", inside.replace("file://", "file://otherhost"),
                "file:inputs/a.png"):  # a NUL, another machine's file, a path relative to the worker's folder
        with pytest.raises(InvalidInput, match="outside the storage folder"):
            storage.read(uri, 100)


def test_local_storage_read_blames_the_storage_not_the_input_for_what_is_not_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Permissions, too many open files, I/O errors: storage_error, not "does not exist"."""
    import errno

    from tasks import storage as storage_module

    storage = LocalStorage(tmp_path / "store")
    ref = storage.put("inputs/a.png", b"12345", "image/png")

    def failing(folder: str, parts: list[str]) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(storage_module, "_open_below", failing)
    with pytest.raises(StorageError, match="Too many open files"):
        storage.read(ref.uri, 100)


def test_bad_storage_url() -> None:
    with pytest.raises(ValueError, match="must be s3://bucket/prefix or file:///dir"):
        open_storage("gs://bucket")
