"""Signed webhooks end to end: worker events -> visionq.webhooks -> delivery worker -> a real receiver."""
from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import uuid
from typing import Iterator

import pytest
from standardwebhooks.webhooks import Webhook

from producer import Client, InvalidInput
from tasks.kinds import JobKind
from tasks.record import utc_now
from tasks.status import JobStatus
from tasks.webhooks import DeliveryStatus, EventType, event_body
from tests.conftest import WEBHOOK_SECRET
from tests.support.cli import run_visionq
from tests.support.images import scene
from tests.support.receiver import Answer, Receiver
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


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A loopback port held bound but not listening: connections to it are refused
    and nobody else takes it until the block ends (then a receiver binds it)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


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
    # The delivery worker's heartbeat counts the attempts it made (`visionq workers`' jobs_done).
    wait_until(lambda: deliverer.heartbeat()["jobs_done"] >= len(events), what="deliveries counted")


def test_default_filter_is_the_final_events(client: Client, deliverer, receiver: Receiver) -> None:
    job = client.caption(scene(), webhook=receiver.url("/final")).wait(timeout=TIMEOUT)
    wait_until(lambda: receiver.on("/final"), what="delivery")
    assert [d.event["type"] for d in receiver.on("/final")] == ["job.succeeded"]
    wait_until(lambda: delivered(client, job.id), what="attempt recorded")
    attempt = delivered(client, job.id)[0]
    assert attempt["status"] == 200 and attempt["type"] == "job.succeeded" and attempt["latency_ms"] >= 0


def test_cli_submit_takes_a_webhook_and_its_events(
    client: Client, deliverer, receiver: Receiver, service_env: dict, tmp_path,
) -> None:
    from tests.support.images import encode

    image = tmp_path / "scene.png"
    image.write_bytes(encode(scene(seed=7)))
    submitted = run_visionq("submit", "caption", str(image), "--webhook", receiver.url("/cli"),
                            "--webhook-events", "job.started, job.succeeded", "--wait", "--timeout", str(TIMEOUT),
                            env=service_env)
    assert submitted.returncode == 0, submitted.stderr
    wait_until(lambda: len(receiver.on("/cli")) == 2, what="both events")
    assert [d.event["type"] for d in receiver.on("/cli")] == ["job.started", "job.succeeded"]
    refused = run_visionq("submit", "caption", str(image), "--webhook-events", "job.succeeded", env=service_env)
    assert refused.returncode == 2 and "--webhook-events chooses the events of --webhook URL: add --webhook" \
        in refused.stderr, refused.stderr


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
    with refusing_port() as port:
        jobs = [client.caption(scene(seed=i), webhook=f"http://localhost:{port}/late") for i in range(3)]
        for job in jobs:
            job.wait(timeout=TIMEOUT)
        wait_until(lambda: all(len(delivered(client, j.id)) >= 2 for j in jobs), what="failed attempts")
    late = Receiver(port=port).start()
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
    answered: list[int] = []

    def hang(delivery, nth) -> int:
        hanging.set()
        receiver.release.wait(30)
        answered.append(nth)
        return 200

    receiver.behaviour["/hang"] = hang
    slow_receivers = [client.caption(scene(seed=i), webhook=receiver.url("/hang")) for i in range(3)]
    others = [client.caption(scene(seed=10 + i)) for i in range(5)]
    for job in slow_receivers + others:
        assert job.wait(timeout=TIMEOUT).status == "succeeded"
    wait_until(hanging.is_set, what="a delivery reaching the hanging receiver")
    # Every job is done and no hanging receiver has answered yet (each hangs for 30 s):
    # the GPU worker never waited on one. The delivery worker cut them at its deadline.
    assert not answered
    wait_until(lambda: delivered(client, slow_receivers[0].id), what="the first attempt's end")
    assert "within the 2 s deadline" in delivered(client, slow_receivers[0].id)[0]["error"]
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
    # The deliverer checks the address again: a delivery stored around the submit check
    # (as a host name whose DNS answer changed after submit would be) is refused, not sent.
    delivery_id = f"msg_dns_{uuid.uuid4().hex}"
    body = event_body(EventType.SUCCEEDED, utc_now(), 1, {"id": "dns-check"})
    # create() queues the first attempt itself (one step with storing it)
    client.deliveries.create(delivery_id, "dns-check", "job.succeeded", f"http://127.0.0.2:{receiver.port}/dns", body)
    wait_until(lambda: client.deliveries.get(delivery_id).status is DeliveryStatus.DEAD, what="refused attempt")
    (attempt,) = client.deliveries.get(delivery_id).attempts
    assert attempt.status is None and "loopback" in attempt.error
    assert not receiver.on("/dns")


def test_a_host_that_does_not_resolve_is_retried_on_the_schedule(client: Client, deliverer, service_env: dict) -> None:
    """A DNS failure is no refusal for good (a blip, a record not yet published): the delivery goes
    through its schedule, as for a receiver that does not answer, then to the dead letters."""
    delivery_id = f"msg_nxdomain_{uuid.uuid4().hex}"
    body = event_body(EventType.SUCCEEDED, utc_now(), 1, {"id": "nxdomain"})
    client.deliveries.create(delivery_id, "nxdomain", "job.succeeded", "http://no-such-host.invalid/cb", body)
    wait_until(lambda: client.deliveries.get(delivery_id).status is DeliveryStatus.DEAD, what="exhausted schedule")
    delivery = client.deliveries.get(delivery_id)
    schedule_length = len(service_env["VISIONQ_WEBHOOK_SCHEDULE"].split(","))
    assert len(delivery.attempts) == schedule_length
    assert all("does not resolve" in attempt.error for attempt in delivery.attempts)


def test_webhook_options_are_validated(client: Client, receiver: Receiver) -> None:
    with pytest.raises(InvalidInput, match="unknown webhook event 'job.done'"):
        client.caption(scene(), webhook=receiver.url("/x"), webhook_events=["job.done"])
    with pytest.raises(InvalidInput, match="need a webhook URL"):
        client.caption(scene(), webhook_events=["job.started"])
    with pytest.raises(InvalidInput, match="whsec_"):
        client.caption(scene(), webhook=receiver.url("/x"), webhook_secret="whsec_not base64!")
    for weak in ("whsec_", "whsec_" + base64.b64encode(b"abc").decode()):
        with pytest.raises(InvalidInput, match="webhook_secret: .* must be at least 24 random bytes"):
            client.caption(scene(), webhook=receiver.url("/x"), webhook_secret=weak)


def test_per_job_secret(client: Client, deliverer, receiver: Receiver) -> None:
    from tasks.webhooks import generate_secret

    secret = generate_secret()
    client.caption(scene(), webhook=receiver.url("/own"), webhook_secret=secret).wait(timeout=TIMEOUT)
    wait_until(lambda: receiver.on("/own"), what="delivery")
    delivery = receiver.on("/own")[0]
    Webhook(secret).verify(delivery.body, delivery.headers)
    assert secret not in json.dumps(client.get(delivery.event["data"]["id"]).to_dict())


@pytest.mark.faults  # a worker killed or restarted: with the fault suite
def test_retries_survive_a_restart_of_the_delivery_worker(
    client: Client, service_env: dict, tmp_path, deliverer
) -> None:
    # A private deliverer whose retries wait long enough for the restart to land in between.
    env = {**service_env, "VISIONQ_WEBHOOK_SCHEDULE": "0,1.5,1.5,1.5,1.5,1.5,1.5,1.5"}
    deliverer.stop()
    mine = WorkerProcess(env, tmp_path, ["webhooks"]).start()
    late: Receiver | None = None
    try:
        with refusing_port() as port:
            job = client.caption(scene(), webhook=f"http://localhost:{port}/restart").wait(timeout=TIMEOUT)
            wait_until(lambda: delivered(client, job.id), what="first failed attempt")
            mine.stop()  # the retry is now only in Redis
        late = Receiver(port=port).start()
        mine = WorkerProcess(env, tmp_path, ["webhooks"]).start()
        wait_until(lambda: late.on("/restart"), what="delivery after restart")
        assert late.on("/restart")[0].event["data"]["id"] == job.id
    finally:
        mine.stop()
        if late is not None:
            late.stop()
        deliverer.start()


@pytest.mark.faults  # a worker killed or restarted: with the fault suite
def test_a_final_event_whose_worker_died_before_queueing_it_is_delivered_once(
    client: Client, service_env: dict, tmp_path, deliverer, receiver: Receiver
) -> None:
    # What a worker killed right after its final transition leaves: the job succeeded, no event queued.
    store = client.store
    record, _ = store.create(JobKind.GENERATE, {"prompt": "orphan"},
                             webhook={"url": receiver.url("/orphan"), "events": ["job.succeeded"]})
    assert store.advance(record.id, JobStatus.RUNNING, attempt_increment=1).applied
    assert store.advance(record.id, JobStatus.SUCCEEDED, completed_at=utc_now()).applied
    deliverer.stop()
    mine = WorkerProcess({**service_env, "VISIONQ_SWEEP_GRACE_S": "1"}, tmp_path, ["webhooks"]).start()
    try:
        wait_until(lambda: receiver.on("/orphan"), what="the final event of the orphaned job")
        (received,) = receiver.on("/orphan")
        event = Webhook(WEBHOOK_SECRET).verify(received.body, received.headers)
        assert event["type"] == "job.succeeded" and event["data"]["id"] == record.id
        assert store.redis.zcard(store.unpublished_key) == 0
        wait_until(lambda: client.deliveries.get(received.headers["webhook-id"]).status.value == "delivered",
                   what="the delivery recorded")
    finally:
        mine.stop()
        deliverer.start()
    assert len(receiver.on("/orphan")) == 1


@pytest.mark.faults  # a receiver down: with the fault suite
def test_receiver_down_longer_than_the_schedule_is_dead_then_replayed_once(
    client: Client, deliverer, service_env: dict
) -> None:
    with refusing_port() as port:
        job = client.caption(scene(), webhook=f"http://localhost:{port}/down").wait(timeout=TIMEOUT)

        def dead_letter() -> dict | None:
            dead = json.loads(run_visionq("webhooks", "dead", "--json", env=service_env).stdout)
            return next((d for d in dead if d["job_id"] == job.id), None)

        wait_until(dead_letter, what="the dead letter of an exhausted schedule")
        dead = dead_letter()
    schedule_length = len(service_env["VISIONQ_WEBHOOK_SCHEDULE"].split(","))
    assert dead["reason"].startswith(f"gave up after {schedule_length} attempts")
    assert len(dead["attempts"]) == schedule_length and all(a["status"] is None for a in dead["attempts"])
    receiver = Receiver(port=port).start()
    try:
        replay = run_visionq("webhooks", "replay", dead["id"], env=service_env)
        assert replay.returncode == 0, replay.stderr
        wait_until(lambda: client.deliveries.get(dead["id"]).status.value == "delivered", what="replayed delivery")
        (received,) = receiver.on("/down")  # delivered once
        event = Webhook(WEBHOOK_SECRET).verify(received.body, received.headers)  # the independent library
        assert received.headers["webhook-id"] == dead["id"]
        assert event["type"] == "job.succeeded" and event["data"]["id"] == job.id
        assert dead_letter() is None
    finally:
        receiver.stop()


def test_huge_retry_after_is_capped_and_remote_text_cleaned(client: Client, deliverer, receiver: Receiver) -> None:
    busy = Answer(503, {"Retry-After": "1e300"}, reason="Busy\x1b[2J\x07")
    receiver.behaviour["/busy"] = lambda delivery, nth: busy if nth == 1 else 200
    job = client.caption(scene(), webhook=receiver.url("/busy")).wait(timeout=TIMEOUT)
    # Capped at the schedule's longest delay (0.4 s here) instead of 1e300 s: the retry comes.
    wait_until(lambda: len(receiver.on("/busy")) == 2, what="the retry after Retry-After: 1e300")
    wait_until(lambda: len(delivered(client, job.id)) == 2, what="second attempt recorded")
    first, second = delivered(client, job.id)
    assert (first["status"], first["error"], second["status"]) == (503, "HTTP 503 Busy[2J", 200)
