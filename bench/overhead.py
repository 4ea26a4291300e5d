"""overhead: the same jobs in a direct loop (the physical limit) and through the service.

Direct: the pipeline objects a worker would load, called here in a loop on the
same image bytes. Service: SDK submit -> Redis -> one worker -> storage -> job
record, timed from the first submit to the last `Job.wait` returning. Twice:
as shipped (default max_batch: several task threads, micro-batching) and with
max_batch 1 (one job at a time, like the direct loop). Then one job at a time
on an idle worker, to split each job's time into the parts its record reports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.direct import DirectRun, load_tiny, time_direct
from bench.harness import (
    Burst, Plan, Sample, Stack, Worker, bench_image, burst, one_at_a_time, real_worker, standin_worker,
)
from bench.jobs import CAPTION, GENERATE, SEGMENT, SEMANTIC, JobSpec, standin
from bench.pipelines import FixedCostPipeline
from bench.report import Row, ScenarioResult, Table, fmt, median
from producer.client import Client
from producer.job import Job
from tasks.settings import Settings
from worker.pipelines.base import Pipeline

NAME = "overhead"
STANDIN_COSTS_MS = (20.0, 200.0)
ALL_KINDS = "caption,segment,generate"


@dataclass
class Cell:
    """One case measured every way."""

    spec: JobSpec
    direct: list[DirectRun] = field(default_factory=list)
    shipped: list[Burst] = field(default_factory=list)  # as shipped: default max_batch
    serial: list[Burst] = field(default_factory=list)  # max_batch 1
    samples: list[Sample] = field(default_factory=list)  # one at a time, idle worker


def run(stack: Stack, plan: Plan) -> ScenarioResult:
    # Semantic segmentation costs quick mode ~20 s it cannot spare; full and smoke runs include it.
    tiny = [CAPTION, SEGMENT, *([SEMANTIC] if plan.mode != "quick" else []), GENERATE]
    models = stack.models_dir
    specs = [real_worker(models, ALL_KINDS, one_at_a_time=False), real_worker(models, ALL_KINDS, one_at_a_time=True)]
    for cost_ms in STANDIN_COSTS_MS:
        specs += [standin_worker(cost_ms, one_at_a_time=False), standin_worker(cost_ms, one_at_a_time=True)]
    workers = stack.shared(specs)

    image = bench_image()
    uri = stack.put_input(image)
    pipelines = load_tiny(models, sorted({spec.kind for spec in tiny}, key=lambda k: k.value))
    setups: list[tuple[JobSpec, Pipeline, Worker, Worker]] = [
        (spec, pipelines[spec.kind], workers[0], workers[1]) for spec in tiny
    ]
    for n, cost_ms in enumerate(STANDIN_COSTS_MS):
        setups.append((standin(cost_ms), FixedCostPipeline(cost_ms), workers[2 + 2 * n], workers[3 + 2 * n]))

    cells = [_measure(stack, plan, spec, pipeline, shipped, serial, image, uri)
             for spec, pipeline, shipped, serial in setups]
    return ScenarioResult(NAME, [row for cell in cells for row in _rows(cell, plan)],
                          _notes(cells, plan, len(image)), [_parts_table(cells)],
                          {cell.spec.case: _data(cell) for cell in cells})


def _measure(
    stack: Stack, plan: Plan, spec: JobSpec, pipeline: Pipeline, shipped: Worker, serial: Worker,
    image: bytes, uri: str,
) -> Cell:
    jobs = plan.slow_jobs if spec.slow else plan.jobs
    request = spec.request(uri, Settings().limits)
    image_bytes = image if spec.needs_image else None
    clients = stack.client(shipped.prefix), stack.client(serial.prefix)

    def submit(client: Client) -> Job:
        return spec.submit(client, uri)

    # Untimed first calls: lazy imports, first storage write, first batch shapes.
    time_direct(pipeline, request, image_bytes, 1)
    for client in clients:
        burst(client, submit, 1)
    cell = Cell(spec)
    for _ in range(plan.repeats):  # interleaved, so drift on a shared machine hits all three alike
        cell.direct.append(time_direct(pipeline, request, image_bytes, jobs))
        cell.shipped.append(burst(clients[0], submit, jobs))
        cell.serial.append(burst(clients[1], submit, jobs))
    cell.samples = one_at_a_time(clients[0], submit, jobs)
    return cell


def _rows(cell: Cell, plan: Plan) -> list[Row]:
    case, runs = cell.spec.case, f"{plan.repeats} x {cell.direct[0].jobs} jobs"
    model = median([d.model_jobs_per_s for d in cell.direct])
    full = median([d.full_jobs_per_s for d in cell.direct])
    shipped = median([b.jobs_per_s for b in cell.shipped])
    serial = median([b.jobs_per_s for b in cell.serial])
    direct_ms = [d + r + e for run in cell.direct for d, r, e in zip(run.decode_ms, run.run_ms, run.encode_ms)]
    return [
        Row(NAME, case, "jobs/s service, as shipped", shipped, "direct: model only", model, runs),
        Row(NAME, case, "jobs/s service, as shipped", shipped, "direct: decode+model+encode", full, runs),
        Row(NAME, case, "jobs/s service, max_batch 1", serial, "direct: decode+model+encode", full, runs),
        Row(NAME, case, "ms/job added, as shipped", 1000 / shipped - 1000 / model, "direct: model ms/job",
            1000 / model, runs),
        Row(NAME, case, "ms enqueue -> wait returned, idle", median([s.wait_ms for s in cell.samples]),
            "direct: decode+model+encode ms", median(direct_ms), f"p50 of {len(cell.samples)} jobs"),
    ]


PART_HEADERS = [
    "case", "direct decode", "direct model", "direct encode", "queue wait", "input", "run", "encode", "upload",
    "other", "record+wake", "enqueue->wait", "added", "ratio",
]


def _parts(cell: Cell) -> dict[str, float]:
    """p50 of each part, in ms, over the one-at-a-time jobs (and the direct jobs)."""
    samples = cell.samples

    def p50(name: str) -> float:
        return median([s.metric(name) for s in samples])

    # The job turns running when the model thread takes it, after its input was fetched
    # and decoded: the record's queue_ms includes input_ms. Split so the parts add up.
    queue_wait = [s.metric("queue_ms") - s.metric("input_ms") for s in samples]
    other = [s.metric("total_ms") - sum(s.metric(k) for k in ("queue_ms", "run_ms", "publish_ms")) for s in samples]
    parts = {
        "direct_decode_ms": median([x for run in cell.direct for x in run.decode_ms]),
        "direct_model_ms": median([x for run in cell.direct for x in run.run_ms]),
        "direct_encode_ms": median([x for run in cell.direct for x in run.encode_ms]),
        **{name: p50(name) for name in ("queue_ms", "input_ms", "run_ms", "encode_ms", "upload_ms",
                                         "publish_ms", "total_ms")},
        "queue_wait_ms": median(queue_wait),
        "other_ms": median(other),
        "record_and_wake_ms": median([s.wait_ms - s.metric("total_ms") for s in samples]),
        "wait_ms": median([s.wait_ms for s in samples]),
    }
    parts["direct_ms"] = parts["direct_decode_ms"] + parts["direct_model_ms"] + parts["direct_encode_ms"]
    parts["added_ms"] = parts["wait_ms"] - parts["direct_ms"]
    return parts


def _parts_table(cells: list[Cell]) -> Table:
    table = Table("overhead, one job at a time on an idle worker: p50 ms per part (job record metrics)",
                  PART_HEADERS)
    for cell in cells:
        p = _parts(cell)
        table.rows.append([cell.spec.case] + [fmt(p[k]) for k in (
            "direct_decode_ms", "direct_model_ms", "direct_encode_ms", "queue_wait_ms", "input_ms", "run_ms",
            "encode_ms", "upload_ms", "other_ms", "record_and_wake_ms", "wait_ms", "added_ms",
        )] + [f"{p['wait_ms'] / p['direct_ms']:.2f}"])
    return table


def _data(cell: Cell) -> dict[str, Any]:
    return {
        "direct_model_jobs_per_s": [d.model_jobs_per_s for d in cell.direct],
        "direct_full_jobs_per_s": [d.full_jobs_per_s for d in cell.direct],
        "service_shipped_jobs_per_s": [b.jobs_per_s for b in cell.shipped],
        "service_max_batch_1_jobs_per_s": [b.jobs_per_s for b in cell.serial],
        "shipped_batch_size_p50": median([x for b in cell.shipped for x in b.metric("batch_size")]),
        "parts_p50_ms": _parts(cell),
    }


def _notes(cells: list[Cell], plan: Plan, image_bytes: int) -> list[str]:
    batches = ", ".join(
        f"{c.spec.case.split(' (')[0]} {median([x for b in c.shipped for x in b.metric('batch_size')]):g}"
        for c in cells
    )
    return [
        f"direct: the worker's own pipeline objects called in a loop in the benchmark process (torch 1 thread, "
        f"as the workers), on the same {image_bytes // 1000} KB 512x512 JPEG decoded every time; "
        "'model only' times pipeline.run alone, 'decode+model+encode' adds decode_image and encode_png.",
        f"service: SDK submit (input already in storage) -> Redis -> one worker (1 torch thread) -> "
        f"local storage -> record; jobs/s = jobs / (first submit -> last Job.wait returned); medians of "
        f"{plan.repeats} bursts, direct and service interleaved, after one untimed job each.",
        "as shipped: default max_batch (caption and segment 8: eight task threads fetch, decode, encode and "
        "upload while the model thread runs, and compatible queued jobs share one forward pass); "
        f"median batch size seen: {batches}. max_batch 1: one job at a time, like the direct loop. "
        "ms/job added = 1000/(service jobs/s) - 1000/(direct model-only jobs/s): negative where micro-batching "
        "makes the service faster than calling the model one job at a time.",
        "stand-ins sleep for their cost (a GPU leaves the CPU free while it computes) and return a 64x64 image.",
        "parts table: one job at a time on an idle worker, p50 of each part. queue wait = queue_ms - input_ms "
        "(a job turns running when the model thread takes it, after its input is fetched and decoded, so the "
        "record's queue_ms includes input_ms); other = total_ms - (queue_ms+run+publish): record reads, the "
        "running transition, request parsing, the hand-over to the model thread; record+wake = Job.wait returned - "
        "completed_at: result.json, the final transition, the pub/sub wake-up and the client's re-read. "
        "Record timestamps have 1 ms resolution. added = enqueue->wait - direct decode+model+encode.",
        "The producer (this process) and the workers share the machine's cores.",
    ]
