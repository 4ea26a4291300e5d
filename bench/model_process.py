"""model_process: the shipped worker against the same worker with its models in a process of
their own (VISIONQ_MODEL_PROCESS=true, worker/model_process.py), burst by burst.

Tiny models, the shipped batching (max_batch 8): caption and segment at queue depth 64, and
tiny SD generate in bursts of `slow_jobs`. Both workers run side by side and take turns, so
drift on a shared machine hits both alike. The `convoy` scenario says what a process of its
own could give the model; this one says what the worker gets from it, end to end.
"""
from __future__ import annotations

import uuid

from bench.harness import Plan, Stack, bench_image, burst, real_worker
from bench.jobs import CAPTION, GENERATE, SEGMENT, JobSpec
from bench.report import Row, ScenarioResult, median
from producer.client import Client
from producer.job import Job

NAME = "model_process"
DEPTH = 64  # as the batching scenario's deepest queue


def run(stack: Stack, plan: Plan) -> ScenarioResult:
    uri = stack.put_input(bench_image())
    rows: list[Row] = []
    data: dict[str, dict[str, float]] = {}
    cases = [(CAPTION, "caption", DEPTH), (SEGMENT, "segment", DEPTH), (GENERATE, "generate", plan.slow_jobs)]
    if plan.mode == "smoke":  # what the test suite runs: one kind, end to end
        cases = [(CAPTION, "caption", 4)]
    for spec, kind, jobs in cases:
        rates = _paired(stack, spec, kind, uri, jobs, plan.repeats)
        rows.append(Row(NAME, f"{spec.case}, bursts of {jobs}", "jobs/s, models in a process of their own",
                        rates["model process"], "in the worker's process (shipped)", rates["in-process"],
                        f"{plan.repeats} x {jobs} jobs"))
        data[kind] = rates
    notes = [
        "both workers: the shipped settings (max_batch 8 for caption and segment, 1 for generate), "
        "VISIONQ_TORCH_THREADS=1; the model process gets twice max_batch task slots "
        "(worker/process.py task_slots).",
    ]
    return ScenarioResult(NAME, rows, notes, data=data)


def _paired(stack: Stack, spec: JobSpec, kind: str, uri: str, jobs: int, repeats: int) -> dict[str, float]:
    """Median jobs/s of each way, bursts taking turns."""
    modes = {"in-process": False, "model process": True}
    prefixes = {mode: f"bench-split-{uuid.uuid4().hex[:8]}" for mode in modes}
    clients = {mode: stack.client(prefixes[mode]) for mode in modes}

    def submit(client: Client) -> Job:
        return spec.submit(client, uri)

    workers = [stack.start([real_worker(stack.models_dir, kind, one_at_a_time=False, model_process=split)],
                           prefixes[mode])[0]
               for mode, split in modes.items()]
    try:
        for mode in modes:
            burst(clients[mode], submit, 2)  # untimed warm-up
        samples: dict[str, list[float]] = {mode: [] for mode in modes}
        for _ in range(repeats):
            for mode in modes:
                samples[mode].append(burst(clients[mode], submit, jobs).jobs_per_s)
    finally:
        stack.stop(workers)
        for prefix in prefixes.values():
            stack.drop_prefix(prefix)
    return {mode: median(values) for mode, values in samples.items()}
