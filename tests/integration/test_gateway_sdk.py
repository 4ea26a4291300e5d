"""The SDK and the CLI through the gateway: the same methods, `Job`, exceptions and commands
as straight to Redis, with an API key and no Redis credentials."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from producer import Client, InvalidInput, JobNotFound
from producer.gateway.keys import KeyStore, NewKey
from producer.http_source import HttpJobSource
from tests.support.cli import run_visionq
from tests.support.gateway import GatewayProcess
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


def test_cli_through_the_gateway(gateway: GatewayProcess, acme: NewKey, gateway_worker: WorkerProcess) -> None:
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
