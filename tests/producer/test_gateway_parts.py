"""The gateway's pure parts, with nothing running."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from producer.gateway.bodies import BodyCap
from producer.gateway.events import events_between
from producer.gateway.files import FileLinks
from producer.gateway.keys import KEY_PATTERN, check_tenant
from producer.gateway.server import GatewayRefused, is_loopback, serve
from producer.http_errors import Forbidden, PayloadTooLarge, RateLimited, error_from_response
from tasks.errors import InvalidInput, JobNotFound
from tasks.kinds import JobKind
from tasks.record import JobRecord
from tasks.settings import Settings
from tasks.status import JobStatus
from tasks.storage import LocalStorage


def record(status: str, *, progress: float = 0.0, attempt: int = 1, started: bool = True) -> JobRecord:
    return JobRecord(id="a" * 32, kind=JobKind.CAPTION, status=JobStatus(status), created_at="2026-01-01T00:00:00Z",
                     started_at="2026-01-01T00:00:01Z" if started else None, progress=progress, attempt=attempt)


@pytest.mark.parametrize(("before", "after", "started_sent", "expected"), [
    (record("queued", started=False), record("running"), False, ["job.started"]),
    (record("running"), record("running", progress=0.5), True, ["job.progress"]),
    (record("running"), record("running", attempt=2), True, ["job.started"]),  # a redelivery
    (record("queued", started=False), record("succeeded"), False, ["job.started", "job.succeeded"]),
    (record("running"), record("failed"), True, ["job.failed"]),
    (record("queued", started=False), record("canceled", started=False), False, ["job.canceled"]),
    (record("running"), record("running"), True, []),
])
def test_events_between_records(before: JobRecord, after: JobRecord, started_sent: bool, expected: list[str]) -> None:
    assert [e.value for e in events_between(before, after, started_sent=started_sent)] == expected


def test_body_cap_refuses_a_chunked_body_as_it_passes_the_cap() -> None:
    chunks = [{"type": "http.request", "body": b"x" * 400, "more_body": True} for _ in range(10)]
    read: list[int] = []

    async def app(scope: dict, receive, send) -> None:  # reads the whole body, like a route would
        while True:
            message = await receive()
            read.append(len(message["body"]))
            if not message.get("more_body"):
                return

    async def receive() -> dict:
        return chunks.pop(0)

    with pytest.raises(PayloadTooLarge):
        asyncio.run(BodyCap(app, max_bytes=1000)({"type": "http", "headers": []}, receive, None))
    assert sum(read) <= 1000 and len(chunks) == 7  # the third chunk passed the cap: nothing more was read


def test_signed_file_links(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    (tmp_path / "jobs" / ("b" * 32)).mkdir(parents=True)
    (tmp_path / "jobs" / ("b" * 32) / "output-0.png").write_bytes(b"png")
    links = FileLinks(storage, b"k" * 32, expiry_s=3600)
    now = time.time()
    path = links.signed_path("b" * 32, "output-0.png", now=now)
    query = dict(part.split("=") for part in path.split("?")[1].split("&"))
    expires = int(query["expires"])
    assert expires >= now + 3600 and expires % 3600 == 0  # rounded up: the same URL for an hour
    assert links.local_file("b" * 32, "output-0.png", expires, query["sig"]).read_bytes() == b"png"
    with pytest.raises(Forbidden):
        links.local_file("b" * 32, "output-0.png", expires + 3600, query["sig"])  # signed for another expiry
    with pytest.raises(Forbidden):
        links.local_file("b" * 32, "output-0.png", 1, links.signature("b" * 32, "output-0.png", 1))  # expired
    with pytest.raises(InvalidInput):
        links.local_file("../etc", "passwd", 10**10, "x")
    record_dict = {"id": "b" * 32, "output": {"images": [{"uri": (tmp_path / "jobs" / ("b" * 32) / "output-0.png").as_uri(),
                                                          "url": None, "sha256": "s"}]}}
    linked = links.with_links(record_dict, "http://gw:8080/")
    assert linked["output"]["images"][0]["url"].startswith(f"http://gw:8080/v1/files/{'b' * 32}/output-0.png?expires=")


def test_key_and_tenant_shapes() -> None:
    assert check_tenant("acme-prod.eu_1") == "acme-prod.eu_1"
    for bad in ("", "-x", "a/b", "a" * 65, "a b"):
        with pytest.raises(InvalidInput):
            check_tenant(bad)
    assert KEY_PATTERN.fullmatch("vq_0123456789ab_" + "A" * 43)
    assert not KEY_PATTERN.fullmatch("vq_0123456789ab_" + "A" * 42)


def test_no_auth_only_on_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.com")
    with pytest.raises(GatewayRefused, match="--no-auth"):
        serve("0.0.0.0", 8080, no_auth=True, settings=Settings.from_env({}))


def test_error_answers_become_the_same_exceptions() -> None:
    assert isinstance(error_from_response(404, {"error": {"code": "not_found", "message": "no job"}}), JobNotFound)
    assert isinstance(error_from_response(400, {"error": {"code": "invalid_input", "message": "m"}}), InvalidInput)
    limited = error_from_response(429, {"error": {"code": "rate_limited", "message": "m"}}, "7")
    assert isinstance(limited, RateLimited) and limited.retry_after_s == 7
    assert error_from_response(502, "<html>").code.value == "internal"


def test_images_for_the_gateway(tmp_path: Path) -> None:
    from PIL import Image

    from producer.http_source import image_for_gateway

    picture = tmp_path / "p.png"
    picture.write_bytes(b"\x89PNG...")
    assert image_for_gateway("https://x/y.jpg") == ("https://x/y.jpg", None)
    assert image_for_gateway("s3://b/k.png") == ("s3://b/k.png", None)
    assert image_for_gateway(picture) == (None, b"\x89PNG...")
    assert image_for_gateway(picture.as_uri()) == (None, b"\x89PNG...")  # file:// is read here, uploaded
    assert image_for_gateway(b"abc") == (None, b"abc")
    uri, data = image_for_gateway(Image.new("RGB", (4, 4)))
    assert uri is None and data.startswith(b"\x89PNG")
    with pytest.raises(InvalidInput):
        image_for_gateway(str(tmp_path / "missing.png"))


def test_gateway_is_torch_free_and_keys_need_no_fastapi() -> None:
    import subprocess
    import sys

    code = (
        "import sys, producer.gateway.commands, producer.gateway.keys, producer.http_source\n"
        "assert 'fastapi' not in sys.modules, 'visionq keys must run without the [gateway] extra'\n"
        "import producer.gateway.app\n"
        "print(','.join(sorted(m for m in ('torch', 'transformers', 'diffusers', 'worker') if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_the_openapi_job_record_declares_every_field_of_the_record() -> None:
    """Generated OpenAPI clients expose what the schema declares: every field a record carries."""
    from producer.gateway.schemas import JobRecord as JobRecordSchema

    assert set(JobRecordSchema.model_fields) == set(JobRecord.__dataclass_fields__)


def test_the_documented_multipart_requests_match_the_openapi_document(tmp_path: Path) -> None:
    """docs/gateway.md sends `-F 'request={"kind": "caption"}'` beside the image part: the
    OpenAPI document must call that valid (generated clients and validators check against it)."""
    import jsonschema

    from producer.gateway.app import create_app

    settings = Settings.from_env({"VISIONQ_REDIS_URL": "redis://127.0.0.1:1/0",
                                  "VISIONQ_STORAGE_URL": tmp_path.as_uri()})  # the document needs neither
    document = create_app(settings).openapi()
    content = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    # The part's schema, with the document's components for its references to resolve in.
    part = {**content["multipart/form-data"]["schema"]["properties"]["request"], "components": document["components"]}
    for documented in ({"kind": "caption"}, {"kind": "segment", "input": {"labels": ["cat", "sky"]}}):
        jsonschema.validate(documented, part)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"input": {}}, part)  # still a job: its kind is required
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"kind": "caption", "priority": "urgent"}, part)  # its options typed as the JSON body's


@pytest.mark.integration
def test_fleet_metrics_tell_delivery_workers_from_model_workers(redis_client, key_prefix: str) -> None:
    """A webhook delivery worker beats like a model worker; `visionq_workers` says which is which."""
    import json

    from producer.gateway.metrics import render_metrics
    from tasks.heartbeats import DELIVERY_WORKER_KINDS, announce

    for name, kinds in (("gpu-1", ["caption"]), ("gpu-2", ["segment"]), ("hooks-1", DELIVERY_WORKER_KINDS)):
        announce(redis_client, key_prefix, name, json.dumps({"name": name, "state": "ready", "kinds": kinds}))
    lines = [line for line in render_metrics(redis_client, key_prefix).decode().splitlines()
             if line.startswith("visionq_workers{")]
    assert 'visionq_workers{role="model",state="ready"} 2.0' in lines, lines
    assert 'visionq_workers{role="webhooks",state="ready"} 1.0' in lines, lines


def test_a_loading_workers_heartbeat_matches_the_documented_shape() -> None:
    """/v1/workers lists workers still loading their models: their heartbeat has no kinds yet."""
    from producer.gateway.schemas import WorkerHeartbeat
    from worker.heartbeat import Heartbeat, _memory_mb

    loading = Heartbeat(None, "p", "visionq-cpu-1@host", {"device": "cpu", "gpu": None, "restarts": 0})  # type: ignore[arg-type]
    state = {**loading.state, "updated_at": loading.state["started_at"], "memory_mb": _memory_mb()}
    assert WorkerHeartbeat.model_validate(state).kinds == []


@pytest.mark.parametrize(("prefer", "seconds"), [
    ("wait=5", 5), ("WAIT=5", 5), ("respond-async, wait = 7", 7), ("handling=lenient; Wait=3", 3),
    ("wait=99", 60), ("wait=1.5", None), ("wait=-1", None), ("respond-async", None), (None, None),
])
def test_prefer_wait_is_read_as_rfc_7240_spells_it(prefer: str | None, seconds: int | None) -> None:
    """A preference's name is case-insensitive and "=" may have blanks around it (RFC 7240)."""
    from producer.gateway.jobs import _wait_seconds

    assert _wait_seconds(prefer) == seconds
