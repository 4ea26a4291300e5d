"""The gateway over S3 storage with no worker at all: jobs stay queued, so quotas, cancels
and waits are deterministic. Also the tenant's S3 prefix and presigning for a public endpoint."""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import redis

from producer.gateway.keys import KeyStore, NewKey
from tasks.record import FileRef
from tasks.settings import Settings
from tasks.status import JobStatus
from tasks.storage import open_storage
from tasks.store import JobStore
from tests.conftest import BUCKET
from tests.support.gateway import GatewayProcess
from tests.support.images import encode, scene

pytestmark = pytest.mark.integration

GENERATE = {"kind": "generate", "input": {"prompt": "a kite", "width": 64, "height": 64, "steps": 1}}


@pytest.fixture(scope="module")
def queued_env(service_env: dict[str, str]) -> dict[str, str]:
    """The shared services under a prefix no worker consumes; clients reach S3 as `localhost`."""
    endpoint = service_env["AWS_ENDPOINT_URL"]
    return {**service_env, "VISIONQ_REDIS_PREFIX": f"vqgwq-{uuid.uuid4().hex[:8]}",
            "VISIONQ_STORAGE_PUBLIC_URL": endpoint.replace("127.0.0.1", "localhost")}


@pytest.fixture(scope="module")
def keys(queued_env: dict[str, str]) -> KeyStore:
    return KeyStore(redis.Redis.from_url(queued_env["VISIONQ_REDIS_URL"]), queued_env["VISIONQ_REDIS_PREFIX"])


@pytest.fixture(scope="module")
def gateway(queued_env: dict[str, str], keys: KeyStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    keys.create("setup")
    with GatewayProcess(queued_env, tmp_path_factory.mktemp("gateway-queued")) as process:
        yield process


def api(gateway: GatewayProcess, key: NewKey) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key.key}"}, timeout=90)


def test_max_queued_counts_the_tenants_unfinished_jobs(gateway: GatewayProcess, keys: KeyStore) -> None:
    tenant = f"quota-{uuid.uuid4().hex[:6]}"
    limited = keys.create(tenant, max_queued=2)
    with api(gateway, limited) as http:
        first, second = (http.post("/v1/jobs", json=GENERATE).json() for _ in range(2))
        refused = http.post("/v1/jobs", json=GENERATE)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert "2" in refused.json()["error"]["message"] and int(refused.headers["Retry-After"]) >= 1
        batch = http.post("/v1/jobs/batch", json={"jobs": [GENERATE]}).json()["jobs"]
        assert batch[0]["error"]["code"] == "rate_limited"
        canceled = http.post(f"/v1/jobs/{first['id']}/cancel").json()
        assert canceled["status"] == "canceled"
        assert http.post("/v1/jobs", json=GENERATE).status_code == 201  # a finished job no longer counts
    # Another key of the same tenant sees the same count: the limit is the tenant's jobs.
    with api(gateway, keys.create(tenant, max_queued=2)) as http:
        assert http.post("/v1/jobs", json=GENERATE).status_code == 429
    assert second["status"] == "queued"


def test_a_batch_job_redis_refuses_fails_alone_and_frees_its_quota(
    gateway: GatewayProcess, keys: KeyStore, queued_env: dict[str, str],
) -> None:
    """Redis refusing one job's write (its queue key holds a string here: WRONGTYPE; out of memory
    alike) answers that job `unavailable`; the batch's other job is queued, and the refused one
    does not count against the tenant's max_queued."""
    from tasks.kinds import JobKind, Priority, queue_list_key

    client = redis.Redis.from_url(queued_env["VISIONQ_REDIS_URL"])
    planted = queue_list_key(JobKind.GENERATE, Priority.LOW, queued_env["VISIONQ_REDIS_PREFIX"])
    client.set(planted, "not a queue")
    try:
        with api(gateway, keys.create(f"refused-{uuid.uuid4().hex[:6]}", max_queued=2)) as http:
            answer = http.post("/v1/jobs/batch", json={"jobs": [{**GENERATE, "priority": "low"}, GENERATE]})
            assert answer.status_code == 200, answer.text
            refused, queued = answer.json()["jobs"]
            assert refused["error"] == {"code": "unavailable",
                                        "message": "Redis refused to store this job (ResponseError)"}
            assert queued["status"] == "queued"
            assert http.post("/v1/jobs", json=GENERATE).status_code == 201  # the second of two allowed
    finally:
        client.delete(planted)


def test_a_job_stored_but_not_listed_is_still_answered_created(
    gateway: GatewayProcess, keys: KeyStore, queued_env: dict[str, str],
) -> None:
    """Once the job is stored, a failure to list it for its tenant (here the listing's key holds
    a string: WRONGTYPE) is logged, not answered 503: a client would submit it again."""
    tenant = f"unlisted-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(queued_env["VISIONQ_REDIS_URL"])
    listing = f"{queued_env['VISIONQ_REDIS_PREFIX']}:tenant:{tenant}:jobs"
    client.set(listing, "not a listing")
    try:
        with api(gateway, keys.create(tenant)) as http:
            answer = http.post("/v1/jobs", json=GENERATE)
            assert answer.status_code == 201, answer.text
            assert http.get(f"/v1/jobs/{answer.json()['id']}").json()["status"] == "queued"
            batch = http.post("/v1/jobs/batch", json={"jobs": [GENERATE]})
            assert batch.status_code == 200 and batch.json()["jobs"][0]["status"] == "queued", batch.text
    finally:
        client.delete(listing)


def test_cancel_of_a_queued_job_and_its_events(gateway: GatewayProcess, keys: KeyStore) -> None:
    with api(gateway, keys.create("canceler")) as http:
        job = http.post("/v1/jobs", json=GENERATE).json()
        assert http.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            names = [line.split(": ", 1)[1] for line in stream.iter_lines() if line.startswith("event: ")]
    assert names == ["job.snapshot", "job.canceled"]


def test_prefer_wait_answers_after_the_wait_when_the_job_is_not_final(gateway: GatewayProcess, keys: KeyStore) -> None:
    with api(gateway, keys.create("waiter")) as http:
        started = time.monotonic()
        answer = http.post("/v1/jobs", json=GENERATE, headers={"Prefer": "wait=1"})
        assert time.monotonic() - started >= 0.9  # a lower bound only: it did wait
        assert answer.status_code == 201 and answer.json()["status"] == "queued"
        assert answer.headers["Preference-Applied"] == "wait=1"
        capped = http.get(f"/v1/jobs/{answer.json()['id']}", headers={"Prefer": "wait=0"})
        assert capped.headers["Preference-Applied"] == "wait=0"
        for ignored in ("wait=1.5", "wait=abc", "wait=-1", "respond-async, wait=2s"):  # not whole seconds: no wait
            plain = http.get(f"/v1/jobs/{answer.json()['id']}", headers={"Prefer": ignored})
            assert plain.status_code == 200 and "Preference-Applied" not in plain.headers, ignored
        both = http.get(f"/v1/jobs/{answer.json()['id']}", headers={"Prefer": "respond-async, wait=0"})
        assert both.headers["Preference-Applied"] == "wait=0"


def test_s3_inputs_only_under_the_tenants_prefix(gateway: GatewayProcess, keys: KeyStore, s3: object) -> None:
    tenant = f"s3t-{uuid.uuid4().hex[:6]}"
    own = f"svc/tenants/{tenant}/scene.png"
    s3.put_object(Bucket=BUCKET, Key=own, Body=encode(scene()))
    with api(gateway, keys.create(tenant)) as http:
        accepted = http.post("/v1/jobs", json={"kind": "caption", "input": {"image": f"s3://{BUCKET}/{own}"}})
        assert accepted.status_code == 201, accepted.text
        for other in (f"s3://{BUCKET}/svc/tenants/someone-else/scene.png", f"s3://{BUCKET}/svc/inputs/x.png",
                      f"s3://other-bucket/svc/tenants/{tenant}/scene.png"):
            refused = http.post("/v1/jobs", json={"kind": "caption", "input": {"image": other}})
            assert refused.status_code == 400 and "prefix" in refused.json()["error"]["message"], other
        uploaded = http.post("/v1/jobs", files={"image": ("s.png", encode(scene(seed=4)), "image/png")},
                             data={"request": json.dumps({"kind": "caption", "input": {}})}).json()
        # An upload lands under the tenant's prefix: its input can be submitted again, by its tenant only.
        assert uploaded["input"]["image"].startswith(f"s3://{BUCKET}/svc/tenants/{tenant}/inputs/")
        again = http.post("/v1/jobs", json={"kind": "caption", "input": {"image": uploaded["input"]["image"]}})
        assert again.status_code == 201, again.text
    with api(gateway, keys.create(f"other-{uuid.uuid4().hex[:6]}")) as http:
        refused = http.post("/v1/jobs", json={"kind": "caption", "input": {"image": uploaded["input"]["image"]}})
        assert refused.status_code == 400 and "prefix" in refused.json()["error"]["message"]
    key = uploaded["input"]["image"][len(f"s3://{BUCKET}/"):]
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == encode(scene(seed=4))


def test_output_urls_presigned_for_the_public_endpoint(
    gateway: GatewayProcess, keys: KeyStore, queued_env: dict[str, str], tmp_path: Path,
) -> None:
    with api(gateway, keys.create("presign")) as http:
        job = http.post("/v1/jobs", json=GENERATE).json()
        # What a worker does when the job succeeds: store the image, record its FileRef.
        settings = Settings.from_env(queued_env)
        data = encode(scene(seed=9))
        ref: FileRef = open_storage(settings.storage_url).put(f"jobs/{job['id']}/output-0.png", data, "image/png")
        store = JobStore(redis.Redis.from_url(settings.redis_url), ttl_s=3600, prefix=settings.redis_prefix)
        store.transition(job["id"], JobStatus.RUNNING, attempt_increment=1)
        store.transition(job["id"], JobStatus.SUCCEEDED, output={"images": [ref.to_dict()], "seed": 1})
        image = http.get(f"/v1/jobs/{job['id']}").json()["output"]["images"][0]
    assert image["url"].startswith(queued_env["VISIONQ_STORAGE_PUBLIC_URL"] + "/")
    fetched = httpx.get(image["url"], timeout=30)
    assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == image["sha256"]
