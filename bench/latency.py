"""latency: enqueue -> start and enqueue -> result visible, idle and at ~80 % load.

On the 20 ms stand-in (a fixed cost, so what the service adds is readable).
Idle: one job at a time. Loaded: open loop, Poisson arrivals at 0.8 x the
capacity measured just before, each job waited for on its own thread, so a
slow job never delays the next submit.
"""
from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from bench.direct import time_direct
from bench.harness import Plan, Sample, Stack, bench_image, burst, checked, one_at_a_time, standin_worker
from bench.jobs import standin
from bench.pipelines import FixedCostPipeline
from bench.report import Row, ScenarioResult, median, percentile
from producer.client import Client
from producer.job import Job
from tasks.settings import Settings

NAME = "latency"
COST_MS = 20.0
LOAD = 0.8
PERCENTILES = (50, 95, 99)


def run(stack: Stack, plan: Plan) -> ScenarioResult:
    worker, = stack.shared([standin_worker(COST_MS, one_at_a_time=False)])
    client = stack.client(worker.prefix)
    image = bench_image()
    uri = stack.put_input(image)
    spec = standin(COST_MS)

    def submit(c: Client) -> Job:
        return spec.submit(c, uri)

    direct = time_direct(FixedCostPipeline(COST_MS), spec.request(uri, Settings().limits), image, plan.jobs)
    direct_ms = median([d + r + e for d, r, e in zip(direct.decode_ms, direct.run_ms, direct.encode_ms)])
    burst(client, submit, 1)  # untimed
    capacities = [burst(client, submit, 2 * plan.jobs).jobs_per_s for _ in range(plan.repeats)]
    capacity = median(capacities)
    idle = one_at_a_time(client, submit, plan.latency_jobs)
    rate = LOAD * capacity
    loaded, achieved = open_loop(client, submit, rate, 2 * plan.latency_jobs)

    case = f"stand-in {COST_MS:g} ms model"
    rows = [Row(NAME, case, "capacity jobs/s (burst)", capacity, "direct: decode+model+encode",
                1000 / direct_ms, f"{plan.repeats} x {2 * plan.jobs} jobs")]
    distributions: dict[str, dict[str, float]] = {}
    for label, samples in (("idle", idle), (f"{LOAD:.0%} load", loaded)):
        for figure, values in (("queue_ms", [s.metric("queue_ms") for s in samples]),
                               ("enqueue -> wait returned ms", [s.wait_ms for s in samples])):
            points = {f"p{q}": percentile(values, q) for q in PERCENTILES}
            distributions[f"{label}: {figure}"] = {**points, "samples": len(values)}
            for q in PERCENTILES:
                if label == "idle":
                    baseline, baseline_value = "direct: decode+model+encode p50 ms", direct_ms
                else:
                    baseline, baseline_value = f"idle p{q}", distributions[f"idle: {figure}"][f"p{q}"]
                rows.append(Row(NAME, f"{case}, {label}", f"{figure} p{q}", points[f"p{q}"], baseline,
                                baseline_value, f"{len(values)} jobs"))
    notes = [
        f"capacity: median of {plan.repeats} bursts of {2 * plan.jobs} jobs on one stand-in worker (as shipped, "
        f"8 task threads). idle: {plan.latency_jobs} jobs one at a time. load: {2 * plan.latency_jobs} jobs, "
        f"Poisson arrivals (seeded) at {LOAD:.0%} of capacity = {rate:.1f}/s asked, {achieved:.1f}/s achieved.",
        "queue_ms is the record's created_at -> started_at: the job turns running when the model thread takes "
        "it, so it includes the input fetch and decode (~3 ms here). 'wait returned' is measured by the "
        "producer from just before the submit call to Job.wait returning (pub/sub wake-up and re-read included).",
        "p99 of a few dozen samples is close to their maximum: read it as 'the worst seen'.",
    ]
    data = {"capacity_jobs_per_s": capacities, "direct_ms_p50": direct_ms, "rate_asked_per_s": rate,
            "rate_achieved_per_s": achieved, "distributions": distributions}
    return ScenarioResult(NAME, rows, notes, data=data)


def open_loop(
    client: Client, submit: Callable[[Client], Job], rate_per_s: float, jobs: int, seed: int = 0,
) -> tuple[list[Sample], float]:
    """Submit `jobs` at Poisson arrival times of `rate_per_s`; returns the samples and the rate achieved.

    The exponential gaps are scaled to average exactly 1/rate: a hundred draws would
    otherwise miss the asked load by ~10 %, either way."""
    arrivals = random.Random(seed)
    gaps = [arrivals.expovariate(1.0) for _ in range(jobs)]
    scale = jobs / rate_per_s / sum(gaps)
    with ThreadPoolExecutor(max_workers=64, thread_name_prefix="bench-wait") as waiters:
        futures = []
        started = due = time.perf_counter()
        for gap in gaps:
            due += gap * scale
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            submitted = time.perf_counter()
            futures.append(waiters.submit(_wait, submit(client), submitted))
        achieved = jobs / (time.perf_counter() - started)
        return [future.result() for future in futures], achieved


def _wait(job: Job, submitted: float) -> Sample:
    record = checked(job.wait(timeout=300))
    return Sample((time.perf_counter() - submitted) * 1000, record)
