"""The fault suite's parts: a Redis with AOF that can be killed and restarted, S3 behind
a proxy that can be cut, stand-in and real worker processes, and the figures each
test prints.

Run with `./scripts/test -m faults` (deselected by default: it takes ~15 minutes).
"""
from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
import redis

from producer.launch import WorkerProcess, visionq_argv, wait_all_ready
from producer.redis_server import find_redis_server, free_port
from tests.conftest import BUCKET, WEBHOOK_SECRET
from tests.support.receiver import Receiver
from tests.support.tcp_proxy import TcpProxy

REPO = Path(__file__).resolve().parents[2]


class AofRedis:
    """redis-server with AOF (everysec, as in production) on a port of its own, kept
    across kill -9 and restart so clients reconnect to the same address."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> AofRedis:
        """First start: a free port, and another one should it be taken before
        redis-server binds it (the pick-then-bind race)."""
        for _ in range(5):
            self.port = free_port()
            if self._try_start():
                return self
        raise RuntimeError(f"redis-server did not start; see {self.directory}/redis.log")

    def restart(self) -> AofRedis:
        """On the same port, from its AOF."""
        if not self._try_start():
            raise RuntimeError(f"redis-server did not restart on port {self.port}; see {self.directory}/redis.log")
        return self

    def _try_start(self) -> bool:
        self.process = subprocess.Popen(
            [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
             "--maxmemory-policy", "noeviction", "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return True
            except redis.RedisError:
                time.sleep(0.05)
        self.kill9()
        return False

    def kill9(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[AofRedis]:
    server = AofRedis(tmp_path / "redis")
    server.directory.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.kill9()


@pytest.fixture
def s3_proxy(s3_env: dict[str, str]) -> Iterator[TcpProxy]:
    """moto's S3 server behind a proxy the test can cut."""
    port = int(s3_env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fault_env(aof_redis: AofRedis, s3_env: dict[str, str], s3_proxy: TcpProxy) -> dict[str, str]:
    """Producer and workers on the killable Redis and the cuttable S3, short timeouts."""
    return {
        **s3_env,
        "AWS_ENDPOINT_URL": s3_proxy.url,
        "VISIONQ_REDIS_URL": aof_redis.url,
        "VISIONQ_STORAGE_URL": f"s3://{BUCKET}/faults-{uuid.uuid4().hex[:6]}",
        "VISIONQ_REDIS_PREFIX": "vqf",
        "VISIONQ_TORCH_THREADS": "1",
        "VISIONQ_VISIBILITY_TIMEOUT": "20",
        "VISIONQ_SWEEP_GRACE_S": "5",
        "VISIONQ_WEBHOOK_ALLOW": "localhost",
        "VISIONQ_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "VISIONQ_WEBHOOK_SCHEDULE": "0,1,2,4,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8,8",
        "VISIONQ_WEBHOOK_TIMEOUT_S": "2",
        "HF_HUB_OFFLINE": "1",
    }


class Fleet:
    """Worker processes this test started, stopped by their pids at the end."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.runs_file = log_dir / "runs.txt"
        self.workers: list[WorkerProcess] = []

    def _process(self, argv: list[str], name: str) -> WorkerProcess:
        worker = WorkerProcess(
            argv, env=self.env, log_path=self.log_dir / f"{name}-{len(self.workers)}.log",
            redis_url=self.env["VISIONQ_REDIS_URL"], prefix=self.env["VISIONQ_REDIS_PREFIX"], cwd=REPO,
        )
        self.workers.append(worker)
        return worker.start()

    def standin(self, cost_ms: float = 200, *extra: str, wait: bool = True) -> WorkerProcess:
        argv = visionq_argv("--cost-ms", str(cost_ms), "--runs-file", str(self.runs_file), *extra,
                            module="tests.support.standin_worker")
        worker = self._process(argv, "standin")
        if wait:
            wait_all_ready([worker], 120)
        return worker

    def visionq(self, *args: str) -> WorkerProcess:
        return self._process(visionq_argv(*args), "visionq")

    def deliverer(self) -> WorkerProcess:
        worker = self._process(visionq_argv("webhooks", "--concurrency", "8"), "deliverer")
        wait_all_ready([worker], 60)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop(timeout_s=20)

    def logs(self, chars: int = 3000) -> str:
        """The last `chars` of each process's log."""
        return "\n".join(f"--- {w.log_path.name}\n{w.log_tail(chars)}" for w in self.workers)


@pytest.fixture
def fleet(fault_env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:
    workers = Fleet(fault_env, tmp_path)
    try:
        yield workers
    finally:
        workers.stop()


@pytest.fixture
def client(fault_env: dict[str, str]) -> Any:
    from producer.client import Client
    from tasks.settings import Settings

    return Client(settings=Settings.from_env({**os.environ, **fault_env}))


@dataclass
class Figures:
    name: str
    accepted: int = 0
    succeeded: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    ran_twice: int | None = None  # counted where the stand-in model logs its runs
    finals_delivered_once: str = "n/a"

    def line(self) -> str:
        failed = ",".join(f"{code}={n}" for code, n in sorted(self.failed.items())) or "0"
        return (f"FAULTS {self.name}: accepted={self.accepted} succeeded={self.succeeded} failed={failed} "
                f"lost={self.lost} ran_twice={'n/a' if self.ran_twice is None else self.ran_twice} "
                f"final_events_delivered_once={self.finals_delivered_once}")


def settle(client: Any, job_ids: list[str], timeout_s: float) -> dict[str, Any]:
    """Wait until every job is final (or the deadline passes); job id -> record."""
    deadline = time.monotonic() + timeout_s
    records: dict[str, Any] = {}
    pending = list(job_ids)
    while pending and time.monotonic() < deadline:
        still = []
        for job_id in pending:
            try:
                record = client.store.get(job_id)
            except redis.RedisError:
                still.append(job_id)
                continue
            records[job_id] = record
            if not record.is_final:
                still.append(job_id)
        pending = still
        if pending:
            time.sleep(0.5)
    return records


def figures(
    name: str, job_ids: list[str], records: dict[str, Any], runs_file: Path | None = None,
    prompts: dict[str, str] | None = None, receiver: Receiver | None = None, path: str = "/hook",
) -> Figures:
    result = Figures(name, accepted=len(job_ids))
    for job_id in job_ids:
        record = records.get(job_id)
        if record is None or not record.is_final:
            result.lost += 1
        elif record.status.value == "succeeded":
            result.succeeded += 1
        else:
            code = (record.error or {}).get("code", record.status.value)
            result.failed[code] = result.failed.get(code, 0) + 1
    if runs_file is not None and prompts is not None:
        runs = collections.Counter(runs_file.read_text().split() if runs_file.exists() else [])
        result.ran_twice = sum(1 for job_id in job_ids if runs[prompts[job_id]] > 1)
    if receiver is not None:
        finals: dict[str, set[str]] = collections.defaultdict(set)
        for delivery in receiver.on(path):
            event = delivery.event
            if event["type"] in ("job.succeeded", "job.failed", "job.canceled"):
                finals[event["data"]["id"]].add(delivery.headers["webhook-id"])
        once = sum(1 for job_id in job_ids if len(finals[job_id]) == 1)
        result.finals_delivered_once = f"{once}/{len(job_ids)}"
    print(result.line())
    return result


def submit(
    client: Any, n: int, tag: str, receiver: Receiver | None = None, steps: int = 2,
) -> tuple[list[str], dict[str, str]]:
    """`n` generate jobs whose prompts name them (the stand-in model logs each run by prompt)."""
    job_ids, prompts = [], {}
    for i in range(n):
        prompt = f"{tag}-{i}-{uuid.uuid4().hex[:6]}"
        options = {"webhook": receiver.url("/hook")} if receiver is not None else {}
        job = client.generate(prompt=prompt, width=64, height=64, steps=steps, **options)
        job_ids.append(job.id)
        prompts[job.id] = prompt
    return job_ids, prompts


def storage_client(env: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
