"""gateway: what the HTTP gateway costs beside the SDK straight to Redis, in one run.

Submits: one producer thread, one call at a time, the same caption body (an https
image URI, so neither side uploads), over one keep-alive HTTP connection vs the
SDK; no worker consumes, Redis only queues. Latency: jobs on the 20 ms stand-in
worker, one at a time, from just before the submit to the final record in hand:
one `POST /v1/jobs` with `Prefer: wait=60` vs `Client.segment(...).wait()`.
"""
from __future__ import annotations

import base64
import os
import time
import uuid
from typing import Any

import httpx

from bench.harness import BenchError, Plan, Stack, bench_image, one_at_a_time, standin_worker
from bench.jobs import CAPTION, standin
from bench.report import Row, ScenarioResult, median, percentile
from producer.gateway.keys import KeyStore
from producer.gateway.launch import GatewayProcess

NAME = "gateway"
BASELINE = "SDK straight to Redis"
COST_MS = 20.0
IMAGE_URL = "https://images.example.com/cat.jpg"  # never fetched: no worker consumes the submit prefix


def run(stack: Stack, plan: Plan) -> ScenarioResult:
    worker, = stack.shared([standin_worker(COST_MS, one_at_a_time=False)])
    submit_prefix = f"bench-gw-{uuid.uuid4().hex[:8]}"
    rates: dict[str, list[float]] = {"http": [], "sdk": []}
    with _gateway(stack, submit_prefix) as (gateway, key):
        sdk = stack.client(submit_prefix)
        body = {"kind": "caption", "input": {"image": IMAGE_URL, **CAPTION.params}}
        with _http(gateway, key) as http:
            _post(http, body)  # untimed: the connection, the first job of each side
            CAPTION.submit(sdk, IMAGE_URL)
            for _ in range(plan.repeats):  # interleaved, so drift hits both alike
                rates["http"].append(_rate(plan.submit_jobs, lambda: _post(http, body)))
                rates["sdk"].append(_rate(plan.submit_jobs, lambda: CAPTION.submit(sdk, IMAGE_URL)))
    stack.drop_prefix(submit_prefix)

    image = "data:image/jpeg;base64," + base64.b64encode(bench_image(128)).decode()
    spec = standin(COST_MS)
    with _gateway(stack, worker.prefix) as (gateway, key), _http(gateway, key) as http:
        body = {"kind": spec.kind.value, "input": {"image": image, **spec.params}}
        _post(http, body, wait=True)  # untimed
        http_ms = []
        for _ in range(plan.latency_jobs):
            started = time.perf_counter()
            record = _post(http, body, wait=True)
            http_ms.append((time.perf_counter() - started) * 1000)
            if record["status"] != "succeeded":
                raise BenchError(f"gateway job {record['id']} ended {record['status']}: {record['error']}")
        sdk_ms = [s.wait_ms for s in one_at_a_time(stack.client(worker.prefix), lambda c: spec.submit(c, image),
                                                     plan.latency_jobs)]

    submits = f"{plan.repeats} x {plan.submit_jobs} submits"
    rows = [Row(NAME, "caption, https image URI", "submits/s, HTTP keep-alive", median(rates["http"]), BASELINE,
                median(rates["sdk"]), submits)]
    for q in (50, 99):
        rows.append(Row(NAME, f"stand-in {COST_MS:g} ms model, idle", f"submit -> final record p{q} ms, HTTP Prefer: wait",
                        percentile(http_ms, q), f"{BASELINE}, submit + Job.wait p{q}", percentile(sdk_ms, q),
                        f"{plan.latency_jobs} jobs each"))
    added = {f"p{q}": percentile(http_ms, q) - percentile(sdk_ms, q) for q in (50, 99)}
    notes = [
        f"submits: one thread, single calls in a loop, median of {plan.repeats} repeats of {plan.submit_jobs} "
        "(HTTP and SDK interleaved). The gateway adds per submit: the key lookup, the tenant's queued-jobs "
        "script and listing index in Redis, JSON in and out, and the HTTP round trip (httpx, one keep-alive "
        "connection, uvicorn in its own process on the same 2 cores).",
        f"latency: {plan.latency_jobs} jobs one at a time on an idle {COST_MS:g} ms stand-in worker; added by the "
        f"gateway: p50 {added['p50']:+.1f} ms, p99 {added['p99']:+.1f} ms. p99 of a few dozen samples is close "
        "to their maximum.",
    ]
    data = {"submits_per_s": rates, "http_ms": http_ms, "sdk_ms": sdk_ms, "added_ms": added}
    return ScenarioResult(NAME, rows, notes, data=data)


class _gateway:
    """A gateway on `prefix` with a fresh key, for the length of a `with` block."""

    def __init__(self, stack: Stack, prefix: str) -> None:
        self.stack = stack
        self.prefix = prefix

    def __enter__(self) -> tuple[GatewayProcess, str]:
        key = KeyStore(self.stack.redis_client, self.prefix).create("bench").key
        log_path = self.stack.workdir / f"gateway-{self.prefix}.log"
        self.process = GatewayProcess({**os.environ, **self.stack.env(self.prefix)}, log_path)
        try:
            self.process.start()
        except (RuntimeError, TimeoutError) as exc:
            raise BenchError(str(exc)) from None
        return self.process, key

    def __exit__(self, *exc: object) -> None:
        self.process.stop()


def _http(gateway: GatewayProcess, key: str) -> httpx.Client:
    return httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def _post(http: httpx.Client, body: dict[str, Any], *, wait: bool = False) -> dict[str, Any]:
    response = http.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"} if wait else {})
    if response.status_code != 201:
        raise BenchError(f"the gateway answered {response.status_code}: {response.text[:300]}")
    return response.json()


def _rate(count: int, call: Any) -> float:
    started = time.perf_counter()
    for _ in range(count):
        call()
    return count / (time.perf_counter() - started)
