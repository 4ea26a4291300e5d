from __future__ import annotations

import hashlib
import urllib.request
import uuid
from pathlib import Path

import pytest

from tasks.errors import InvalidInput, StorageError
from tasks.storage import LocalStorage, S3Storage, job_key, open_storage
from tests.conftest import BUCKET


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


def test_s3_read_limits_and_missing(s3_env: dict) -> None:
    storage = open_storage(f"s3://{BUCKET}/limits")
    ref = storage.put("inputs/big.png", b"x" * 1000, "image/png")
    with pytest.raises(InvalidInput, match="1000 bytes, more than the limit 10"):
        storage.read(ref.uri, max_bytes=10)
    with pytest.raises(InvalidInput, match="cannot be read"):
        storage.read(f"s3://{BUCKET}/limits/inputs/none.png", max_bytes=10)


def test_s3_unreachable_becomes_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url="http://127.0.0.1:9", aws_access_key_id="x", aws_secret_access_key="x",
        region_name="us-east-1", config=Config(retries={"max_attempts": 1}, connect_timeout=0.5),
    )
    storage = S3Storage("bucket", "p", 600, client)
    monkeypatch.setattr("tasks.storage.time.sleep", lambda s: None)
    with pytest.raises(StorageError, match="failed after 3 attempts"):
        storage.put("jobs/x/result.json", b"{}", "application/json")


def test_local_storage_layout_and_confinement(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    ref = storage.put("jobs/j/mask-0.png", b"abc", "image/png")
    assert ref.uri == (tmp_path / "store" / "jobs/j/mask-0.png").as_uri()
    assert ref.url is None
    assert storage.read(ref.uri, 10) == b"abc"
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    with pytest.raises(InvalidInput, match="outside the storage folder"):
        storage.read(secret.as_uri(), 100)
    with pytest.raises(InvalidInput, match="outside the storage folder"):
        storage.read((tmp_path / "store" / ".." / "secret.txt").as_uri(), 100)


def test_bad_storage_url() -> None:
    with pytest.raises(ValueError, match="must be s3://bucket/prefix or file:///dir"):
        open_storage("gs://bucket")
