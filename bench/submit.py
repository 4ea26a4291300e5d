"""submit: how many jobs one producer process submits per second, one call at a time.

Baseline: Celery's bare `send_task` of the same message (what one producer can
push into Redis at all). The SDK adds validation, the job record and, for
local bytes, the content-addressed input upload. No worker runs: the queues
only fill, and are deleted after each variant.
"""
from __future__ import annotations

import itertools
import os
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from bench.harness import BenchError, Plan, Stack, bench_image
from bench.hotpath import Counters, PerJob, per_job
from bench.jobs import CAPTION
from bench.report import Row, ScenarioResult, median
from producer.client import Client
from tasks.kinds import Priority
from tasks.schemas import request_to_message
from tasks.settings import Settings

NAME = "submit"
BASELINE = "bare Celery send_task"
BULK = "submits/s, SDK submit_many (bulk, chunks of 500)"


@dataclass
class Variant:
    figure: str
    storage: str  # file | s3
    make_call: Callable[[Client], Callable[[], Any]]


def run(stack: Stack, plan: Plan) -> ScenarioResult:
    image = bench_image()
    uris = {storage: stack.put_input(image, storage) for storage in ("file", "s3")}
    counter = itertools.count()

    def new_bytes() -> bytes:
        # Bytes after a JPEG's end marker are ignored by decoders but change its
        # digest: every submit uploads a new object, as distinct user images would.
        return image + next(counter).to_bytes(8, "big")

    def bare(client: Client) -> Callable[[], Any]:
        message = request_to_message(CAPTION.request(uris["file"], Settings().limits))

        def send() -> Any:
            job_id = uuid.uuid4().hex
            return client.celery.send_task(
                CAPTION.kind.task_name, kwargs={"job_id": job_id, "request": message},
                queue=CAPTION.kind.queue, task_id=job_id, priority=Priority.NORMAL.level,
            )
        return send

    variants = [
        Variant(f"submits/s, {BASELINE}", "file", bare),
        Variant("submits/s, SDK, image URI already stored", "file", lambda c: lambda: CAPTION.submit(c, uris["file"])),
        Variant("submits/s, SDK, same bytes (exists check)", "file", lambda c: lambda: CAPTION.submit(c, image)),
        Variant("submits/s, SDK, new bytes -> file:// upload", "file", lambda c: lambda: CAPTION.submit(c, new_bytes())),
        Variant("submits/s, SDK, same bytes (S3 HEAD)", "s3", lambda c: lambda: CAPTION.submit(c, image)),
        Variant("submits/s, SDK, new bytes -> S3 upload", "s3", lambda c: lambda: CAPTION.submit(c, new_bytes())),
    ]
    def bulk(client: Client) -> Callable[[], Any]:
        requests = [{"kind": CAPTION.kind.value, "input": {"image": uris["file"], **CAPTION.params}}
                    for _ in range(plan.submit_jobs)]

        def submit_all() -> Any:
            refused = [r for r in client.submit_many(requests) if isinstance(r, Exception)]
            if refused:
                raise BenchError(f"bulk submit refused {len(refused)} requests: {refused[0]}")
        return submit_all

    variants.append(Variant(BULK, "file", bulk))
    rates: dict[str, list[float]] = {v.figure: [] for v in variants}
    redis_cost: dict[str, list[PerJob]] = {v.figure: [] for v in variants}
    for _ in range(plan.repeats):  # interleaved, so drift hits every variant alike
        for variant in variants:
            prefix = f"bench-submit-{uuid.uuid4().hex[:8]}"
            call = variant.make_call(stack.client(prefix, variant.storage))
            calls = 1 if variant.figure == BULK else plan.submit_jobs
            if variant.figure != BULK:
                call()  # untimed: connections, the boto3 client, the first upload folder
            before = Counters.read(stack.redis_client, os.getpid())
            for _ in range(calls):
                call()
            cost = per_job(before, Counters.read(stack.redis_client, os.getpid()), plan.submit_jobs)
            rates[variant.figure].append(cost.jobs_per_s)
            redis_cost[variant.figure].append(cost)
            stack.drop_prefix(prefix)

    runs = f"{plan.repeats} x {plan.submit_jobs} submits"
    baseline = median(rates[variants[0].figure])
    rows = [Row(NAME, f"caption, {len(image) // 1000} KB JPEG", v.figure, median(rates[v.figure]), BASELINE,
                baseline, runs) for v in variants[1:]]
    bare_cost = redis_cost[variants[0].figure]
    for figure in ("submits/s, SDK, image URI already stored", BULK):
        cost = redis_cost[figure]
        label = "SDK single submit" if figure != BULK else "SDK submit_many"
        for name, unit in (("round_trips", "Redis round trips/submit"), ("commands", "Redis commands/submit"),
                           ("worker_cpu_ms", "producer CPU ms/submit")):
            rows.append(Row(NAME, "caption, image URI already stored", f"{unit}, {label}",
                            median([getattr(c, name) for c in cost]), BASELINE,
                            median([getattr(c, name) for c in bare_cost]), runs))
    notes = [
        f"one producer (this process), single calls in a loop, {plan.submit_jobs} per repeat, median of "
        f"{plan.repeats} repeats (variants interleaved); no worker consumes, Redis only queues.",
        f"baseline: {BASELINE} of the same message. SDK: validate, write the job record, send the message; "
        "with bytes it hashes them (sha256) and uploads to inputs/<sha256>.jpg unless that object exists. "
        "'new bytes' changes the image each call so every submit uploads; 'same bytes' finds it stored.",
        "submit_many: the same requests in one call (pipelined 500 per round trip). Redis round trips, "
        "commands and the producer's CPU per submit are INFO and /proc deltas over each repeat.",
        "S3 is moto's server in its own process on this machine: a real HTTP S3 API, far slower than S3 "
        "itself per request but with no network in between.",
    ]
    return ScenarioResult(NAME, rows, notes, data={"submits_per_s": rates})
