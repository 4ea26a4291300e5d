"""Shared fixtures: a private redis-server, moto's S3 server, tiny models, real workers.

Everything is started by the tests themselves on loopback ports and stopped by
the pid we started; nothing touches a Redis or S3 we did not start.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import boto3
import pytest
import redis

from producer.redis_server import RedisServer
from tests.support.workers import WorkerProcess

BUCKET = "visionq-test"
WEBHOOK_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXZpc2lvbnEtd2ViaG9va3M="  # base64 of a test key


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(directory=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def key_prefix() -> str:
    """A fresh Redis key prefix per test: tests share one server without flushing it."""
    return f"vqtest-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def s3_env() -> Iterator[dict[str, str]]:
    """moto in server mode: a real HTTP S3 API that boto3 in any process can reach."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # the OS picks a free port
    server.start()
    _, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    try:
        yield env
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3(s3_env: dict[str, str]) -> object:
    """Plain boto3, as a user would read the outputs back."""
    return boto3.client("s3")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.tiny import build_tiny_models

    dest = tmp_path_factory.mktemp("models")
    build_tiny_models(dest)
    return dest


@pytest.fixture(scope="session")
def service_env(redis_server: RedisServer, s3_env: dict[str, str], tiny_models: Path) -> dict[str, str]:
    """The environment of a producer and a worker sharing one Redis and one bucket."""
    return {
        **s3_env,
        "VISIONQ_REDIS_URL": redis_server.url,
        "VISIONQ_STORAGE_URL": f"s3://{BUCKET}/svc",
        "VISIONQ_REDIS_PREFIX": "vqsvc",
        "VISIONQ_MODELS_DIR": str(tiny_models),
        "VISIONQ_TORCH_THREADS": "1",
        "VISIONQ_FETCH_ALLOW": "127.0.0.1",
        # Webhook receivers in the tests are reached as "localhost" only: a name that
        # resolves to loopback under another spelling must still be refused.
        "VISIONQ_WEBHOOK_ALLOW": "localhost",
        "VISIONQ_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "VISIONQ_WEBHOOK_SCHEDULE": "0,0.4,0.4,0.4,0.4,0.4,0.4,0.4",
        "VISIONQ_WEBHOOK_TIMEOUT_S": "2",
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture(scope="session")
def worker(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """One real `visionq worker` process serving every kind with the tiny models."""
    with WorkerProcess(service_env, log_dir=tmp_path_factory.mktemp("worker-logs")) as process:
        yield process


@pytest.fixture(scope="session")
def deliverer(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    """The webhook delivery worker (`visionq webhooks`)."""
    logs = tmp_path_factory.mktemp("deliverer-logs")
    with WorkerProcess(service_env, logs, ["webhooks", "--concurrency", "8"]) as process:
        yield process


@pytest.fixture
def client(service_env: dict[str, str], worker: WorkerProcess) -> object:
    from producer.client import Client
    from tasks.settings import Settings

    return Client(settings=Settings.from_env(service_env))


# Fixtures that start a service or a process: only integration tests may use them, so
# that `-m "not integration"` runs with nothing started.
SERVICE_FIXTURES = frozenset({"redis_server", "redis_client", "s3_env", "s3", "worker", "deliverer", "client", "service_env"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid for item in items
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests start services but are not marked integration:\n  " + "\n  ".join(unmarked)
        )
