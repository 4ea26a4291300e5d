"""s3:// inputs: only the deployment's own bucket/prefix and VISIONQ_INPUT_BUCKETS, against moto's S3 API."""
from __future__ import annotations

import pytest

from tasks.errors import InvalidInput
from tasks.limits import Limits
from tasks.ssrf import AllowList, BucketAllowList
from tasks.storage import open_storage
from tests.conftest import BUCKET
from worker.inputs import InputReader

pytestmark = pytest.mark.integration

DATA = b"\x89PNG\r\n\x1a\nnot really, but bytes are bytes here"


@pytest.fixture(scope="module")
def objects(s3_env: dict[str, str]) -> dict[str, str]:
    import boto3

    s3 = boto3.client("s3")
    for bucket in ("other-team", "shared-inputs"):
        s3.create_bucket(Bucket=bucket)
    uris = {
        "own": f"s3://{BUCKET}/svc/inputs/a.png",
        "own bucket, other prefix": f"s3://{BUCKET}/elsewhere/a.png",
        "prefix look-alike": f"s3://{BUCKET}/svc-private/a.png",
        "other team": "s3://other-team/hr/passport.png",
        "allowed prefix": "s3://shared-inputs/public/a.png",
        "shared bucket, other prefix": "s3://shared-inputs/private/a.png",
    }
    for uri in uris.values():
        bucket, key = uri.removeprefix("s3://").split("/", 1)
        s3.put_object(Bucket=bucket, Key=key, Body=DATA)
    return uris


def reader(input_buckets: str = "") -> InputReader:
    storage = open_storage(f"s3://{BUCKET}/svc")
    return InputReader(storage, Limits(), AllowList(), input_buckets=BucketAllowList.parse(input_buckets))


def refusal(read: InputReader, uri: str) -> str:
    with pytest.raises(InvalidInput) as caught:
        read.read(uri)
    return caught.value.message.replace(uri, "<uri>")


def test_own_bucket_and_prefix_are_readable(objects: dict[str, str]) -> None:
    assert reader().read(objects["own"]) == DATA


def test_allow_listed_bucket_prefix_is_readable(objects: dict[str, str]) -> None:
    assert reader("shared-inputs/public").read(objects["allowed prefix"]) == DATA
    assert reader("s3://shared-inputs").read(objects["shared bucket, other prefix"]) == DATA


def test_everything_else_is_refused_exactly_like_a_missing_object(objects: dict[str, str]) -> None:
    read = reader("shared-inputs/public, visionq-nonexistent-bucket")
    missing = refusal(read, f"s3://{BUCKET}/svc/inputs/missing.png")
    assert "cannot be read" in missing
    for name in ("own bucket, other prefix", "prefix look-alike", "other team", "shared bucket, other prefix"):
        assert refusal(read, objects[name]) == missing, name
    # A bucket that does not exist reads like one that exists but is not ours.
    assert refusal(read, "s3://visionq-nonexistent-bucket/a.png") == missing
    assert refusal(read, "s3://nobody-has-this-bucket/a.png") == missing
