"""Redis Sentinel: producers, workers and the CLI find the primary through a sentinel
(`VISIONQ_REDIS_URL=sentinel://…`), and a worker follows a failover to the new primary.

A primary, a replica and one sentinel of our own (`redis-server --sentinel`), on free ports.
"""
from __future__ import annotations

import base64
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import redis

from producer import Client
from producer.redis_server import RedisServer, find_redis_server, free_port
from tasks.settings import Settings
from tests.support.cli import run_visionq
from tests.support.gateway import GatewayProcess
from tests.support.images import encode, scene
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess

pytestmark = pytest.mark.integration

PRIMARY = "vqprimary"
TIMEOUT = 120


class Sentinel:
    """One `redis-server --sentinel` watching `primary_port`; stopped by the pid we started."""

    def __init__(self, directory: Path, primary_port: int, password: str | None = None) -> None:
        """`password`: the sentinel's own (`requirepass`), and the primary's, which it monitors with."""
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = directory / "sentinel.conf"  # a sentinel rewrites its own configuration file
        auth = f"requirepass {password}\nsentinel auth-pass {PRIMARY} {password}\n" if password else ""
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\nlogfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {PRIMARY} 127.0.0.1 {primary_port} 1\n{auth}"
            f"sentinel down-after-milliseconds {PRIMARY} 2000\nsentinel failover-timeout {PRIMARY} 20000\n"
        )
        self.process = subprocess.Popen([find_redis_server(), str(config), "--sentinel"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, password=password, decode_responses=True)
        wait_until(self._answers, 10, "the sentinel answers")

    @property
    def url(self) -> str:
        return f"sentinel://127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.ConnectionError:
            return False

    def primary_port(self) -> int:
        return int(self.client.sentinel_get_master_addr_by_name(PRIMARY)[1])

    def knows_a_replica(self) -> bool:
        return bool(self.client.sentinel_slaves(PRIMARY))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@dataclass
class Deployment:
    """A worker and a client that know only the sentinel, and the servers behind it."""

    primary: RedisServer
    replica: RedisServer
    sentinel: Sentinel
    env: dict[str, str]
    prefix: str
    worker: WorkerProcess
    client: Client


@pytest.fixture
def deployment(service_env: dict[str, str], key_prefix: str, tmp_path: Path) -> Iterator[Deployment]:
    with RedisServer(directory=tmp_path / "primary") as primary, RedisServer(directory=tmp_path / "replica") as replica:
        redis.Redis(port=replica.port).replicaof("127.0.0.1", primary.port)
        wait_until(lambda: redis.Redis(port=replica.port).info("replication")["master_link_status"] == "up",
                   30, "the replica in sync")
        sentinel = Sentinel(tmp_path / "sentinel", primary.port)
        env = {**service_env, "VISIONQ_REDIS_URL": sentinel.url, "VISIONQ_REDIS_SENTINEL_MASTER": PRIMARY,
               "VISIONQ_REDIS_PREFIX": key_prefix}
        worker = WorkerProcess(env, tmp_path, ["worker", "--device", "cpu", "--kinds", "caption"])  # reads it via the sentinel
        try:
            worker.start().wait_ready(TIMEOUT)
            yield Deployment(primary, replica, sentinel, env, key_prefix, worker, Client(settings=Settings.from_env(env)))
        finally:
            worker.stop()
            sentinel.stop()


def test_jobs_travel_through_the_primary_sentinel_names(deployment: Deployment, tmp_path: Path) -> None:
    d = deployment
    job = d.client.caption(scene(seed=11))
    assert job.wait(timeout=TIMEOUT).status == "succeeded", job.error
    assert redis.Redis(port=d.primary.port).exists(f"{d.prefix}:job:{job.id}")  # on the primary
    status = run_visionq("status", job.id, "--json", env=d.env)
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "succeeded", status.stderr
    queues = run_visionq("queues", "--json", env=d.env)
    assert queues.returncode == 0 and json.loads(queues.stdout)["caption"]["total"] == 0, queues.stderr
    created = run_visionq("keys", "create", "acme", "--json", env=d.env)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    with GatewayProcess(d.env, tmp_path) as gateway:  # its sync and asyncio clients, through the sentinel
        image = "data:image/png;base64," + base64.b64encode(encode(scene(seed=14))).decode()
        answer = httpx.post(f"{gateway.url}/v1/jobs", json={"kind": "caption", "input": {"image": image}},
                            headers={"Authorization": f"Bearer {key}", "Prefer": "wait=60"}, timeout=90)
        assert answer.status_code == 201 and answer.json()["status"] == "succeeded", answer.text


@pytest.mark.faults
def test_a_worker_follows_a_failover_to_the_new_primary(deployment: Deployment) -> None:
    d = deployment
    assert d.client.caption(scene(seed=12)).wait(timeout=TIMEOUT).status == "succeeded"
    wait_until(d.sentinel.knows_a_replica, 30, "the sentinel found the replica")  # it asks the primary every 10 s
    d.sentinel.client.execute_command("SENTINEL", "FAILOVER", PRIMARY)
    wait_until(lambda: d.sentinel.primary_port() == d.replica.port, 60, "the replica promoted")
    # The failover ends when the old primary follows the new one: until then it still takes writes.
    wait_until(lambda: redis.Redis(port=d.primary.port).info("replication")["role"] == "slave", 60,
               "the old primary demoted")
    started = time.monotonic()
    job = d.client.caption(scene(seed=13))  # written to the new primary
    assert job.wait(timeout=TIMEOUT).status == "succeeded", f"{job.error}\n{d.worker.log_tail()}"
    assert redis.Redis(port=d.replica.port).exists(f"{d.prefix}:job:{job.id}")
    print(f"after the failover, the next job took {time.monotonic() - started:.1f} s")


def test_sentinels_that_ask_for_a_password(service_env: dict[str, str], key_prefix: str, tmp_path: Path) -> None:
    """Sentinels with `requirepass` (the Bitnami chart's default): VISIONQ_REDIS_SENTINEL_PASSWORD is
    theirs, the URL's the primary's; without it, a worker's start-up check says what is missing."""
    password = "sentinel-and-primary-pw"
    with RedisServer(directory=tmp_path / "primary") as primary:
        redis.Redis(port=primary.port).config_set("requirepass", password)
        sentinel = Sentinel(tmp_path / "sentinel", primary.port, password=password)
        env = {**service_env, "VISIONQ_REDIS_URL": f"sentinel://:{password}@127.0.0.1:{sentinel.port}/0",
               "VISIONQ_REDIS_SENTINEL_MASTER": PRIMARY, "VISIONQ_REDIS_PREFIX": key_prefix}
        worker = None
        try:
            refused = run_visionq("worker", "--device", "cpu", "--kinds", "caption", env=env)
            assert refused.returncode != 0
            assert "VISIONQ_REDIS_SENTINEL_PASSWORD" in refused.stderr and password not in refused.stderr, \
                refused.stderr
            wrong = run_visionq("worker", "--device", "cpu", env={**env, "VISIONQ_REDIS_SENTINEL_PASSWORD": "nope"})
            assert wrong.returncode != 0 and "refused VISIONQ_REDIS_SENTINEL_PASSWORD" in wrong.stderr, wrong.stderr
            env["VISIONQ_REDIS_SENTINEL_PASSWORD"] = password
            unknown = run_visionq("worker", "--device", "cpu", env={**env, "VISIONQ_REDIS_SENTINEL_MASTER": "other"})
            assert unknown.returncode != 0 and "monitors no primary named 'other'" in unknown.stderr, unknown.stderr
            worker = WorkerProcess(env, tmp_path, ["worker", "--device", "cpu", "--kinds", "caption"])
            worker.start().wait_ready(TIMEOUT)  # Celery's messages (kombu) and the job store through it
            job = Client(settings=Settings.from_env(env)).caption(scene(seed=15))
            assert job.wait(timeout=TIMEOUT).status == "succeeded", job.error
            status = run_visionq("status", job.id, "--json", env=env)
            assert status.returncode == 0 and json.loads(status.stdout)["status"] == "succeeded", status.stderr
            created = run_visionq("keys", "create", "acme", "--json", env=env)
            assert created.returncode == 0, created.stderr
            key = json.loads(created.stdout)["key"]
            with GatewayProcess(env, tmp_path) as gateway:  # its sync and asyncio clients (the wait)
                image = "data:image/png;base64," + base64.b64encode(encode(scene(seed=16))).decode()
                answer = httpx.post(f"{gateway.url}/v1/jobs", json={"kind": "caption", "input": {"image": image}},
                                    headers={"Authorization": f"Bearer {key}", "Prefer": "wait=60"}, timeout=90)
                assert answer.status_code == 201 and answer.json()["status"] == "succeeded", answer.text
        finally:
            if worker is not None:
                worker.stop()
            sentinel.stop()
