"""Schemathesis against the gateway's own /openapi.json, with a valid key and all its checks
but one: no 5xx, every status, header, content type and body as documented, schema-violating
requests refused, auth enforced, stateful sequences (submit -> get -> cancel -> events)."""
from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from producer.gateway.keys import KeyStore
from producer.redis_server import RedisServer
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.integration


def schemathesis_command() -> list[str]:
    script = Path(sys.executable).parent / "schemathesis"
    return [str(script)] if script.exists() else [sys.executable, "-m", "schemathesis.cli"]


def test_schemathesis_finds_nothing(redis_server: RedisServer, tmp_path: Path) -> None:
    prefix = f"vqst-{uuid.uuid4().hex[:8]}"  # no worker consumes it: jobs stay queued
    env = {"VISIONQ_REDIS_URL": redis_server.url, "VISIONQ_STORAGE_URL": (tmp_path / "storage").as_uri(),
           "VISIONQ_REDIS_PREFIX": prefix}
    key = KeyStore(redis.Redis.from_url(redis_server.url), prefix).create("fuzz")
    with GatewayProcess(env, tmp_path) as gateway:
        run = subprocess.run([
            *schemathesis_command(), "run", f"{gateway.url}/openapi.json",
            "--checks", "all",
            # A schema can say which requests are well formed, not which are acceptable: that an
            # uploaded part really is a PNG, that width x height x steps stays under the work
            # cap, that a webhook host passes the SSRF guard. Such requests are answered
            # 400 invalid_input, which this check would count against the schema.
            "--exclude-checks", "positive_data_acceptance",
            "-H", f"Authorization: Bearer {key.key}",
            "--max-examples", "10", "--workers", "1",
            # The event stream of a job that stays queued never ends by itself.
            "--request-timeout", "5",
        ], capture_output=True, text=True, timeout=1200, cwd=tmp_path)  # its cache folder goes there
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:] + "\ngateway log:\n" + gateway.log()[-3000:]
