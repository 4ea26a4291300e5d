"""events: what Celery task events (on by default, for Flower and `celery events`) cost.

The same bursts through two otherwise identical deployments: task events on (the
default) and off (VISIONQ_TASK_EVENTS=false, the baseline), producer included (it
sends task-sent). A stand-in model of 2 ms, so the per-job overhead is what shows.
Figures: jobs/s of a burst, and the worker's CPU time per job (its process's
utime + stime over the burst).
"""
from __future__ import annotations

import uuid

from bench.harness import Plan, Stack, WorkerSpec, bench_image, burst, process_cpu_s
from bench.jobs import standin
from bench.report import Row, ScenarioResult, median
from producer.client import Client
from tasks.settings import Settings

NAME = "events"
COST_MS = 2.0
BASELINE = "task events off"


def run(stack: Stack, plan: Plan) -> ScenarioResult:
    spec = standin(COST_MS)
    image = stack.put_input(bench_image())
    variants = {"on": "true", "off": "false"}
    rates: dict[str, list[float]] = {name: [] for name in variants}
    cpu_ms: dict[str, list[float]] = {name: [] for name in variants}
    setups = {}
    for name, flag in variants.items():
        prefix = f"bench-events-{name}-{uuid.uuid4().hex[:6]}"
        worker_spec = WorkerSpec(f"stand-in {COST_MS:g} ms, events {name}", "bench.standin_worker",
                                 ("--cost-ms", f"{COST_MS:g}"), (("VISIONQ_TASK_EVENTS", flag),))
        worker = stack.start([worker_spec], prefix=prefix)[0]
        client = Client(settings=Settings.from_env({**stack.env(prefix), "VISIONQ_TASK_EVENTS": flag}))
        spec.submit(client, image).wait(timeout=120)  # untimed: connections, the first upload folder
        setups[name] = (worker, client)
    try:
        for _ in range(plan.repeats):  # interleaved, so drift hits both alike
            for name, (worker, client) in setups.items():
                cpu_before = process_cpu_s(worker.pid)
                result = burst(client, lambda c: spec.submit(c, image), plan.jobs)
                rates[name].append(result.jobs_per_s)
                cpu_ms[name].append((process_cpu_s(worker.pid) - cpu_before) * 1000 / plan.jobs)
    finally:
        stack.stop([worker for worker, _ in setups.values()])
    runs = f"{plan.repeats} x {plan.jobs} jobs"
    rows = [
        Row(NAME, spec.case, "jobs/s, task events on (default)", median(rates["on"]), f"jobs/s, {BASELINE}",
            median(rates["off"]), runs),
        Row(NAME, spec.case, "worker CPU ms per job, task events on", median(cpu_ms["on"]),
            f"worker CPU ms per job, {BASELINE}", median(cpu_ms["off"]), runs),
    ]
    notes = [
        f"one worker each (stand-in {COST_MS:g} ms model), bursts of {plan.jobs} jobs, median of {plan.repeats} "
        "repeats, variants interleaved. Events on: the producer sends task-sent, the worker task-received, "
        "-started and -succeeded (one Redis PUBLISH each). VISIONQ_TASK_EVENTS=false on both sides turns them off.",
    ]
    return ScenarioResult(NAME, rows, notes, data={"jobs_per_s": rates, "worker_cpu_ms_per_job": cpu_ms})
