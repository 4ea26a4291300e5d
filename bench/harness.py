"""What every benchmark shares: the services, worker processes, inputs and timing loops.

A `Stack` starts a private redis-server, a local storage folder (or moto's S3
server), builds the tiny models once, and starts worker processes on demand.
Each worker group gets its own Redis key prefix, so workers started for one
scenario never take another's jobs. Everything started here is stopped by the
pid we started.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import redis

from producer.client import Client
from producer.job import Job
from producer.launch import WorkerExited, WorkerNotReady, WorkerProcess, child_env, visionq_argv, wait_all_ready
from producer.redis_server import RedisServer, free_port
from tasks.images import image_extension
from tasks.settings import Settings
from tasks.storage import input_key, open_storage

REPO = Path(__file__).resolve().parents[1]
BUCKET = "visionq-bench"
# Every worker batches nothing: one job per model call, as the direct loop does.
ONE_AT_A_TIME_ENV = {f"VISIONQ_MAX_BATCH_{kind}": "1" for kind in ("CAPTION", "SEGMENT", "GENERATE")}


class BenchError(RuntimeError):
    """A benchmark could not measure what it set out to (a job failed, a worker died)."""


@dataclass(frozen=True)
class Plan:
    """How much to measure. Every printed figure states the counts it came from."""

    mode: str  # full | quick | smoke
    repeats: int  # bursts per figure; figures are medians over them
    jobs: int  # jobs per burst for models of ~100 ms or less
    slow_jobs: int  # jobs per burst where a job takes ~200 ms or more
    latency_jobs: int  # samples per latency distribution
    submit_jobs: int  # submits per repeat in the submit scenario


PLANS = {
    "full": Plan("full", repeats=5, jobs=60, slow_jobs=20, latency_jobs=400, submit_jobs=1000),
    "quick": Plan("quick", repeats=3, jobs=16, slow_jobs=6, latency_jobs=60, submit_jobs=200),
    # The test suite's plumbing check: every code path once, numbers meaningless.
    "smoke": Plan("smoke", repeats=1, jobs=3, slow_jobs=2, latency_jobs=4, submit_jobs=5),
}


# ---------------------------------------------------------------------------- workers

@dataclass(frozen=True)
class WorkerSpec:
    """A worker process to start: `python -P -m MODULE ARGS` with extra environment."""

    label: str
    module: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


def real_worker(models_dir: Path, kinds: str, *, one_at_a_time: bool, model_process: bool = False) -> WorkerSpec:
    """`visionq worker` itself, on the CPU, with the tiny models (in a model process of their own
    with `model_process`, VISIONQ_MODEL_PROCESS)."""
    label = f"worker {kinds}" + (" max_batch 1" if one_at_a_time else "") + (" model process" if model_process else "")
    env = dict(ONE_AT_A_TIME_ENV) if one_at_a_time else {}
    if model_process:
        env["VISIONQ_MODEL_PROCESS"] = "true"
    return WorkerSpec(
        label, "producer.cli", ("worker", "--device", "cpu", "--models", str(models_dir), "--kinds", kinds),
        tuple(env.items()),
    )


def standin_worker(cost_ms: float, *, one_at_a_time: bool) -> WorkerSpec:
    """The real runtime serving a fixed-cost stand-in model (bench/standin_worker.py)."""
    label = f"stand-in {cost_ms:g} ms" + (" max_batch 1" if one_at_a_time else "")
    return WorkerSpec(
        label, "bench.standin_worker", ("--cost-ms", f"{cost_ms:g}"),
        tuple(ONE_AT_A_TIME_ENV.items()) if one_at_a_time else (),
    )


def load_per_task_worker(models_dir: Path, kinds: str) -> WorkerSpec:
    """The real runtime serving pipelines that load their model inside every task."""
    return WorkerSpec(
        f"load-per-task {kinds}", "bench.standin_worker",
        ("--load-per-task", kinds, "--models", str(models_dir)), tuple(ONE_AT_A_TIME_ENV.items()),
    )


class Worker(WorkerProcess):
    """One worker process we started (producer/launch.py), ready once its heartbeat says so."""

    def __init__(self, spec: WorkerSpec, prefix: str, env: dict[str, str], log_path: Path, redis_url: str) -> None:
        super().__init__(visionq_argv(*spec.args, module=spec.module), env=env, log_path=log_path,
                         redis_url=redis_url, prefix=prefix, cwd=REPO)
        self.spec = spec

    def log_tail(self, chars: int = 4000) -> str:
        return super().log_tail(chars)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        return super().stop(timeout_s)


def process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces; the fields after its ")" are fixed.
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------- the stack

class Stack:
    """Redis, storage, tiny models and worker processes for one benchmark run."""

    def __init__(self, workdir: Path, storage: str = "file", local_storage_dir: Path | None = None) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.storage = storage
        self.local_storage_dir = local_storage_dir or workdir / "storage"
        self.redis = RedisServer(directory=workdir / "redis").start()
        self.redis_client = redis.Redis.from_url(self.redis.url)
        self._moto: subprocess.Popen[bytes] | None = None
        self._saved_environ: dict[str, str | None] = {}
        self._s3_env: dict[str, str] = {}
        self._models_dir: Path | None = None
        self._shared: dict[WorkerSpec, Worker] = {}
        self._workers: list[Worker] = []

    # storage --------------------------------------------------------------------------
    def storage_url(self, storage: str | None = None) -> str:
        if (storage or self.storage) == "s3":
            self.s3_env()
            return f"s3://{BUCKET}/bench"
        return self.local_storage_dir.as_uri()

    def s3_env(self) -> dict[str, str]:
        """moto's S3 server in its own process (in ours it would share the producer's GIL)."""
        if self._moto is None:
            port = free_port()
            self._moto = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            self._s3_env = {
                "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
            }
            # boto3 in this process (the producer) reads its endpoint from the environment.
            self._saved_environ = {k: os.environ.get(k) for k in self._s3_env}
            os.environ.update(self._s3_env)
            self._create_bucket()
        return self._s3_env

    def _create_bucket(self, timeout_s: float = 30.0) -> None:
        import boto3

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                boto3.client("s3").create_bucket(Bucket=BUCKET)
                return
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline or (self._moto and self._moto.poll() is not None):
                    raise BenchError("moto's S3 server did not start") from None
                time.sleep(0.2)

    def put_input(self, data: bytes, storage: str | None = None) -> str:
        """Store `data` where the SDK would, once; returns its URI (submits then upload nothing)."""
        store = open_storage(self.storage_url(storage))
        extension = image_extension(data) or "jpg"
        key = input_key(hashlib.sha256(data).hexdigest(), extension)
        return store.put(key, data, f"image/{'jpeg' if extension == 'jpg' else extension}").uri

    # environment and clients -------------------------------------------------------------
    def env(self, prefix: str, storage: str | None = None) -> dict[str, str]:
        env = {
            "VISIONQ_REDIS_URL": self.redis.url,
            "VISIONQ_STORAGE_URL": self.storage_url(storage),
            "VISIONQ_REDIS_PREFIX": prefix,
            "VISIONQ_TORCH_THREADS": "1",  # one core per worker, as the direct loop uses
            "HF_HUB_OFFLINE": "1",
        }
        if (storage or self.storage) == "s3":
            env.update(self.s3_env())
        return env

    def client(self, prefix: str, storage: str | None = None) -> Client:
        return Client(settings=Settings.from_env(self.env(prefix, storage)))

    # models and workers ------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        """The tiny models, built once per run with the CLI users have."""
        if self._models_dir is None:
            dest = self.workdir / "models"
            subprocess.run(visionq_argv("models", "tiny", str(dest)), cwd=REPO,
                           env=child_env(), check=True, stdout=subprocess.DEVNULL)
            self._models_dir = dest
        return self._models_dir

    def start(self, specs: list[WorkerSpec], prefix: str | None = None, timeout_s: float = 180.0) -> list[Worker]:
        """Start `specs` together (one prefix for all when `prefix` is given) and wait until ready."""
        workers = []
        for spec in specs:
            worker_prefix = prefix or f"bench-{uuid.uuid4().hex[:8]}"
            env = {**os.environ, **self.env(worker_prefix), **dict(spec.env)}
            log_path = self.workdir / f"worker-{len(self._workers)}.log"
            worker = Worker(spec, worker_prefix, env, log_path, self.redis.url).start()
            self._workers.append(worker)
            workers.append(worker)
        try:
            wait_all_ready(workers, timeout_s)
        except (WorkerExited, WorkerNotReady) as exc:
            raise BenchError(str(exc)) from None
        return workers

    def shared(self, specs: list[WorkerSpec]) -> list[Worker]:
        """Workers kept for the whole run, so scenarios that need the same one share it."""
        missing = [spec for spec in specs if spec not in self._shared]
        for spec, worker in zip(missing, self.start(missing)):
            self._shared[spec] = worker
        return [self._shared[spec] for spec in specs]

    def stop(self, workers: list[Worker]) -> None:
        for worker in workers:
            worker.stop()

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self.redis.stop()
        if self._moto is not None:
            self._moto.terminate()
            self._moto.wait(timeout=10)
            for key, value in self._saved_environ.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def drop_prefix(self, prefix: str) -> None:
        """Delete a finished group's keys (jobs, queues) so Redis stays small across a run."""
        keys = list(self.redis_client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            self.redis_client.unlink(*keys[start:start + 1000])


def open_stack(storage: str = "file", storage_parent: Path | None = None) -> tuple[Stack, Callable[[], None]]:
    """A stack in a fresh temporary folder, and the function that removes both. Its local
    storage folder is a fresh folder in `storage_parent` (default: in the stack's folder)."""
    workdir = Path(tempfile.mkdtemp(prefix="visionq-bench-"))
    folders, storage_dir = [workdir], None
    try:
        if storage_parent is not None:
            storage_dir = Path(tempfile.mkdtemp(prefix="visionq-bench-storage-", dir=storage_parent))
            folders.append(storage_dir)
        stack = Stack(workdir, storage, storage_dir)
    except BaseException:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        raise

    def close() -> None:
        try:
            stack.close()
        finally:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)

    return stack, close


# Where the benchmark's local storage lives by default: RAM, when there is room. A worker
# creates three files per job (its folder, an output, result.json); on some virtual disks
# each creation costs up to a quarter of a millisecond of kernel CPU (the 2-core VM these
# figures come from: ext4 40-270 us, tmpfs ~10 us), which would be charged to the service's
# figures. `python -m bench --storage-dir DIR` measures on the disk of your choice.
MEMORY_FOLDER = Path("/dev/shm")
MEMORY_FOLDER_MIN_FREE = 2 << 30


def default_storage_parent() -> Path | None:
    """/dev/shm when it is a writable folder with 2 GiB free; else None (the stack's folder)."""
    try:
        usage = shutil.disk_usage(MEMORY_FOLDER)
    except OSError:
        return None
    if not os.access(MEMORY_FOLDER, os.W_OK) or usage.free < MEMORY_FOLDER_MIN_FREE:
        return None
    return MEMORY_FOLDER


def file_creation_cost_us(folder: Path, jobs: int = 200) -> float:
    """CPU microseconds to create a folder and a small file in it in `folder`, as a worker does
    for each job's outputs, measured now."""
    probe = Path(tempfile.mkdtemp(prefix="visionq-bench-probe-", dir=folder))
    try:
        started = time.process_time()
        for i in range(jobs):
            (probe / str(i)).mkdir()
            (probe / str(i) / "result.json").write_bytes(b"x" * 512)
        return (time.process_time() - started) * 1e6 / jobs
    finally:
        shutil.rmtree(probe, ignore_errors=True)


# ---------------------------------------------------------------------------- inputs

def bench_image(side: int = 512) -> bytes:
    """A photo-like JPEG (gradients and mild noise, ~55 KB at 512 px), the same every run.

    Pure noise would compress to 4x the bytes of a photograph and skew fetch and decode."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] * (512 / side)
    pixels = np.stack([x / 2, y / 2, (x + y) / 4], axis=-1) + rng.normal(0, 6, (side, side, 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# ---------------------------------------------------------------------------- timing loops

Submit = Callable[[Client], Job]


@dataclass
class Burst:
    """`jobs` submitted back to back; wall_s from the first submit to the last result seen."""

    jobs: int
    wall_s: float
    records: list[dict[str, Any]]

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.wall_s

    def metric(self, name: str) -> list[float]:
        return [float(r["metrics"].get(name) or 0.0) for r in self.records]


def burst(client: Client, submit: Submit, jobs: int, timeout_s: float = 300.0) -> Burst:
    started = time.perf_counter()
    submitted = [submit(client) for _ in range(jobs)]
    records = [checked(job.wait(timeout=timeout_s)) for job in submitted]
    return Burst(jobs, time.perf_counter() - started, records)


@dataclass
class Sample:
    """One job submitted to an idle worker: enqueue -> Job.wait returned, and its record."""

    wait_ms: float
    record: dict[str, Any]

    def metric(self, name: str) -> float:
        return float(self.record["metrics"].get(name) or 0.0)


def one_at_a_time(client: Client, submit: Submit, jobs: int, timeout_s: float = 300.0) -> list[Sample]:
    samples = []
    for _ in range(jobs):
        started = time.perf_counter()
        record = checked(submit(client).wait(timeout=timeout_s))
        samples.append(Sample((time.perf_counter() - started) * 1000, record))
    return samples


def checked(job: Job) -> dict[str, Any]:
    record = job.to_dict()
    if record["status"] != "succeeded":
        raise BenchError(f"job {job.id} ({job.kind}) ended {record['status']}: {record['error']}")
    return record
