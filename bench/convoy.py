"""convoy: what other Python threads in the model's process cost a tiny model's batch.

A tiny model on a CPU is mostly Python: each torch call releases the interpreter lock and
takes it back, hundreds of times a batch. Any other thread of the process that wants the lock
then gets it and keeps it until it blocks or its switch interval ends, and every hand-over costs
both threads a wake-up (the convoy effect, CPython issue 7946). A worker's task threads (receipt,
transitions, decode, post-processing, result) are such threads.

Here the worker's pipeline runs one batch of 8 in a loop, as the batching ceiling does
(bench/batching.py), alone, then beside 8 threads that each run a short piece of pure Python
(a record's JSON, ~0.3 ms) and sleep 4 ms, about a task thread's pattern, in this process, then
the same 8 threads in a process of their own: the same work on the same cores, without the
shared lock. No Redis and no worker: a measure of the machine and the interpreter, so the
next host (a GPU box with more cores) can say how much a model process of its own would give.
"""
from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.batching import MAX_BATCH, MIN_TIMED_S, time_rounds
from bench.direct import load_tiny
from bench.harness import Plan, Stack, bench_image
from bench.jobs import CAPTION, SEGMENT
from bench.report import Row, ScenarioResult, median
from tasks.settings import Settings
from worker.images import decode_image
from worker.pipelines.base import input_side, no_progress

NAME = "convoy"
THREADS = 8  # a worker's task slots
WORK_S = 0.0003  # pure Python per wake-up, about a task thread's share of a job
SLEEP_S = 0.004  # then a wait (Redis, storage, the model)
_RECORD = {"id": "0" * 32, "status": "running", "metrics": {"queue_ms": 1.5, "batch_size": 8}, "labels": ["car"] * 20}


def churn(stop: Any, threads: int = THREADS) -> None:
    """`threads` threads that each run WORK_S of pure Python, then sleep SLEEP_S, until `stop` is set."""
    def one() -> None:
        while not stop.is_set():
            until = time.perf_counter() + WORK_S
            while time.perf_counter() < until:
                json.loads(json.dumps(_RECORD))
            time.sleep(SLEEP_S)

    workers = [threading.Thread(target=one, daemon=True) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def batch_rate(call: Callable[[], None], repeats: int, min_s: float) -> tuple[float, float]:
    """(jobs/s, this thread's CPU ms per job) of `call`, one batch of MAX_BATCH, over rounds
    lasting `min_s` or more; medians over `repeats`."""
    started = time.perf_counter()
    call()  # a measure of how long a round takes
    rounds = max(1, round(min_s / max(time.perf_counter() - started, 1e-6)))
    rates, cpu = [], []
    for _ in range(repeats):
        cpu_started = time.thread_time()
        rates.append(MAX_BATCH * rounds / time_rounds(call, rounds))
        cpu.append((time.thread_time() - cpu_started) * 1000 / (MAX_BATCH * rounds))
    return median(rates), median(cpu)


def beside(call: Callable[[], None], where: str, repeats: int, min_s: float) -> tuple[float, float]:
    """batch_rate with the churn running in this process ("threads") or in another ("process")."""
    if where == "threads":
        stop: Any = threading.Event()
        runner: Any = threading.Thread(target=churn, args=(stop,), daemon=True)
    else:
        context = multiprocessing.get_context("spawn")  # never fork a process that holds torch's threads
        stop = context.Event()
        runner = context.Process(target=churn, args=(stop,), daemon=True)
    runner.start()
    try:
        time.sleep(0.2 if where == "threads" else 1.0)  # the spawned interpreter starts up
        return batch_rate(call, repeats, min_s)
    finally:
        stop.set()
        runner.join(10)


def run(stack: Stack, plan: Plan) -> ScenarioResult:
    """Only the stack's tiny models: no service runs here."""
    min_s = MIN_TIMED_S if plan.mode != "smoke" else 0.02
    settings = Settings()
    image_bytes = bench_image()
    pipelines = load_tiny(stack.models_dir, [CAPTION.kind, SEGMENT.kind])
    rows: list[Row] = []
    data: dict[str, dict[str, float]] = {}
    for spec in (CAPTION, SEGMENT):
        pipeline = pipelines[spec.kind]
        request = spec.request("file:///bench/input.jpg", settings.limits)
        image = decode_image(image_bytes, settings.limits, input_side(pipeline))

        def one_batch() -> None:
            pipeline.run_batch([request] * MAX_BATCH, [image] * MAX_BATCH, no_progress)

        alone, alone_cpu = batch_rate(one_batch, plan.repeats, min_s)
        threads, threads_cpu = beside(one_batch, "threads", plan.repeats, min_s)
        process, process_cpu = beside(one_batch, "process", plan.repeats, min_s)
        runs = f"{plan.repeats} x {min_s:g} s or more"
        rows.append(Row(NAME, f"{spec.case}, model only, batch of {MAX_BATCH}",
                        f"jobs/s, {THREADS} Python threads beside it, same process", threads, "alone", alone, runs))
        rows.append(Row(NAME, f"{spec.case}, model only, batch of {MAX_BATCH}",
                        f"jobs/s, the same {THREADS} threads in another process", process, "alone", alone, runs))
        rows.append(Row(NAME, f"{spec.case}, model only, batch of {MAX_BATCH}",
                        "model thread CPU ms/job, threads in the same process", threads_cpu, "alone", alone_cpu, runs))
        data[spec.case] = {"alone": alone, "threads": threads, "process": process,
                           "alone_cpu_ms": alone_cpu, "threads_cpu_ms": threads_cpu, "process_cpu_ms": process_cpu}
    notes = [
        f"each of the {THREADS} threads: {WORK_S * 1000:g} ms of pure Python (a record's JSON), then a "
        f"{SLEEP_S * 1000:g} ms sleep, about a worker task thread's pattern; 'another process' runs the same "
        "threads outside the model's interpreter lock, on the same cores.",
        "a ratio well under 1 in the same process and near 1 in another says the interpreter lock, not the "
        "CPU, is what the worker's own threads cost its model on this host.",
    ]
    return ScenarioResult(NAME, rows, notes, data=data)
