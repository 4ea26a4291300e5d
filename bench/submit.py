"""submit: how many jobs one producer process submits per second, one call at a time.

Baseline: Celery's bare `send_task` of the same message (what one producer can
push into Redis at all). The SDK adds validation, the job record and, for
local bytes, the content-addressed input upload. No worker runs: the queues
only fill, and are deleted after each variant.
"""
from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from bench.harness import Plan, Stack, bench_image
from bench.jobs import CAPTION
from bench.report import Row, ScenarioResult, median
from producer.client import Client
from tasks.kinds import Priority
from tasks.schemas import request_to_message
from tasks.settings import Settings

NAME = "submit"
BASELINE = "bare Celery send_task"


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
    rates: dict[str, list[float]] = {v.figure: [] for v in variants}
    for _ in range(plan.repeats):  # interleaved, so drift hits every variant alike
        for variant in variants:
            prefix = f"bench-submit-{uuid.uuid4().hex[:8]}"
            call = variant.make_call(stack.client(prefix, variant.storage))
            call()  # untimed: connections, the boto3 client, the first upload folder
            started = time.perf_counter()
            for _ in range(plan.submit_jobs):
                call()
            rates[variant.figure].append(plan.submit_jobs / (time.perf_counter() - started))
            stack.drop_prefix(prefix)

    runs = f"{plan.repeats} x {plan.submit_jobs} submits"
    baseline = median(rates[variants[0].figure])
    rows = [Row(NAME, f"caption, {len(image) // 1000} KB JPEG", v.figure, median(rates[v.figure]), BASELINE,
                baseline, runs) for v in variants[1:]]
    notes = [
        f"one producer (this process), single calls in a loop, {plan.submit_jobs} per repeat, median of "
        f"{plan.repeats} repeats (variants interleaved); no worker consumes, Redis only queues.",
        f"baseline: {BASELINE} of the same message. SDK: validate, write the job record, send the message; "
        "with bytes it hashes them (sha256) and uploads to inputs/<sha256>.jpg unless that object exists. "
        "'new bytes' changes the image each call so every submit uploads; 'same bytes' finds it stored.",
        "S3 is moto's server in its own process on this machine: a real HTTP S3 API, far slower than S3 "
        "itself per request but with no network in between.",
    ]
    return ScenarioResult(NAME, rows, notes, data={"submits_per_s": rates})
