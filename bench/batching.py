"""batching: jobs/s with micro-batching off (max_batch 1) vs on (8), at queue depths 1, 8 and 64.

Depth d: d jobs submitted back to back, timed until the last result; depth 1 is one
job at a time on an idle worker. Tiny models, caption and segment (2 labels).
"""
from __future__ import annotations

import uuid

from bench.harness import Plan, Stack, bench_image, burst, real_worker
from bench.jobs import CAPTION, SEGMENT
from bench.report import Row, ScenarioResult, median
from producer.client import Client
from producer.job import Job

NAME = "batching"
DEPTHS = (1, 8, 64)


def run(stack: Stack, plan: Plan) -> ScenarioResult:
    uri = stack.put_input(bench_image())
    rows: list[Row] = []
    data: dict[str, dict[str, dict[int, float]]] = {}
    depths = DEPTHS if plan.mode != "smoke" else (1, 4)
    for spec, kind in ((CAPTION, "caption"), (SEGMENT, "segment")):
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
                        per_s = [burst(client, submit, count).jobs_per_s for _ in range(repeats)]
                    rates[mode][depth] = median(per_s)
            finally:
                stack.stop(workers)
                stack.drop_prefix(prefix)
        for depth in depths:
            runs = f"{plan.repeats} x {depth if depth > 1 else plan.jobs} jobs"
            rows.append(Row(NAME, f"{spec.case}, queue depth {depth}", "jobs/s, batching on (max_batch 8)",
                            rates["on"][depth], "batching off (max_batch 1)", rates["off"][depth], runs))
        data[kind] = rates
    notes = [
        "batching on = the shipped defaults (VISIONQ_MAX_BATCH_CAPTION/SEGMENT=8, VISIONQ_MAX_WAIT_MS=5); off = 1. "
        "At depth 1 there is nothing to batch: the ratio shows what batching costs an idle worker.",
    ]
    return ScenarioResult(NAME, rows, notes, data={k: {m: {str(d): v for d, v in r.items()} for m, r in rates.items()}
                                                      for k, rates in data.items()})
