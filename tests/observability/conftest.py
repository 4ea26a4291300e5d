"""One observed deployment for the observability tests: a Redis with a password, a worker
serving caption and segment with /metrics and JSON logs, and secrets worth grepping for.

generate is deliberately served by no worker: its jobs stay queued (backlog, expiry, purge).
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import redis

from producer.launch import child_env
from producer.redis_server import RedisServer, free_port
from tests.conftest import BUCKET
from tests.support.gateway import GatewayProcess
from tests.support.workers import REPO, WorkerProcess


REDIS_PASSWORD = "vq-redis-pw-" + secrets.token_hex(8)
AWS_ACCESS_KEY_ID = "AKIAVQOBS" + secrets.token_hex(6).upper()
AWS_SECRET_ACCESS_KEY = "vq-aws-secret-" + secrets.token_hex(12)


@pytest.fixture(scope="package")
def obs_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server that needs a password; yields its URL (with the password)."""
    server = RedisServer(directory=tmp_path_factory.mktemp("obs-redis")).start()
    try:
        redis.Redis(port=server.port).config_set("requirepass", REDIS_PASSWORD)
        yield f"redis://:{REDIS_PASSWORD}@127.0.0.1:{server.port}/0"
    finally:
        server.stop()


@pytest.fixture(scope="package")
def obs_env(service_env: dict[str, str], obs_redis: str) -> dict[str, str]:
    return {
        **service_env,
        "VISIONQ_REDIS_URL": obs_redis,
        "VISIONQ_REDIS_PREFIX": f"vqobs-{uuid.uuid4().hex[:6]}",
        "VISIONQ_STORAGE_URL": f"s3://{BUCKET}/obs",
        "VISIONQ_LOG_FORMAT": "json",
        "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY_ID,  # moto takes any keys; these are grepped for in logs
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET_ACCESS_KEY,
    }


@pytest.fixture(scope="package")
def obs_worker(obs_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    port = free_port()
    process = WorkerProcess(obs_env, tmp_path_factory.mktemp("obs-worker"), [
        "worker", "--device", "cpu", "--kinds", "caption,segment",
        "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
    ])
    process.metrics_port = port  # type: ignore[attr-defined]
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="package")
def metrics_url(obs_worker: WorkerProcess) -> str:
    return f"http://127.0.0.1:{obs_worker.metrics_port}/metrics"  # type: ignore[attr-defined]


@pytest.fixture(scope="package")
def gateway(obs_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A live gateway (no keys, loopback) over the same deployment; yields its URL."""
    process = GatewayProcess(obs_env, tmp_path_factory.mktemp("obs-gateway"), "--no-auth").start()
    try:
        yield process.url
    finally:
        process.stop()


@pytest.fixture
def obs_client(obs_env: dict[str, str], obs_worker: WorkerProcess) -> object:
    from producer.client import Client
    from tasks.settings import Settings

    # boto3 in this process reads os.environ's (test) keys; moto takes any.
    return Client(settings=Settings.from_env(obs_env))


def scrape(url: str) -> dict[str, float]:
    """Every sample of a /metrics page: `name{labels}` -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=10).text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def metric_names(url: str) -> set[str]:
    """Family names declared by a /metrics page (# TYPE lines) and the sample names in it."""
    text = httpx.get(url, timeout=10).text
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    names |= {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    return names


def celery_cli(env: dict[str, str], cwd: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """The real `celery` command (the venv's), from a folder that is not the repository."""
    celery = Path(sys.executable).with_name("celery")
    full = child_env({**os.environ, **env})
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full.get("PYTHONPATH")]))
    return subprocess.run([str(celery), *args], env=full, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
