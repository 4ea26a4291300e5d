"""Bulk submit (`Client.submit_many`, `visionq submit-many`) against a real worker."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from producer import Client
from tasks.errors import InvalidInput
from tests.support.cli import run_visionq
from tests.support.images import encode, scene

pytestmark = pytest.mark.integration

TIMEOUT = 60


def test_submit_many_runs_every_good_request_and_refuses_the_bad_one_alone(client: Client) -> None:
    image = client.caption(encode(scene(), "PNG")).wait(timeout=TIMEOUT).to_dict()["input"]["image"]
    requests = [
        {"kind": "caption", "input": {"image": image, "max_new_tokens": 4}, "priority": "high"},
        {"kind": "segment", "input": {"image": image, "threshold": 7}},  # over the limit
        {"kind": "segment", "input": {"image": image, "labels": ["sun"]}, "idempotency_key": "bulk-1"},
        {"kind": "segment", "input": {"image": image, "labels": ["sun"]}, "idempotency_key": "bulk-1"},
        {"kind": "paint", "input": {}},
        {"kind": "generate", "input": {"prompt": "a red square", "width": 64, "height": 64, "steps": 1}},
    ]
    results = client.submit_many(requests, chunk_size=2)  # several chunks, one split by the bad item
    assert [type(r).__name__ for r in results] == ["Job", "InvalidInput", "Job", "Job", "InvalidInput", "Job"]
    assert "threshold 7" in results[1].message and "paint" in results[4].message
    assert results[2].id == results[3].id, "the idempotency key was not honoured within one bulk submit"
    for job in (results[0], results[2], results[5]):
        assert job.wait(timeout=TIMEOUT).status == "succeeded", job.error
    assert isinstance(results[1], InvalidInput)


def test_visionq_submit_many_prints_one_line_per_request(
    client: Client, service_env: dict[str, str], tmp_path: Path,
) -> None:
    lines = [
        json.dumps({"kind": "generate", "input": {"prompt": "one", "width": 64, "height": 64, "steps": 1}}),
        "{not json",
        "",  # a blank line is no request
        json.dumps({"kind": "generate", "input": {"prompt": "two", "width": 4000, "height": 64}}),
        json.dumps({"kind": "paint", "input": {"prompt": "x"}}),
        json.dumps({"kind": "generate", "input": {"prompt": "three", "width": 64, "height": 64, "steps": 1}}),
    ]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = run_visionq("submit-many", str(path), env=service_env)
    assert result.returncode == 1, result.stderr
    out = result.stdout.splitlines()
    assert len(out) == 5
    # Errors name the file's line, whatever refused it.
    assert out[1].startswith("error invalid_input: line 2: not JSON")
    assert out[2].startswith("error invalid_input: line 4: width 4000")
    assert out[3].startswith("error invalid_input: line 5: kind 'paint' is not one of")
    for job_id in (out[0], out[4]):
        assert client.get(job_id).wait(timeout=TIMEOUT).status == "succeeded"
    path.write_text(lines[0] + "\n")
    assert run_visionq("submit-many", str(path), env=service_env).returncode == 0


def test_a_job_redis_refuses_fails_alone_in_its_chunk(client: Client, redis_client) -> None:
    """A write Redis refuses (here its idempotency key holds a list: WRONGTYPE; out of memory
    alike) is that request's `unavailable`: the jobs sent beside it are stored and run."""
    image = client.caption(encode(scene(), "PNG")).wait(timeout=TIMEOUT).to_dict()["input"]["image"]
    planted = f"{client.settings.redis_prefix}:idem:bulk-wrongtype"
    redis_client.rpush(planted, "not a job id")
    try:
        requests = [{"kind": "caption", "input": {"image": image, "max_new_tokens": 3}},
                    {"kind": "caption", "input": {"image": image}, "idempotency_key": "bulk-wrongtype"},
                    {"kind": "caption", "input": {"image": image, "max_new_tokens": 2}}]
        results = client.submit_many(requests)
        alone = client.submit_many([requests[1], {"kind": "paint"}])  # the chunk's one job to store
    finally:
        redis_client.delete(planted)
    assert [type(r).__name__ for r in results] == ["Job", "Unavailable", "Job"]
    assert [type(r).__name__ for r in alone] == ["Unavailable", "InvalidInput"]
    assert results[1].code == "unavailable" and "WRONGTYPE" in results[1].message
    for job in (results[0], results[2]):
        assert job.wait(timeout=TIMEOUT).status == "succeeded", job.error


def test_redis_failing_between_chunks_keeps_the_jobs_already_stored(
    client: Client, service_env: dict[str, str],
) -> None:
    """The first chunk's jobs are returned, not lost in an exception; the failing chunk's request
    may have been stored, the later ones were not sent. Failing in the first chunk raises."""
    import redis

    from tasks.settings import Settings
    from tests.support.tcp_proxy import TcpProxy

    image = client.caption(encode(scene(), "PNG")).wait(timeout=TIMEOUT).to_dict()["input"]["image"]
    proxy = TcpProxy(int(service_env["VISIONQ_REDIS_URL"].rsplit(":", 1)[1].split("/")[0]))
    try:
        through = Client(settings=Settings.from_env(
            {**service_env, "VISIONQ_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"}))
        store_chunk = through._store

        def cut_after_first_chunk(prepared: list, **options: object) -> list:
            stored = store_chunk(prepared, **options)
            proxy.cut()
            return stored

        through._store = cut_after_first_chunk  # type: ignore[method-assign]
        requests = [{"kind": "caption", "input": {"image": image, "max_new_tokens": n}} for n in (2, 3, 4, 5)]
        requests.insert(2, {"kind": "paint"})  # in the chunk that fails, refused before it is sent: said still
        results = through.submit_many(requests, chunk_size=2)
        assert [type(r).__name__ for r in results] == ["Job", "Job", "InvalidInput", "Unavailable", "Unavailable"]
        assert "may or may not have been stored" in results[3].message
        assert results[4].message.startswith("not sent")
        assert client.get(results[0].id).wait(timeout=TIMEOUT).status == "succeeded"
        with pytest.raises(redis.ConnectionError):  # still cut: nothing stored, as one submit says it
            through.submit_many(requests, chunk_size=1)
    finally:
        proxy.close()
