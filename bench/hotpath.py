"""hotpath: what the service costs per job, next to a bare Celery worker on the same Redis.

Two workers, each measured alone, with task events on (the default) and off:
- visionq: the real runtime (bench/standin_worker.py) with a 0 ms stand-in model and a
  64 px input in local storage: fetch, decode, record, a 64 px PNG output, result.json;
- bare Celery: `tasks.app`'s configuration, same pool, concurrency, acks_late and events,
  running a no-op task (bench/bare_worker.py), fed by bare `send_task`.

For a burst of N jobs, from the first submit until every message is acknowledged,
per job: the worker process's CPU, and Redis's own counters: commands (`INFO
commandstats`), round trips (`total_reads_processed`: one per request read, a pipeline
counts once) and Redis CPU (`used_cpu_sys` + `used_cpu_user`). Both sides include
their producer's submits (single calls). Then, one job at a time on the idle worker,
enqueue -> start (visionq: the job's started_at, taken as the model takes it).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from bench.bare_worker import TASK_NAME, ready_key
from bench.harness import REPO, BenchError, Plan, Stack, bench_image, process_cpu_s, standin_worker
from bench.pipelines import STANDIN_KIND
from bench.report import Row, ScenarioResult, Table, fmt, median
from producer.client import Client
from producer.launch import child_env
from tasks.kinds import Priority, priority_list_key
from tasks.record import parse_time
from tasks.schemas import request_to_message, parse_request

NAME = "hotpath"
BARE_QUEUE = "bench.bare"
SLOTS = 2  # the visionq worker's task threads for a kind that never batches (worker/process.py)
POLL_S = 0.05


@dataclass
class Counters:
    commands: int
    reads: int
    redis_cpu_s: float
    worker_cpu_s: float
    at: float
    by_command: dict[str, tuple[int, float]]  # command -> (calls, usec inside Redis)

    @classmethod
    def read(cls, client: redis.Redis, pid: int) -> Counters:
        stats = client.info("commandstats")
        by_command = {k.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"]))
                      for k, v in stats.items() if k.startswith("cmdstat_")}
        cpu = client.info("cpu")
        # This process's own CPU from the clock with ns resolution; another's from /proc (10 ms ticks).
        own = time.process_time() if pid == os.getpid() else process_cpu_s(pid)
        return cls(sum(calls for calls, _ in by_command.values()), int(client.info("stats")["total_reads_processed"]),
                   float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]), own, time.perf_counter(), by_command)


@dataclass
class PerJob:
    jobs_per_s: float
    worker_cpu_ms: float
    commands: float
    round_trips: float
    redis_cpu_ms: float
    by_command: dict[str, tuple[float, float]]  # command -> (calls/job, usec/job inside Redis)


def per_job(before: Counters, after: Counters, jobs: int) -> PerJob:
    by_command = {}
    for name, (calls, usec) in after.by_command.items():
        calls_before, usec_before = before.by_command.get(name, (0, 0.0))
        if calls > calls_before:
            by_command[name] = ((calls - calls_before) / jobs, (usec - usec_before) / jobs)
    return PerJob(jobs / (after.at - before.at), (after.worker_cpu_s - before.worker_cpu_s) * 1000 / jobs,
                  (after.commands - before.commands) / jobs, (after.reads - before.reads) / jobs,
                  (after.redis_cpu_s - before.redis_cpu_s) * 1000 / jobs, by_command)


def run(stack: Stack, plan: Plan) -> ScenarioResult:
    # CPU times come from the kernel's tick accounting (a few ms per tick): a burst must last
    # seconds, or one burst reads 30 % off the next.
    jobs = 3 * plan.submit_jobs  # 600 quick, 3000 full
    image_uri = stack.put_input(bench_image(64))
    rows: list[Row] = []
    tables: list[Table] = []
    data: dict[str, Any] = {}
    for events in (True, False):
        label = "events on" if events else "events off"
        measured: dict[str, list[PerJob]] = {"visionq": [], "bare": []}
        latency: dict[str, list[float]] = {"visionq": [], "bare": []}
        sides = [_visionq(stack, image_uri, events), _bare(stack, image_uri, events)]
        try:
            for side in sides:
                _burst(stack, side, 5)  # untimed warm-up
            for _ in range(plan.repeats):  # interleaved: drift hits both alike
                for side in sides:
                    measured[side.name].append(_burst(stack, side, jobs))
            for side in sides:
                latency[side.name] = [side.start_latency_ms() for _ in range(max(3, plan.latency_jobs // 2))]
        finally:
            for side in sides:
                side.stop()
        runs = f"{plan.repeats} x {jobs} jobs"
        case = f"0 ms stand-in, 64 px input, {label}"
        service, bare = _medians(measured["visionq"]), _medians(measured["bare"])
        base = "bare Celery no-op worker"
        rows += [
            Row(NAME, case, "worker CPU ms/job", service.worker_cpu_ms, base, bare.worker_cpu_ms, runs),
            Row(NAME, case, "Redis round trips/job (submit to ack)", service.round_trips, base, bare.round_trips, runs),
            Row(NAME, case, "Redis commands/job (submit to ack)", service.commands, base, bare.commands, runs),
            Row(NAME, case, "Redis CPU ms/job (submit to ack)", service.redis_cpu_ms, base, bare.redis_cpu_ms, runs),
            Row(NAME, case, "jobs/s, one producer, single submits", service.jobs_per_s, base, bare.jobs_per_s, runs),
            Row(NAME, case, "enqueue -> start p50 ms, idle worker", median(latency["visionq"]), base,
                median(latency["bare"]), f"{len(latency['visionq'])} jobs one at a time"),
        ]
        tables.append(_command_table(label, service, bare))
        data[label] = {"per_job": {k: [vars(p) for p in v] for k, v in measured.items()}, "start_ms": latency}
    notes = [
        f"hotpath: the two workers share the run's Redis and are measured in turn (the other idles, its BRPOP "
        f"and heartbeats counting in both), {jobs} jobs submitted back to back by this process, until the "
        f"queue and kombu's unacked hash are empty; "
        f"Redis figures are INFO deltas over that window and include the producer's submits and this "
        f"process's completion polling (2 commands every {POLL_S * 1000:g} ms). Concurrency {SLOTS} both sides.",
        "round trips = requests Redis read (total_reads_processed): a pipeline or a Lua script is one.",
    ]
    return ScenarioResult(NAME, rows, notes, tables, data=data)


def _medians(samples: list[PerJob]) -> PerJob:
    names = {name for s in samples for name in s.by_command}
    by_command = {name: (median([s.by_command.get(name, (0.0, 0.0))[0] for s in samples]),
                         median([s.by_command.get(name, (0.0, 0.0))[1] for s in samples])) for name in names}
    scalars = [f for f in PerJob.__dataclass_fields__ if f != "by_command"]
    return PerJob(*(median([getattr(s, f) for s in samples]) for f in scalars), by_command)


def _command_table(label: str, service: PerJob, bare: PerJob) -> Table:
    """Where Redis's time goes, per job: each command's calls and the microseconds Redis spent
    in it (`INFO commandstats`; a script's inner commands are counted in both it and themselves)."""
    names = sorted(set(service.by_command) | set(bare.by_command),
                   key=lambda n: -max(service.by_command.get(n, (0, 0))[1], bare.by_command.get(n, (0, 0))[1]))
    rows = []
    for name in names:
        ours, theirs = service.by_command.get(name, (0.0, 0.0)), bare.by_command.get(name, (0.0, 0.0))
        rows.append([name, fmt(ours[0]), fmt(ours[1]), fmt(theirs[0]), fmt(theirs[1])])
    return Table(f"hotpath, {label}: Redis commands per job (INFO commandstats deltas, medians; EVALSHA includes "
                 f"the commands its script calls, which are also listed on their own)",
                 ["command", "visionq calls/job", "visionq usec/job", "bare calls/job", "bare usec/job"], rows)


def _burst(stack: Stack, side: Any, jobs: int) -> PerJob:
    client = stack.redis_client
    before = Counters.read(client, side.pid)
    for _ in range(jobs):
        side.submit()
    deadline = time.monotonic() + 300
    while not side.drained():
        if time.monotonic() > deadline:
            raise BenchError(f"{side.name}: {jobs} jobs not done within 300 s")
        time.sleep(POLL_S)
    return per_job(before, Counters.read(client, side.pid), jobs)


class _Drain:
    def __init__(self, client: redis.Redis, prefix: str, queue: str) -> None:
        self.client = client
        self.lists = [priority_list_key(queue, p, prefix) for p in Priority]
        self.unacked = f"{prefix}:unacked"

    def __call__(self) -> bool:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.llen(self.lists[1])  # the benchmark submits at normal priority only
            pipe.hlen(self.unacked)
            waiting, held = pipe.execute()
        return waiting == 0 and held == 0


class _VisionqSide:
    name = "visionq"

    def __init__(self, stack: Stack, client: Client, worker: Any, prefix: str, image_uri: str) -> None:
        self.stack, self.client, self.worker, self.image_uri = stack, client, worker, image_uri
        self.pid = worker.pid
        self.drained = _Drain(stack.redis_client, prefix, "visionq.segment")

    def submit(self) -> None:
        self.client.segment(self.image_uri)

    def start_latency_ms(self) -> float:
        enqueued = time.time()
        job = self.client.segment(self.image_uri).wait(timeout=60)
        return (parse_time(job.to_dict()["started_at"]).timestamp() - enqueued) * 1000

    def stop(self) -> None:
        self.worker.stop()


def _visionq(stack: Stack, image_uri: str, events: bool) -> _VisionqSide:
    prefix = f"bench-hot-{uuid.uuid4().hex[:8]}"
    spec = standin_worker(0.0, one_at_a_time=False)
    spec = type(spec)(spec.label, spec.module, spec.args, (("VISIONQ_TASK_EVENTS", str(events).lower()),))
    worker = stack.start([spec], prefix)[0]
    client = Client(settings=_settings(stack, prefix, events))
    return _VisionqSide(stack, client, worker, prefix, image_uri)


class _BareSide:
    name = "bare"

    def __init__(self, stack: Stack, process: subprocess.Popen[bytes], prefix: str, image_uri: str, events: bool) -> None:
        self.process, self.pid = process, process.pid
        self.client = Client(settings=_settings(stack, prefix, events))
        self.celery = self.client.celery
        self.redis = stack.redis_client
        self.message = request_to_message(parse_request(STANDIN_KIND, {"image": image_uri}))
        self.drained = _Drain(stack.redis_client, prefix, BARE_QUEUE)

    def submit(self, **extra: Any) -> str:
        job_id = uuid.uuid4().hex
        self.celery.send_task(TASK_NAME, kwargs={"job_id": job_id, "request": self.message, **extra},
                              queue=BARE_QUEUE, task_id=job_id, priority=Priority.NORMAL.level)
        return job_id

    def start_latency_ms(self) -> float:
        key = f"bench-start-{uuid.uuid4().hex}"
        enqueued = time.time()
        self.submit(started_key=key)
        deadline = time.monotonic() + 60
        while (raw := self.redis.get(key)) is None:
            if time.monotonic() > deadline:
                raise BenchError("the bare worker did not start a task within 60 s")
            time.sleep(0.0005)
        return (float(raw) - enqueued) * 1000

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _bare(stack: Stack, image_uri: str, events: bool) -> _BareSide:
    prefix = f"bench-bare-{uuid.uuid4().hex[:8]}"
    env = {**child_env(), **stack.env(prefix), "VISIONQ_TASK_EVENTS": str(events).lower()}
    log = open(stack.workdir / f"bare-{prefix}.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-P", "-m", "bench.bare_worker", "--queue", BARE_QUEUE, "--concurrency", str(SLOTS)],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while stack.redis_client.get(ready_key(prefix)) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise BenchError(f"the bare Celery worker did not start; see {log.name}")
        time.sleep(0.1)
    return _BareSide(stack, process, prefix, image_uri, events)


def _settings(stack: Stack, prefix: str, events: bool) -> Any:
    from tasks.settings import Settings

    return Settings.from_env({**stack.env(prefix), "VISIONQ_TASK_EVENTS": str(events).lower()})
