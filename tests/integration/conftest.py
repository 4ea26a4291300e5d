"""Fixtures of the gateway tests: one deployment on local storage (the default setup) with a
real worker and a real `visionq gateway`, shared by the modules that test it over HTTP."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest
import redis

from producer.gateway.keys import KeyStore, NewKey
from producer.redis_server import RedisServer
from tests.support.gateway import GatewayProcess, local_storage_env
from tests.support.workers import WorkerProcess


@pytest.fixture(scope="session")
def gateway_env(redis_server: RedisServer, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return local_storage_env(redis_server.url, tiny_models, tmp_path_factory.mktemp("gateway-storage"),
                             f"vqgw-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="session")
def gateway_keys(gateway_env: dict[str, str], redis_server: RedisServer) -> KeyStore:
    return KeyStore(redis.Redis.from_url(redis_server.url), gateway_env["VISIONQ_REDIS_PREFIX"])


@pytest.fixture(scope="session")
def acme(gateway_keys: KeyStore) -> NewKey:
    return gateway_keys.create("acme")


@pytest.fixture(scope="session")
def beta(gateway_keys: KeyStore) -> NewKey:
    return gateway_keys.create("beta")


@pytest.fixture(scope="session")
def gateway_worker(gateway_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    with WorkerProcess(gateway_env, log_dir=tmp_path_factory.mktemp("gateway-worker")) as process:
        yield process


@pytest.fixture(scope="session")
def gateway(gateway_env: dict[str, str], acme: NewKey, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(gateway_env, tmp_path_factory.mktemp("gateway")) as process:
        yield process


