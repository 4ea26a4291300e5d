"""The HTTP gateway end to end: a real `visionq gateway` (uvicorn), a real worker with tiny
models, local storage (the default setup: outputs are served by the gateway's signed links)."""
from __future__ import annotations

import base64
import hashlib
import json
import signal
import socket
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from standardwebhooks.webhooks import Webhook

from producer.gateway.keys import KeyStore, NewKey
from producer.redis_server import RedisServer
from tests.support.gateway import GatewayProcess
from tests.support.images import encode, scene
from tests.support.receiver import Receiver
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.integration

WAIT = {"Prefer": "wait=60"}


def api(gateway: GatewayProcess, key: NewKey | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key.key}"} if key is not None else {}
    return httpx.Client(base_url=gateway.url, headers=headers, timeout=90)


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


def read_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[len("data: "):])))
    return events


def test_caption_submitted_and_waited_for_over_http(gateway: GatewayProcess, acme: NewKey, gateway_worker: WorkerProcess) -> None:
    with api(gateway, acme) as http:
        answer = http.post("/v1/jobs", json={"kind": "caption", "input": {"image": data_uri(encode(scene()))}},
                           headers=WAIT)
        assert answer.status_code == 201, answer.text
        record = answer.json()
        assert answer.headers["Location"] == f"/v1/jobs/{record['id']}"
        assert answer.headers["Preference-Applied"] == "wait=60"
        assert record["status"] == "succeeded" and record["tenant"] == "acme"
        assert isinstance(record["output"]["text"], str)
        assert http.get(answer.headers["Location"]).json() == record


def test_server_sent_events_follow_a_job_until_final(gateway: GatewayProcess, acme: NewKey, gateway_worker: WorkerProcess) -> None:
    with api(gateway, acme) as http:
        job = http.post("/v1/jobs", json={"kind": "generate", "input": {
            "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 6, "seed": 3}}).json()
        with http.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = read_events(stream)  # returns only because the server closes the stream
    names = [name for name, _ in events]
    assert names[0] == "job.snapshot" and events[0][1]["id"] == job["id"]
    assert names[-1] == "job.succeeded" and events[-1][1]["status"] == "succeeded"
    if events[0][1]["status"] != "running":
        assert "job.started" in names[1:-1]
    assert all(name in ("job.started", "job.progress") for name in names[1:-1])


def test_multipart_image_and_signed_output_links(gateway: GatewayProcess, acme: NewKey, gateway_worker: WorkerProcess) -> None:
    with api(gateway, acme) as http:
        answer = http.post(
            "/v1/jobs", headers=WAIT,
            files={"image": ("scene.png", encode(scene(seed=2)), "image/png")},
            data={"request": json.dumps({"kind": "segment", "input": {"labels": ["sun", "roof"]}})},
        )
    assert answer.status_code == 201, answer.text
    record = answer.json()
    assert record["status"] == "succeeded", record
    overlay = record["output"]["overlay"]
    assert overlay["url"].startswith(f"{gateway.url}/v1/files/{record['id']}/")
    with httpx.Client(timeout=30) as browser:  # no key: the link carries its own signature
        image = browser.get(overlay["url"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert hashlib.sha256(image.content).hexdigest() == overlay["sha256"]
        probe = browser.head(overlay["url"])  # a size probe: the headers alone
        assert probe.status_code == 200 and probe.content == b""
        assert int(probe.headers["content-length"]) == len(image.content)
        assert browser.head(overlay["url"].replace("sig=", "sig=A")).status_code == 403
        for bad_sig in ("sig=A", "sig=AAAA&x=", "sig=%C3%A9&x="):  # any wrong signature is 403, malformed too
            tampered = browser.get(overlay["url"].replace("sig=", bad_sig))
            assert tampered.status_code == 403 and error_code(tampered) == "forbidden", tampered.text
        forged = overlay["url"].split("?")[0] + "?expires=99999999999&sig=" + "A" * 43
        assert browser.get(forged).status_code == 403 and error_code(browser.get(forged)) == "forbidden"
        expired = overlay["url"].split("?")[0] + "?expires=1&sig=" + "A" * 43
        assert browser.get(expired).status_code == 403


def test_idempotency_key_is_per_tenant_and_per_body(gateway: GatewayProcess, acme: NewKey, beta: NewKey) -> None:
    body = {"kind": "generate", "input": {"prompt": "a kite", "width": 64, "height": 64, "steps": 1}}
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    with api(gateway, acme) as http:
        first = http.post("/v1/jobs", json=body, headers=key)
        again = http.post("/v1/jobs", json=body, headers=key)
        other = http.post("/v1/jobs", json={**body, "priority": "high"}, headers=key)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert other.status_code == 409 and error_code(other) == "conflict"
    with api(gateway, beta) as http:
        theirs = http.post("/v1/jobs", json=body, headers=key)
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]


def test_idempotency_key_in_the_body_and_in_a_batch(gateway: GatewayProcess, acme: NewKey) -> None:
    """A batch's jobs have no header of their own: each may carry `idempotency_key` (as
    Client.submit_many's requests do); a single body may too."""
    body = {"kind": "generate", "input": {"prompt": "a kite", "width": 64, "height": 64, "steps": 1},
            "queue_timeout_s": 600}
    key, other = f"order-{uuid.uuid4().hex}", f"order-{uuid.uuid4().hex}"
    with api(gateway, acme) as http:
        first = http.post("/v1/jobs", json={**body, "idempotency_key": key})
        by_header = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
        assert first.status_code == 201 and by_header.status_code == 200
        assert by_header.json()["id"] == first.json()["id"] and first.json()["idempotency_key"] == key
        both = http.post("/v1/jobs", json={**body, "idempotency_key": other}, headers={"Idempotency-Key": key})
        assert both.status_code == 400 and "differ" in both.json()["error"]["message"]
        assert error_code(http.post("/v1/jobs", json={**body, "idempotency_key": ""})) == "invalid_input"
        batch = [{**body, "idempotency_key": key},  # the job above
                 {**body, "idempotency_key": other}, {**body, "idempotency_key": other},  # one new job, twice
                 {**body, "priority": "high", "idempotency_key": key},  # the key with another body
                 {**body, "idempotency_key": 7}]
        answer = http.post("/v1/jobs/batch", json={"jobs": batch})
        assert answer.status_code == 200, answer.text
        held, new, again, conflict, bad = answer.json()["jobs"]
        assert held["id"] == first.json()["id"]
        assert new["id"] == again["id"] != held["id"] and new["idempotency_key"] == other
        assert conflict["error"]["code"] == "conflict" and held["id"] in conflict["error"]["message"]
        assert bad["error"]["code"] == "invalid_input"
        repeated = http.post("/v1/jobs/batch", json={"jobs": batch[:2]}).json()["jobs"]
        assert [j["id"] for j in repeated] == [held["id"], new["id"]]
        for job_id in (held["id"], new["id"]):
            http.post(f"/v1/jobs/{job_id}/cancel")


def test_tenants_see_only_their_own_jobs(gateway: GatewayProcess, acme: NewKey, beta: NewKey) -> None:
    with api(gateway, acme) as http:
        mine = http.post("/v1/jobs", json={"kind": "generate", "input": {"prompt": "a boat", "width": 64,
                                                                           "height": 64, "steps": 1}}).json()
    unknown_id = uuid.uuid4().hex
    with api(gateway, beta) as http:
        for method, path in (("GET", "/v1/jobs/{}"), ("POST", "/v1/jobs/{}/cancel"), ("GET", "/v1/jobs/{}/events")):
            answer = http.request(method, path.format(mine["id"]))
            assert answer.status_code == 404 and error_code(answer) == "not_found", (method, path)
            # Not a byte apart from an unknown id's answer: the id reveals nothing.
            unknown = http.request(method, path.format(unknown_id))
            assert unknown.status_code == 404
            assert answer.text.replace(mine["id"], "ID") == unknown.text.replace(unknown_id, "ID"), (method, path)
        assert mine["id"] not in [j["id"] for j in http.get("/v1/jobs?limit=100").json()["jobs"]]
    with api(gateway, acme) as http:
        assert mine["id"] in [j["id"] for j in http.get("/v1/jobs?limit=100").json()["jobs"]]


def test_inputs_a_tenant_may_not_name(gateway: GatewayProcess, acme: NewKey) -> None:
    with api(gateway, acme) as http:
        for image in ("file:///etc/passwd", "s3://any-bucket/tenants/acme/x.png"):
            answer = http.post("/v1/jobs", json={"kind": "caption", "input": {"image": image}})
            assert answer.status_code == 400 and error_code(answer) == "invalid_input", image


def test_listing_pages_newest_first_with_filters(gateway: GatewayProcess, gateway_keys: KeyStore) -> None:
    lister = gateway_keys.create(f"lister-{uuid.uuid4().hex[:6]}")
    with api(gateway, lister) as http:
        ids = [http.post("/v1/jobs", json={"kind": kind, "input": {"prompt": "p", "width": 64, "height": 64, "steps": 1}}
                         if kind == "generate" else {"kind": kind, "input": {"image": data_uri(encode(scene()))}}).json()["id"]
               for kind in ("generate", "caption", "generate")]
        first = http.get("/v1/jobs", params={"limit": 2}).json()
        assert [j["id"] for j in first["jobs"]] == ids[:0:-1]
        rest = http.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
        assert [j["id"] for j in rest["jobs"]] == ids[:1] and rest["next_cursor"] is None
        captions = http.get("/v1/jobs", params={"kind": "caption"}).json()["jobs"]
        assert [j["id"] for j in captions] == [ids[1]]
        assert http.get("/v1/jobs", params={"limit": 0}).status_code == 400
        assert http.get("/v1/jobs", params={"cursor": "x"}).status_code == 400


def test_batch_answers_each_job_in_order(gateway: GatewayProcess, acme: NewKey) -> None:
    jobs = [
        {"kind": "generate", "input": {"prompt": "one", "width": 64, "height": 64, "steps": 1}},
        {"kind": "generate", "input": {"prompt": "x", "width": 65}},
        {"kind": "caption", "input": {"image": data_uri(encode(scene()))}},
    ]
    with api(gateway, acme) as http:
        answer = http.post("/v1/jobs/batch", json={"jobs": jobs})
        assert answer.status_code == 200, answer.text
        first, bad, last = answer.json()["jobs"]
        # The bad body refuses only itself: the jobs on either side of it are queued.
        assert bad["error"]["code"] == "invalid_input" and bad["error"]["message"].startswith("width 65")
        assert first["kind"] == "generate" and first["input"]["prompt"] == "one" and last["kind"] == "caption"
        assert all(r["tenant"] == "acme" and r["status"] in ("queued", "running", "succeeded") for r in (first, last))
        listed = {j["id"] for j in http.get("/v1/jobs?limit=100").json()["jobs"]}
        assert {first["id"], last["id"]} <= listed
        assert error_code(http.post("/v1/jobs/batch", json={"jobs": []})) == "invalid_input"


def test_error_codes_and_bodies(gateway: GatewayProcess, acme: NewKey, gateway_keys: KeyStore) -> None:
    with api(gateway, None) as anonymous:
        assert error_code(anonymous.get("/v1/jobs")) == "unauthorized"
        unknown = anonymous.get("/v1/jobs", headers={"Authorization": "Bearer vq_nope"})
        assert unknown.status_code == 401
        assert unknown.headers["www-authenticate"].startswith("Bearer")  # RFC 9110: the scheme to use
    revoked = gateway_keys.create("acme")
    gateway_keys.revoke(revoked.key_id)
    with api(gateway, revoked) as http:
        assert http.get("/v1/queues").status_code == 401
    limited = gateway_keys.create("acme", rate=0.001)  # one submit, then the bucket refills in ~17 minutes
    with api(gateway, limited) as http:
        body = {"kind": "generate", "input": {"prompt": "x", "width": 64, "height": 64, "steps": 1}}
        assert http.post("/v1/jobs", json=body).status_code == 201
        refused = http.post("/v1/jobs", json=body)
        assert refused.status_code == 429 and error_code(refused) == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
    with api(gateway, acme) as http:
        cases = [
            (http.post("/v1/jobs", content=b"{", headers={"Content-Type": "application/json"}), 400, "invalid_input"),
            (http.post("/v1/jobs", json={"kind": "caption", "input": {"image": "ftp://x"}}), 400, "invalid_input"),
            (http.post("/v1/jobs", json={"kind": "generate", "input": {"prompt": "x"}, "extra": 1}), 400, "invalid_input"),
            (http.get("/v1/jobs/not-an-id"), 404, "not_found"),
            (http.get(f"/v1/jobs/{uuid.uuid4().hex}"), 404, "not_found"),
            (http.get("/v1/nothing-here"), 404, "not_found"),
            (http.post("/v1/jobs", content=b"x", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
            # A lone surrogate, escaped in JSON: refused, never a job no answer can hold.
            (http.post("/v1/jobs", content=b'{"kind": "generate", "input": {"prompt": "\\ud800"}}',
                       headers={"Content-Type": "application/json"}), 400, "invalid_input"),
            (http.post("/v1/jobs/batch", content=b'{"jobs": [{"kind": "segment", "input": {"labels": ["\\udc80"]}}]}',
                       headers={"Content-Type": "application/json"}), 400, "invalid_input"),
            (http.post("/v1/jobs", files={"request": ("r.json", b'{"kind": "generate", "input": {"prompt": "\xff"}}',
                                                      "application/json")}), 400, "invalid_input"),
            (http.post("/v1/jobs", files=[("request", (None, '{"kind": "caption"}', "application/json")),
                                          ("image", ("a.png", encode(scene()), "image/png")),
                                          ("image", ("b.png", encode(scene(seed=2)), "image/png"))]),
             400, "invalid_input"),
            (http.get(f"/v1/jobs/{uuid.uuid4().hex}/"), 404, "not_found"),  # no redirect built from Host
        ]
        for answer, status, code in cases:
            assert (answer.status_code, error_code(answer)) == (status, code), answer.text
    # A body declared over the cap is refused before a byte of it is sent (chunked bodies: tests/producer).
    status, body = raw_post(gateway.url, "/v1/jobs", {"Content-Type": "application/json",
                                                     "Content-Length": str(500 * 2**20)})
    assert status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"


def raw_post(base_url: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Headers only: what a server that reads the body first would wait on forever."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_unreachable_redis_is_503(gateway_env: dict[str, str], tmp_path: Path) -> None:
    with RedisServer(directory=tmp_path / "redis") as private:
        env = {**gateway_env, "VISIONQ_REDIS_URL": private.url}
        with GatewayProcess(env, tmp_path, "--no-auth") as process:
            private.stop()
            with httpx.Client(base_url=process.url, timeout=30) as http:
                ready = http.get("/readyz")
                assert ready.status_code == 503 and error_code(ready) == "unavailable"
                listing = http.get("/v1/jobs")
                assert listing.status_code == 503 and error_code(listing) == "unavailable"
                assert http.get("/healthz").status_code == 200  # the process itself is fine


def test_fleet_routes_and_metrics(gateway: GatewayProcess, acme: NewKey, gateway_worker: WorkerProcess) -> None:
    with api(gateway, acme) as http:
        workers = http.get("/v1/workers").json()
        assert any(w["pid"] == gateway_worker.pid for w in workers)
        queues = http.get("/v1/queues").json()
        assert set(queues) == {"caption", "segment", "generate"} and "total" in queues["caption"]
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json() == {"status": "ready"}
    with httpx.Client(base_url=gateway.url) as scraper:  # no key, like /healthz
        text = scraper.get("/metrics").text
    assert 'visionq_queue_depth{kind="caption",model="blip",priority="high"}' in text
    assert 'visionq_queue_oldest_age_seconds{kind="segment"}' in text
    assert any(line.startswith(('visionq_workers{role="model",state="ready"}', 'visionq_workers{role="model",state="busy"}'))
               for line in text.splitlines() if not line.endswith(" 0.0"))


def test_webhooks_are_signed_with_the_tenant_secret(
    gateway: GatewayProcess, acme: NewKey, gateway_env: dict[str, str], gateway_worker: WorkerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    receiver = Receiver().start()
    deliverer = WorkerProcess(gateway_env, tmp_path_factory.mktemp("gateway-deliverer"), ["webhooks", "--concurrency", "4"])
    deliverer.start()
    try:
        with api(gateway, acme) as http:
            job = http.post("/v1/jobs", headers=WAIT, json={
                "kind": "generate", "input": {"prompt": "a bell", "width": 64, "height": 64, "steps": 1},
                "webhook": receiver.url("/hook"),
            }).json()
        assert job["status"] == "succeeded"
        wait_until(lambda: receiver.on("/hook"), what="the webhook delivery")
        event = Webhook(acme.webhook_secret).verify(receiver.on("/hook")[0].body, receiver.on("/hook")[0].headers)
        assert event["type"] == "job.succeeded" and event["data"]["id"] == job["id"]
        assert event["data"]["tenant"] == "acme"
    finally:
        deliverer.stop()
        receiver.stop()


def test_every_followed_job_shares_one_redis_connection(
    gateway_env: dict[str, str], acme: NewKey, redis_server: RedisServer, tmp_path: Path,
) -> None:
    """Streams and waits hold no Redis connection of their own: a gateway process subscribes every
    job it follows on one connection, each job's channel once however many follow it, for as
    long as anyone does."""
    broker = redis.Redis.from_url(redis_server.url)
    prefix = gateway_env["VISIONQ_REDIS_PREFIX"]

    def subscribers() -> int:
        return sum(int(client["sub"]) > 0 for client in broker.client_list())

    # A model no worker here serves: the jobs stay queued, their streams open.
    body = {"kind": "caption", "model": "vit-gpt2", "input": {"image": data_uri(encode(scene(seed=4)))}}
    with GatewayProcess(gateway_env, tmp_path) as gateway, api(gateway, acme) as http:
        ids = [http.post("/v1/jobs", json=body).json()["id"] for _ in range(6)]
        before = subscribers()
        followed = [*ids, ids[0]]  # the first job twice
        opened = [http.stream("GET", f"/v1/jobs/{job_id}/events") for job_id in followed]
        lines = [stream.__enter__().iter_lines() for stream in opened]
        try:
            assert all(next(read) == "event: job.snapshot" for read in lines)
            channels = [f"{prefix}:events:{job_id}" for job_id in ids]
            # Subscribed right after the snapshot is sent (a change in between is read then).
            wait_until(lambda: dict(broker.pubsub_numsub(*channels)) == {c.encode(): 1 for c in channels}, 30,
                       "each followed job's channel subscribed once")
            assert subscribers() - before == 1
            http.post(f"/v1/jobs/{ids[1]}/cancel")
            events = [line for line in lines[1] if line.startswith("event: ")]
            assert events[-1] == "event: job.canceled"
            wait_until(lambda: broker.pubsub_numsub(channels[1]) == [(channels[1].encode(), 0)],
                       30, "the channel of a job no one follows any more unsubscribed")
            assert broker.pubsub_numsub(channels[0]) == [(channels[0].encode(), 1)]
            for stream in opened:  # every client gone at once
                stream.__exit__(None, None, None)
            wait_until(lambda: all(n == 0 for _, n in broker.pubsub_numsub(*channels)), 30,
                       "every channel unsubscribed once no one follows its job")
        finally:
            for stream in opened:
                stream.__exit__(None, None, None)
            for job_id in ids:
                http.post(f"/v1/jobs/{job_id}/cancel")


def test_one_tenants_open_streams_leave_other_tenants_theirs(
    gateway_env: dict[str, str], acme: NewKey, beta: NewKey, tmp_path: Path,
) -> None:
    """Each followed job holds a client connection and a share of the gateway's record reads: a
    tenant's share is capped, so its streams cannot take every other tenant's streams and waits."""
    env = {**gateway_env, "VISIONQ_GATEWAY_STREAMS_PER_TENANT": "2"}
    # A model no worker here serves: the job stays queued, its streams stay open.
    body = {"kind": "caption", "model": "vit-gpt2", "input": {"image": data_uri(encode(scene(seed=9)))}}
    with GatewayProcess(env, tmp_path) as gateway, api(gateway, acme) as a, api(gateway, beta) as b:
        mine, theirs = (http.post("/v1/jobs", json=body).json()["id"] for http in (a, b))
        opened = [a.stream("GET", f"/v1/jobs/{mine}/events") for _ in range(2)]
        responses = [stream.__enter__() for stream in opened]
        # Kept: a line iterator dropped half-read closes its connection, and the gateway its stream.
        lines = [response.iter_lines() for response in responses]
        try:
            for response, read in zip(responses, lines):
                assert response.status_code == 200 and next(read) == "event: job.snapshot"
            third = a.get(f"/v1/jobs/{mine}/events", timeout=10)
            assert third.status_code == 429 and error_code(third) == "rate_limited" and third.headers["Retry-After"]
            unapplied = a.get(f"/v1/jobs/{mine}", headers={"Prefer": "wait=1"}, timeout=10)
            assert unapplied.status_code == 200 and "preference-applied" not in unapplied.headers
            with b.stream("GET", f"/v1/jobs/{theirs}/events") as other:
                other_lines = other.iter_lines()
                assert other.status_code == 200 and next(other_lines) == "event: job.snapshot"
            assert b.get(f"/v1/jobs/{theirs}", headers={"Prefer": "wait=1"}).headers["preference-applied"] == "wait=1"
        finally:
            for stream in opened:
                stream.__exit__(None, None, None)

        def a_slot_is_free() -> bool:  # once the gateway saw the client leave
            return a.get(f"/v1/jobs/{mine}", headers={"Prefer": "wait=0"}).headers.get("preference-applied") == "wait=0"

        wait_until(a_slot_is_free, 30, "the closed streams' slots given back")
        a.post(f"/v1/jobs/{mine}/cancel")
        b.post(f"/v1/jobs/{theirs}/cancel")


def test_a_gateway_asked_to_stop_ends_its_streams_and_exits(
    gateway_env: dict[str, str], acme: NewKey, redis_server: RedisServer, tmp_path: Path,
) -> None:
    """SIGTERM ends the open event streams at once, cleanly (their clients open them again
    elsewhere), so the gateway exits: their keep-alives held it open for as long as their
    clients stayed."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks.store import JobStore

    body = {"kind": "caption", "model": "vit-gpt2", "input": {"image": data_uri(encode(scene(seed=8)))}}
    gateway = GatewayProcess(gateway_env, tmp_path).start()
    try:
        with api(gateway, acme) as http, ThreadPoolExecutor(1) as pool:
            job_id = http.post("/v1/jobs", json=body).json()["id"]
            with http.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
                lines = stream.iter_lines()
                assert next(lines) == "event: job.snapshot"
                rest = pool.submit(list, lines)  # until the server closes the stream; an error raises
                gateway.process.send_signal(signal.SIGTERM)
                assert not [line for line in rest.result(timeout=60) if line.startswith("event: ")]
            assert gateway.process.wait(timeout=60) is not None
    finally:
        gateway.stop()
        JobStore(redis.Redis.from_url(redis_server.url), ttl_s=60,
                 prefix=gateway_env["VISIONQ_REDIS_PREFIX"]).request_cancel(job_id)
