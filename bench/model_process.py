"""model_process: the shipped worker against the same worker with its models in a process of
their own (VISIONQ_MODEL_PROCESS=true, worker/model_process.py), burst by burst.

Tiny models, the shipped batching (max_batch 8): caption and segment at queue depth 64, and
tiny SD generate in bursts of `jobs`. The workers run side by side and take turns, so drift on
a shared machine hits them alike. The `convoy` scenario says what a process of its own could
give the model; this one says what the worker gets from it, end to end, against the two
targets the shipped worker misses on a small CPU host (docs/performance.md), measured here the
same way as there: for caption and segment the batching gain (max_batch 8 against 1, both with
a model process) next to the model-only ceiling (bench/batching.py), for generate the direct
loop (bench/overhead.py).
"""
from __future__ import annotations

import uuid

from bench.batching import MAX_BATCH, ceiling_row
from bench.direct import load_tiny, time_direct
from bench.harness import Plan, Stack, bench_image, burst, real_worker
from bench.jobs import CAPTION, GENERATE, SEGMENT, JobSpec
from bench.report import Row, ScenarioResult, median
from producer.client import Client
from producer.job import Job
from tasks.settings import Settings

NAME = "model_process"
DEPTH = 64  # as the batching scenario's deepest queue
IN_PROCESS, SPLIT, SPLIT_UNBATCHED = "in-process", "model process", "model process, max_batch 1"


def run(stack: Stack, plan: Plan) -> ScenarioResult:
    image_bytes = bench_image()
    uri = stack.put_input(image_bytes)
    rows: list[Row] = []
    data: dict[str, dict[str, float]] = {}
    cases = [(CAPTION, "caption", DEPTH), (SEGMENT, "segment", DEPTH), (GENERATE, "generate", plan.jobs)]
    if plan.mode == "smoke":  # what the test suite runs: one kind, end to end
        cases = [(CAPTION, "caption", 4)]
    pipelines = load_tiny(stack.models_dir, [spec.kind for spec, _, _ in cases])
    for spec, kind, jobs in cases:
        runs = f"{plan.repeats} x {jobs} jobs"
        if spec.needs_image:  # batched kinds: the batching gain against the model's
            rates = _paired(stack, spec, kind, uri, jobs, plan.repeats, (IN_PROCESS, SPLIT, SPLIT_UNBATCHED))
            ceiling = ceiling_row(NAME, spec, pipelines[spec.kind], uri, image_bytes, plan.repeats)
            rows += [
                Row(NAME, f"{spec.case}, bursts of {jobs}", "jobs/s, models in a process of their own",
                    rates[SPLIT], "in the worker's process (shipped)", rates[IN_PROCESS], runs),
                Row(NAME, f"{spec.case}, bursts of {jobs}, models in a process of their own",
                    f"jobs/s, batching on (max_batch {MAX_BATCH})", rates[SPLIT], "batching off (max_batch 1)",
                    rates[SPLIT_UNBATCHED], runs),
                ceiling,
            ]
            data[kind] = {**rates, "ceiling gain": ceiling.ratio}
        else:
            direct = (pipelines[spec.kind], spec.request(uri, Settings().limits))
            rates = _paired(stack, spec, kind, uri, jobs, plan.repeats, (IN_PROCESS, SPLIT), direct=direct)
            rows += [
                Row(NAME, f"{spec.case}, bursts of {jobs}", "jobs/s, models in a process of their own",
                    rates[SPLIT], "in the worker's process (shipped)", rates[IN_PROCESS], runs),
                Row(NAME, f"{spec.case}, bursts of {jobs}", "jobs/s, models in a process of their own",
                    rates[SPLIT], "direct: decode+model+encode", rates["direct"], runs),
            ]
            data[kind] = rates
    notes = [
        "all workers: VISIONQ_TORCH_THREADS=1 and the shipped max_batch (8 for caption and segment, 1 for "
        "generate), except the rows' 'max_batch 1'; the model process gets twice max_batch task slots "
        "(worker/process.py task_slots) and two batches in flight (worker/batching.py BATCHES_IN_FLIGHT).",
        "batching with the model process, as the batching scenario's target reads it: the on/off ratio "
        "over the model-only ceiling's ratio.",
    ]
    return ScenarioResult(NAME, rows, notes, data=data)


def _paired(stack: Stack, spec: JobSpec, kind: str, uri: str, jobs: int, repeats: int, modes: tuple[str, ...],
            direct: tuple | None = None) -> dict[str, float]:
    """Median jobs/s of each way (and of the direct loop, given its pipeline and request), bursts
    taking turns."""
    prefixes = {mode: f"bench-split-{uuid.uuid4().hex[:8]}" for mode in modes}
    clients = {mode: stack.client(prefixes[mode]) for mode in modes}

    def submit(client: Client) -> Job:
        return spec.submit(client, uri)

    workers = [stack.start([real_worker(stack.models_dir, kind, one_at_a_time=mode == SPLIT_UNBATCHED,
                                        model_process=mode != IN_PROCESS)], prefixes[mode])[0]
               for mode in modes]
    try:
        for mode in modes:
            burst(clients[mode], submit, 2)  # untimed warm-up
        samples: dict[str, list[float]] = {mode: [] for mode in (*modes, "direct")}
        for _ in range(repeats):
            if direct is not None:
                samples["direct"].append(time_direct(*direct, None, jobs).full_jobs_per_s)
            for mode in modes:
                samples[mode].append(burst(clients[mode], submit, jobs).jobs_per_s)
    finally:
        stack.stop(workers)
        for prefix in prefixes.values():
            stack.drop_prefix(prefix)
    return {mode: median(values) for mode, values in samples.items() if values}
