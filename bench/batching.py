"""batching: jobs/s with micro-batching off (max_batch 1) vs on (8), at queue depths 1, 8 and 64.

Depth d: d jobs submitted back to back, timed until the last result; depth 1 is one
job at a time on an idle worker. Tiny models, caption and segment (2 labels).
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from bench.direct import load_tiny
from bench.harness import Plan, Stack, bench_image, burst, real_worker
from bench.jobs import CAPTION, SEGMENT
from bench.report import Row, ScenarioResult, median
from producer.client import Client
from producer.job import Job
from tasks.kinds import JobKind
from tasks.settings import Settings
from worker.images import decode_image
from worker.pipelines.base import no_progress

NAME = "batching"
DEPTHS = (1, 8, 64)
MAX_BATCH = 8  # the shipped VISIONQ_MAX_BATCH_CAPTION/SEGMENT


def model_only_gain(pipeline: Any, request: Any, image_bytes: bytes, batch: int, repeats: int) -> tuple[float, float]:
    """Jobs/s of the model alone on `batch` copies of one job: one `run_batch` call of all of them,
    and one call per job (the same pipeline object, decoded image and request as a worker's)."""
    settings = Settings()
    image = decode_image(image_bytes, settings.limits)
    pipeline.run_batch([request] * batch, [image] * batch, no_progress)  # untimed warm-up
    batched, single = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        pipeline.run_batch([request] * batch, [image] * batch, no_progress)
        batched.append(batch / (time.perf_counter() - started))
        started = time.perf_counter()
        for _ in range(batch):
            pipeline.run_batch([request], [image], no_progress)
        single.append(batch / (time.perf_counter() - started))
    return median(batched), median(single)


def run(stack: Stack, plan: Plan) -> ScenarioResult:
    image_bytes = bench_image()
    uri = stack.put_input(image_bytes)
    rows: list[Row] = []
    data: dict[str, dict[str, dict[int, float]]] = {}
    batch_sizes: dict[str, list[float]] = {}
    depths = DEPTHS if plan.mode != "smoke" else (1, 4)
    pipelines = load_tiny(stack.models_dir, [JobKind.CAPTION, JobKind.SEGMENT])
    for spec, kind in ((CAPTION, "caption"), (SEGMENT, "segment")):
        batched, single = model_only_gain(pipelines[spec.kind], spec.request(uri, Settings().limits), image_bytes,
                                          MAX_BATCH, plan.repeats)
        rows.append(Row(NAME, f"{spec.case}, model only (the ceiling)", f"jobs/s, one batch of {MAX_BATCH}",
                        batched, f"{MAX_BATCH} calls of 1", single, f"{plan.repeats} x {MAX_BATCH} jobs"))
        rates: dict[str, dict[int, float]] = {}
        for mode, one_at_a_time in (("off", True), ("on", False)):
            prefix = f"bench-batching-{uuid.uuid4().hex[:8]}"
            client = stack.client(prefix)
            workers = stack.start([real_worker(stack.models_dir, kind, one_at_a_time=one_at_a_time)], prefix)

            def submit(c: Client) -> Job:
                return spec.submit(c, uri)

            try:
                burst(client, submit, 2)  # untimed warm-up
                rates[mode] = {}
                for depth in depths:
                    repeats = plan.repeats if depth > 1 else 1
                    count = depth if depth > 1 else plan.jobs  # depth 1: jobs one after another
                    if depth == 1:
                        per_s = []
                        for _ in range(plan.repeats):
                            timed = [burst(client, submit, 1) for _ in range(max(1, count // plan.repeats))]
                            per_s.append(len(timed) / sum(b.wall_s for b in timed))
                    else:
                        bursts = [burst(client, submit, count) for _ in range(repeats)]
                        per_s = [b.jobs_per_s for b in bursts]
                        if mode == "on" and depth == depths[-1]:
                            batch_sizes[kind] = [size for b in bursts for size in b.metric("batch_size")]
                    rates[mode][depth] = median(per_s)
            finally:
                stack.stop(workers)
                stack.drop_prefix(prefix)
        for depth in depths:
            runs = f"{plan.repeats} x {depth if depth > 1 else plan.jobs} jobs"
            rows.append(Row(NAME, f"{spec.case}, queue depth {depth}", "jobs/s, batching on (max_batch 8)",
                            rates["on"][depth], "batching off (max_batch 1)", rates["off"][depth], runs))
        data[kind] = rates
    rows_note: list[str] = []
    for kind, sizes in batch_sizes.items():
        notes_sizes = f"{kind}: mean batch size {sum(sizes) / len(sizes):.1f} at depth {depths[-1]}"
        rows_note.append(notes_sizes)
    notes = [
        *rows_note,
        f"model only: the worker's pipeline object called here on one decoded image, one run_batch of "
        f"{MAX_BATCH} copies vs {MAX_BATCH} calls of one: the most batching can give; compare the "
        "service's gain at the deepest queue with it.",
        "batching on = the shipped defaults (VISIONQ_MAX_BATCH_CAPTION/SEGMENT=8, VISIONQ_MAX_WAIT_MS=5); off = 1. "
        "At depth 1 there is nothing to batch: the ratio shows what batching costs an idle worker.",
    ]
    return ScenarioResult(NAME, rows, notes, data={k: {m: {str(d): v for d, v in r.items()} for m, r in rates.items()}
                                                      for k, rates in data.items()})
