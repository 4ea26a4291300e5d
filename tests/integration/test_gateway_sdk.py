"""The SDK and the CLI through the gateway: the same methods, `Job`, exceptions and commands
as straight to Redis, with an API key and no Redis credentials."""
from __future__ import annotations

import base64
import json
import os
import uuid
from pathlib import Path

import pytest
from PIL import Image

from producer import Client, InvalidInput, JobNotFound
from producer.gateway.keys import KeyStore, NewKey
from producer.http_source import HttpJobSource
from tests.support.cli import run_visionq
from tests.support.gateway import GatewayProcess
from tests.support.tcp_proxy import TcpProxy
from tests.support.images import encode, scene
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.integration

TIMEOUT = 90


@pytest.fixture
def sdk(gateway: GatewayProcess, acme: NewKey) -> Client:
    return Client(api_url=gateway.url, api_key=acme.key)


def test_client_over_http_has_the_same_methods_and_job(sdk: Client, gateway_worker: WorkerProcess, tmp_path: Path) -> None:
    picture = tmp_path / "scene.png"
    picture.write_bytes(encode(scene()))
    captioned = sdk.caption(picture, max_new_tokens=8).wait(timeout=TIMEOUT)  # a path: uploaded as multipart
    assert captioned.status == "succeeded" and isinstance(captioned.output["text"], str)
    assert captioned.to_dict()["tenant"] == "acme"

    seen: list[str] = []
    generated = sdk.generate("a fox", width=64, height=64, steps=3, seed=5, priority="high")
    generated.wait(timeout=TIMEOUT, on_change=lambda job: seen.append(job.status))  # follows the event stream
    assert generated.status == "succeeded" and seen[-1] == "succeeded"
    assert generated.output["images"][0]["url"].startswith(sdk.jobs.address)
    assert sdk.get(generated.id).to_dict() == generated.refresh().to_dict()
    assert sdk.cancel(generated.id).status == "succeeded"  # final jobs stay as they are


def test_errors_over_http_are_the_sdk_exceptions(sdk: Client) -> None:
    with pytest.raises(JobNotFound) as raised:
        sdk.get("0" * 32)
    assert raised.value.code == "not_found"
    with pytest.raises(InvalidInput, match="width 65"):
        sdk.generate("a fox", width=65)
    with pytest.raises(InvalidInput, match="webhook_secret"):
        sdk.generate("a fox", webhook="https://example.com/hook", webhook_secret="whsec_x")
    with pytest.raises(TypeError, match="generate\\(\\) got an unexpected keyword argument 'kind'"):
        sdk.generate("a fox", kind="caption")


def test_the_environment_chooses_the_gateway(gateway: GatewayProcess, acme: NewKey, gateway_env: dict[str, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in gateway_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VISIONQ_API_URL", gateway.url)
    monkeypatch.setenv("VISIONQ_API_KEY", acme.key)
    assert isinstance(Client().jobs, HttpJobSource)  # both set: the gateway
    assert not isinstance(Client(redis_url=gateway_env["VISIONQ_REDIS_URL"]).jobs, HttpJobSource)  # explicit wins
    monkeypatch.delenv("VISIONQ_API_KEY")
    with pytest.raises(InvalidInput, match="VISIONQ_API_KEY"):
        Client()


def test_cli_through_the_gateway(gateway: GatewayProcess, acme: NewKey, gateway_worker: WorkerProcess,
                                 tmp_path: Path) -> None:
    # No Redis variable at all: everything goes through the gateway with the key.
    env = {"VISIONQ_API_URL": gateway.url, "VISIONQ_API_KEY": acme.key}
    submitted = run_visionq("submit", "generate", "a kite", "--width", "64", "--height", "64", "--steps", "2",
                            "--wait", "--json", env=env)
    assert submitted.returncode == 0, submitted.stderr
    record = json.loads(submitted.stdout)
    assert record["status"] == "succeeded" and record["tenant"] == "acme"
    status = run_visionq("status", record["id"], "--json", env=env)
    assert json.loads(status.stdout)["id"] == record["id"]
    canceled = run_visionq("cancel", record["id"], env=env)
    assert canceled.stdout == f"{record['id']} already succeeded: nothing to cancel\n"
    assert run_visionq("status", "0" * 32, env=env).returncode == 3
    queues = json.loads(run_visionq("queues", "--json", env=env).stdout)
    assert set(queues) == {"caption", "segment", "generate"}
    assert queues["generate"]["models"]["sd"]["live_workers"] == 1  # through the gateway's /v1/queues
    workers = json.loads(run_visionq("workers", "--json", env=env).stdout)
    assert any(w["pid"] == gateway_worker.pid for w in workers)
    lines = tmp_path / "jobs.jsonl"
    lines.write_text(json.dumps({"kind": "generate", "input": {"prompt": "a", "width": 64, "height": 64,
                                                                "steps": 1}}) + '\n{"kind": "paint"}\n')
    many = run_visionq("submit-many", str(lines), env=env)
    assert many.returncode == 1, many.stderr
    job_id, error = many.stdout.splitlines()
    assert error.startswith("error invalid_input: line 2: kind 'paint'")
    assert json.loads(run_visionq("status", job_id, "--wait", "--json", env=env).stdout)["tenant"] == "acme"


def test_keys_commands(gateway_env: dict[str, str], gateway_keys: KeyStore) -> None:
    env = {k: v for k, v in gateway_env.items() if k in ("VISIONQ_REDIS_URL", "VISIONQ_REDIS_PREFIX")}
    created = run_visionq("keys", "create", "gamma", "--max-queued", "5", "--rate", "2.5", "--json", env=env)
    assert created.returncode == 0, created.stderr
    new = json.loads(created.stdout)
    assert set(new) == {"tenant", "key_id", "key", "webhook_secret"} and new["tenant"] == "gamma"
    assert new["webhook_secret"].startswith("whsec_") and gateway_keys.authenticate(new["key"]).tenant == "gamma"
    second = json.loads(run_visionq("keys", "create", "gamma", "--json", env=env).stdout)
    assert second["webhook_secret"] == new["webhook_secret"] and second["key"] != new["key"]
    listed = json.loads(run_visionq("keys", "list", "--json", env=env).stdout)
    mine = next(k for k in listed if k["key_id"] == new["key_id"])
    assert mine == {**mine, "tenant": "gamma", "max_queued": 5, "rate": 2.5} and "key" not in mine
    assert run_visionq("keys", "revoke", new["key_id"], env=env).returncode == 0
    assert gateway_keys.authenticate(new["key"]) is None
    assert run_visionq("keys", "revoke", new["key_id"], env=env).returncode == 3
    assert run_visionq("keys", "create", "bad/name", env=env).returncode == 2


def test_gateway_refuses_to_start_unsafely(gateway_env: dict[str, str], tmp_path: Path) -> None:
    empty = {**gateway_env, "VISIONQ_REDIS_PREFIX": "vq-no-keys"}
    no_keys = run_visionq("gateway", "--port", "0", env=empty, timeout=60)
    assert no_keys.returncode == 2 and "visionq keys create" in no_keys.stderr
    open_to_all = run_visionq("gateway", "--host", "0.0.0.0", "--no-auth", env=empty, timeout=60)
    assert open_to_all.returncode == 2 and "--no-auth" in open_to_all.stderr


def _sends(sdk: Client) -> list[tuple[str, int]]:
    """Each request the SDK makes, recorded as (path, jobs in a batch body or 1)."""
    sent: list[tuple[str, int]] = []
    request = sdk.jobs.http.request

    def recorded(method: str, url: str, **kwargs: object) -> object:
        body = kwargs.get("json")
        sent.append((str(url), len(body["jobs"]) if isinstance(body, dict) and "jobs" in body else 1))
        return request(method, url, **kwargs)

    sdk.jobs.http.request = recorded  # type: ignore[method-assign]
    return sent


def test_submit_many_through_the_gateway_sends_batches_and_uploads_in_turn(
    sdk: Client, gateway_worker: WorkerProcess, tmp_path: Path,
) -> None:
    picture = tmp_path / "scene.png"
    picture.write_bytes(encode(scene()))
    image = f"data:image/png;base64,{base64.b64encode(picture.read_bytes()).decode()}"  # travels in a batch
    generate = {"kind": "generate", "input": {"prompt": "a kite", "width": 64, "height": 64, "steps": 1}}
    requests = [
        {"kind": "caption", "input": {"image": image, "max_new_tokens": 3}, "priority": "high"},
        {"kind": "segment", "input": {"image": image, "threshold": 7}},  # refused by the gateway, in its slot
        {"kind": "paint"},  # refused before anything is sent
        {"kind": "caption", "input": {"image": str(picture), "max_new_tokens": 4}},  # a path: uploaded alone
        {**generate, "idempotency_key": f"many-{uuid.uuid4().hex}"},
        {"kind": "caption", "input": {"image": image}, "webhook_secret": "whsec_x"},  # not through a gateway
        generate,
    ]
    requests.insert(5, requests[4])  # the same key and body: the same job
    sent = _sends(sdk)
    results = sdk.submit_many(requests, chunk_size=2)
    assert [type(r).__name__ for r in results] == [
        "Job", "InvalidInput", "InvalidInput", "Job", "Job", "Job", "InvalidInput", "Job"]
    assert "threshold 7" in results[1].message and "paint" in results[2].message
    assert "webhook_secret" in results[6].message
    assert results[4].id == results[5].id
    # In request order: a batch of two, the upload alone, then batches of at most chunk_size.
    assert sent == [("/v1/jobs/batch", 2), ("/v1/jobs", 1), ("/v1/jobs/batch", 2), ("/v1/jobs/batch", 1)]
    for job in (results[0], results[3], results[4], results[7]):
        assert job.wait(timeout=TIMEOUT).status == "succeeded", job.error
        assert job.to_dict()["tenant"] == "acme"


def test_submit_many_through_the_gateway_halves_a_batch_too_large(sdk: Client) -> None:
    """Inline `data:` images can make a batch larger than the gateway takes in one body: it is sent
    again in halves, and only a single job too large is refused (in its slot)."""
    noise = Image.frombytes("RGB", (1200, 1150), os.urandom(1200 * 1150 * 3))
    data = encode(noise)  # incompressible: ~4 MB of PNG, ~5.5 MB as a data: URI
    inline = f"data:image/png;base64,{base64.b64encode(data).decode()}"
    requests = [{"kind": "caption", "input": {"image": inline, "max_new_tokens": n}, "priority": "low"}
                for n in range(1, 6)]
    sent = _sends(sdk)
    results = sdk.submit_many(requests)
    try:
        assert [type(r).__name__ for r in results] == ["Job"] * 5
        assert sent[0] == ("/v1/jobs/batch", 5) and len(sent) > 1
        assert sum(jobs for _, jobs in sent[1:]) == 5  # the halves carry each job once
    finally:
        for job in results:
            if not isinstance(job, Exception):
                job.cancel()


def test_submit_many_through_the_gateway_keeps_what_was_sent_when_the_gateway_goes_away(
    gateway: GatewayProcess, acme: NewKey,
) -> None:
    """As straight to Redis: the jobs of the sends that were answered are returned; the send whose
    answer was lost may have been stored (its idempotency keys make resending safe), the rest were
    not sent. The gateway unreachable at the first send raises, as one submit does."""
    proxy = TcpProxy(int(gateway.url.rsplit(":", 1)[1]))
    try:
        through = Client(api_url=proxy.url, api_key=acme.key)
        request = through.jobs.http.request

        def answer_lost_after_the_first(method: str, url: str, **kwargs: object) -> object:
            answer = request(method, url, **kwargs)
            proxy.lose_next_reply()
            return answer

        through.jobs.http.request = answer_lost_after_the_first  # type: ignore[method-assign]
        run = uuid.uuid4().hex
        requests = [{"kind": "generate", "input": {"prompt": f"kite {n}", "width": 64, "height": 64, "steps": 1},
                     "idempotency_key": f"{run}-{n}", "priority": "low"} for n in range(5)]
        results = through.submit_many(requests, chunk_size=2)
        assert [type(r).__name__ for r in results] == ["Job", "Job", "Unavailable", "Unavailable", "Unavailable"]
        assert all("may or may not have been stored" in r.message for r in results[2:4])
        assert results[4].message.startswith("not sent")
        again = Client(api_url=gateway.url, api_key=acme.key).submit_many(requests)  # safe: the same keys
        assert [job.id for job in again[:2]] == [job.id for job in results[:2]]
        assert len({job.id for job in again}) == 5
        for job in again:
            job.cancel()
        proxy.cut()
        with pytest.raises(ConnectionError):
            through.submit_many(requests)
    finally:
        proxy.close()
