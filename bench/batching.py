"""batching: jobs/s with micro-batching off (max_batch 1) vs on (8), at queue depths 1, 8 and 64.

Depth d: d jobs submitted back to back, timed until the last result; depth 1 is one
job at a time on an idle worker. Tiny models, caption and segment (2 labels). The two
workers (on, off) run side by side and take turns, burst by burst (job by job at depth 1).
"""
from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
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
from worker.pipelines.base import input_side, no_progress

NAME = "batching"
DEPTHS = (1, 8, 64)
MAX_BATCH = 8  # the shipped VISIONQ_MAX_BATCH_CAPTION/SEGMENT
MIN_TIMED_S = 0.25  # each way, per repeat, of the model-only ceiling


def model_only_gain(pipeline: Any, request: Any, image_bytes: bytes, batch: int, repeats: int,
                    min_s: float = MIN_TIMED_S) -> tuple[float, float]:
    """Jobs/s of the model alone on `batch` copies of one job: one `run_batch` call of all of them,
    and one call per job (the same pipeline object, decoded image and request as a worker's).

    Each repeat times both ways in turn, each over enough rounds to last `min_s`: one batch of a
    tiny model takes a few milliseconds, and a ceiling timed on one made the same code's ratio
    swing by a fifth between runs."""
    settings = Settings()
    image = decode_image(image_bytes, settings.limits, input_side(pipeline))  # as a worker decodes it

    def one_batch() -> None:
        pipeline.run_batch([request] * batch, [image] * batch, no_progress)

    def one_by_one() -> None:
        for _ in range(batch):
            pipeline.run_batch([request], [image], no_progress)

    started = time.perf_counter()
    one_batch()  # untimed warm-up, and a first measure of how long a round takes
    one_by_one()
    rounds = max(1, math.ceil(min_s / max(time.perf_counter() - started, 1e-6)))
    batched, single = [], []
    for _ in range(repeats):
        batched.append(batch * rounds / time_rounds(one_batch, rounds))
        single.append(batch * rounds / time_rounds(one_by_one, rounds))
    return median(batched), median(single)


def ceiling_row(scenario: str, spec: Any, pipeline: Any, uri: str, image_bytes: bytes, repeats: int) -> Row:
    """The model-only batching ceiling of `spec`'s job (`model_only_gain`) as a printed row."""
    batched, single = model_only_gain(pipeline, spec.request(uri, Settings().limits), image_bytes, MAX_BATCH, repeats)
    return Row(scenario, f"{spec.case}, model only (the ceiling)", f"jobs/s, one batch of {MAX_BATCH}", batched,
               f"{MAX_BATCH} calls of 1", single, f"{repeats} x {MIN_TIMED_S:g} s or more")


def time_rounds(call: Callable[[], None], rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        call()
    return time.perf_counter() - started


def run(stack: Stack, plan: Plan) -> ScenarioResult:
    image_bytes = bench_image()
    uri = stack.put_input(image_bytes)
    rows: list[Row] = []
    data: dict[str, dict[str, dict[int, float]]] = {}
    batch_sizes: dict[str, list[float]] = {}
    depths = DEPTHS if plan.mode != "smoke" else (1, 4)
    pipelines = load_tiny(stack.models_dir, [JobKind.CAPTION, JobKind.SEGMENT])
    for spec, kind in ((CAPTION, "caption"), (SEGMENT, "segment")):
        rows.append(ceiling_row(NAME, spec, pipelines[spec.kind], uri, image_bytes, plan.repeats))
        # Both workers run side by side and are measured in turn, burst by burst (and at depth 1,
        # job by job): drift on a shared machine hits on and off alike, which is what lets a
        # difference of a few percent show.
        modes = {"off": True, "on": False}
        prefixes = {mode: f"bench-batching-{uuid.uuid4().hex[:8]}" for mode in modes}
        clients = {mode: stack.client(prefixes[mode]) for mode in modes}
        workers = [stack.start([real_worker(stack.models_dir, kind, one_at_a_time=serial)], prefixes[mode])[0]
                   for mode, serial in modes.items()]

        def submit(c: Client) -> Job:
            return spec.submit(c, uri)

        samples: dict[str, dict[int, list[float]]] = {mode: {depth: [] for depth in depths} for mode in modes}
        try:
            for mode in modes:
                burst(clients[mode], submit, 2)  # untimed warm-up
            for depth in depths:
                for _ in range(plan.repeats):
                    if depth == 1:  # jobs one after another, alternating between the two workers
                        walls: dict[str, float] = {mode: 0.0 for mode in modes}
                        count = max(1, 2 * plan.jobs // plan.repeats)
                        for _ in range(count):
                            for mode in modes:
                                walls[mode] += burst(clients[mode], submit, 1).wall_s
                        for mode in modes:
                            samples[mode][depth].append(count / walls[mode])
                        continue
                    for mode in modes:
                        timed = burst(clients[mode], submit, depth)
                        samples[mode][depth].append(timed.jobs_per_s)
                        if mode == "on" and depth == depths[-1]:
                            batch_sizes.setdefault(kind, []).extend(timed.metric("batch_size"))
            rates = {mode: {depth: median(v) for depth, v in by_depth.items()} for mode, by_depth in samples.items()}
        finally:
            stack.stop(workers)
            for prefix in prefixes.values():
                stack.drop_prefix(prefix)
        for depth in depths:
            runs = f"{plan.repeats} x {depth if depth > 1 else max(1, 2 * plan.jobs // plan.repeats)} jobs"
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
