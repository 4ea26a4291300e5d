"""Signed webhooks end to end: worker events -> visionq.webhooks -> delivery worker -> a real receiver."""
from __future__ import annotations

import json
import threading
from typing import Iterator

import pytest
from standardwebhooks.webhooks import Webhook

from producer import Client, InvalidInput
from producer.redis_server import free_port
from tests.conftest import WEBHOOK_SECRET
from tests.support.cli import run_visionq
from tests.support.images import scene
from tests.support.receiver import Receiver
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.integration

TIMEOUT = 60


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def delivered(client: Client, job_id: str) -> list[dict]:
    return client.get(job_id).to_dict()["webhook_attempts"]


def test_events_are_signed_standard_webhooks(client: Client, deliverer, receiver: Receiver) -> None:
    job = client.generate("a fox", width=256, height=256, steps=30, seed=1, webhook=receiver.url("/all"),
                          webhook_events=["job.started", "job.progress", "job.succeeded"])
    job.wait(timeout=TIMEOUT)
    wait_until(lambda: any(d.event["type"] == "job.succeeded" for d in receiver.on("/all")), what="final event")
    verifier = Webhook(WEBHOOK_SECRET)
    events = []
    for delivery in receiver.on("/all"):
        events.append(verifier.verify(delivery.body, delivery.headers))  # the independent library
    types = [e["type"] for e in events]
    assert types[0] == "job.started" and types[-1] == "job.succeeded"
    assert set(types) <= {"job.started", "job.progress", "job.succeeded"}
    sequences = [e["sequence"] for e in sorted(events, key=lambda e: e["sequence"])]
    assert sequences == list(range(1, len(events) + 1))
    final = events[-1]["data"]
    assert final["id"] == job.id and final["status"] == "succeeded"
    assert final["output"] == job.output
    assert len({d.headers["webhook-id"] for d in receiver.on("/all")}) == len(events)


def test_default_filter_is_the_final_events(client: Client, deliverer, receiver: Receiver) -> None:
    job = client.caption(scene(), webhook=receiver.url("/final")).wait(timeout=TIMEOUT)
    wait_until(lambda: receiver.on("/final"), what="delivery")
    assert [d.event["type"] for d in receiver.on("/final")] == ["job.succeeded"]
    wait_until(lambda: delivered(client, job.id), what="attempt recorded")
    attempt = delivered(client, job.id)[0]
    assert attempt["status"] == 200 and attempt["type"] == "job.succeeded" and attempt["latency_ms"] >= 0


def test_failed_event_for_a_failed_job(client: Client, deliverer, receiver: Receiver) -> None:
    client.generate("word " * 300, width=64, height=64, webhook=receiver.url("/failed")).wait(timeout=TIMEOUT)
    wait_until(lambda: receiver.on("/failed"), what="delivery")
    event = receiver.on("/failed")[0].event
    assert event["type"] == "job.failed" and event["data"]["error"]["code"] == "invalid_input"


def test_500_then_200_is_retried_with_the_same_id(client: Client, deliverer, receiver: Receiver) -> None:
    receiver.behaviour["/flaky"] = lambda delivery, nth: 500 if nth == 1 else 200
    job = client.caption(scene(), webhook=receiver.url("/flaky")).wait(timeout=TIMEOUT)
    wait_until(lambda: len(delivered(client, job.id)) == 2, what="second attempt")
    tries = receiver.on("/flaky")
    assert len(tries) == 2
    assert tries[0].headers["webhook-id"] == tries[1].headers["webhook-id"]
    assert [a["status"] for a in delivered(client, job.id)] == [500, 200]


def test_receiver_down_then_up_loses_nothing(client: Client, deliverer) -> None:
    port = free_port()
    late = Receiver(port=port)
    jobs = [client.caption(scene(seed=i), webhook=f"http://localhost:{port}/late") for i in range(3)]
    for job in jobs:
        job.wait(timeout=TIMEOUT)
    wait_until(lambda: all(len(delivered(client, j.id)) >= 2 for j in jobs), what="failed attempts")
    late.start()
    try:
        wait_until(lambda: len(late.on("/late")) >= 3, what="deliveries after the receiver came up")
        ids = [d.headers["webhook-id"] for d in late.on("/late")]
        assert len(ids) == len(set(ids)) == 3  # each event accepted once
        assert {d.event["data"]["id"] for d in late.on("/late")} == {j.id for j in jobs}
        first = delivered(client, jobs[0].id)
        assert first[0]["status"] is None and "Connection" in first[0]["error"]
    finally:
        late.stop()


def test_hanging_receiver_does_not_hold_the_gpu_worker(client: Client, deliverer, receiver: Receiver) -> None:
    hanging = threading.Event()

    def hang(delivery, nth) -> int:
        hanging.set()
        receiver.release.wait(30)
        return 200

    receiver.behaviour["/hang"] = hang
    slow_receivers = [client.caption(scene(seed=i), webhook=receiver.url("/hang")) for i in range(3)]
    others = [client.caption(scene(seed=10 + i)) for i in range(5)]
    for job in slow_receivers + others:
        assert job.wait(timeout=TIMEOUT).status == "succeeded"
    assert hanging.is_set() and not receiver.release.is_set()  # jobs all finished while receivers hung
    receiver.release.set()


@pytest.mark.parametrize("status", [410, 400, 302])
def test_not_retried_and_dead_lettered_then_replayed(
    client: Client, deliverer, receiver: Receiver, service_env: dict, status: int
) -> None:
    path = f"/gone-{status}"
    receiver.behaviour[path] = lambda delivery, nth: status if nth == 1 else 200
    job = client.caption(scene(), webhook=receiver.url(path)).wait(timeout=TIMEOUT)
    wait_until(lambda: delivered(client, job.id), what="first attempt")
    wait_until(lambda: any(d["job_id"] == job.id for d in
                           json.loads(run_visionq("webhooks", "dead", "--json", env=service_env).stdout)),
               what="dead letter")
    dead = [d for d in json.loads(run_visionq("webhooks", "dead", "--json", env=service_env).stdout)
            if d["job_id"] == job.id]
    assert len(dead[0]["attempts"]) == 1 and "not retried" in dead[0]["reason"]
    assert dead[0]["body"]["data"]["id"] == job.id
    replay = run_visionq("webhooks", "replay", dead[0]["id"], env=service_env)
    assert replay.returncode == 0, replay.stderr
    wait_until(lambda: len(receiver.on(path)) == 2, what="replayed delivery")
    assert receiver.on(path)[1].headers["webhook-id"] == dead[0]["id"]
    assert [a["status"] for a in delivered(client, job.id)] == [status, 200]


def test_ssrf_refusals(client: Client, deliverer, receiver: Receiver) -> None:
    for url in ("http://10.0.0.1/cb", "http://169.254.169.254/latest", "http://[::1]/cb", "http://0177.0.0.1/cb",
                "http://2130706433/cb", "http://100.64.0.1/cb", "http://224.0.0.1/cb", "ftp://localhost/cb",
                "http://user@localhost/cb"):
        with pytest.raises(InvalidInput, match="refused"):
            client.caption(scene(), webhook=url)
    # "vm" resolves to 127.0.0.1 on these machines: refused after resolution, at delivery.
    job = client.caption(scene(), webhook=f"http://vm:{receiver.port}/dns").wait(timeout=TIMEOUT)
    wait_until(lambda: delivered(client, job.id), what="refused attempt")
    attempt = delivered(client, job.id)[0]
    assert attempt["status"] is None and "loopback" in attempt["error"]
    assert not receiver.on("/dns")


def test_webhook_options_are_validated(client: Client, receiver: Receiver) -> None:
    with pytest.raises(InvalidInput, match="unknown webhook event 'job.done'"):
        client.caption(scene(), webhook=receiver.url("/x"), webhook_events=["job.done"])
    with pytest.raises(InvalidInput, match="need a webhook URL"):
        client.caption(scene(), webhook_events=["job.started"])
    with pytest.raises(InvalidInput, match="whsec_"):
        client.caption(scene(), webhook=receiver.url("/x"), webhook_secret="whsec_not base64!")


def test_per_job_secret(client: Client, deliverer, receiver: Receiver) -> None:
    from tasks.webhooks import generate_secret

    secret = generate_secret()
    client.caption(scene(), webhook=receiver.url("/own"), webhook_secret=secret).wait(timeout=TIMEOUT)
    wait_until(lambda: receiver.on("/own"), what="delivery")
    delivery = receiver.on("/own")[0]
    Webhook(secret).verify(delivery.body, delivery.headers)
    assert secret not in json.dumps(client.get(delivery.event["data"]["id"]).to_dict())


def test_retries_survive_a_restart_of_the_delivery_worker(
    client: Client, service_env: dict, tmp_path, deliverer
) -> None:
    port = free_port()
    # A private deliverer whose retries wait long enough for the restart to land in between.
    env = {**service_env, "VISIONQ_WEBHOOK_SCHEDULE": "0,1.5,1.5,1.5,1.5,1.5,1.5,1.5"}
    deliverer.stop()
    mine = WorkerProcess(env, tmp_path, ["webhooks"]).start()
    late = Receiver(port=port)
    try:
        job = client.caption(scene(), webhook=f"http://localhost:{port}/restart").wait(timeout=TIMEOUT)
        wait_until(lambda: delivered(client, job.id), what="first failed attempt")
        mine.stop()  # the retry is now only in Redis
        late.start()
        mine = WorkerProcess(env, tmp_path, ["webhooks"]).start()
        wait_until(lambda: late.on("/restart"), what="delivery after restart")
        assert late.on("/restart")[0].event["data"]["id"] == job.id
    finally:
        mine.stop()
        late.stop()
        deliverer.start()
