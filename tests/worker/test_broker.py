"""The worker's kombu transport: one Redis client per channel, and no connection per job."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import redis
from kombu import Connection

from tasks.settings import Settings
from tests.support.waiting import wait_until
from worker.broker import TRANSPORT

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
JOBS = 100


def test_the_channel_reuses_one_client_for_acks_and_bookkeeping(redis_server: object, key_prefix: str) -> None:
    with Connection(redis_server.url, transport=TRANSPORT,
                    transport_options={"global_keyprefix": f"{key_prefix}:"}) as connection:
        channel = connection.channel()
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second, "a new Redis client per call (kombu's own behaviour)"
        given = redis.Redis.from_url(redis_server.url)
        with channel.conn_or_acquire(given) as client:
            assert client is given
        first.ping()


def test_a_hundred_jobs_open_no_connection_each(service_env: dict[str, str], tmp_path: Path) -> None:
    """Redis's own count of accepted connections over 100 jobs on a live worker: what the
    worker opens per job (a client per ack, an events connection per task, ...) shows here."""
    from producer.client import Client
    from producer.launch import WorkerProcess, visionq_argv, wait_all_ready

    env = {**os.environ, **service_env, "VISIONQ_REDIS_PREFIX": f"vqconn-{uuid.uuid4().hex[:6]}"}
    worker = WorkerProcess(
        visionq_argv("--cost-ms", "0", module="tests.support.standin_worker"),
        env=env, log_path=tmp_path / "worker.log", redis_url=env["VISIONQ_REDIS_URL"],
        prefix=env["VISIONQ_REDIS_PREFIX"], cwd=REPO,
    ).start()
    try:
        wait_all_ready([worker], 60)
        client = Client(settings=Settings.from_env(env))
        warm = client.generate("warm-up", width=64, height=64, steps=1).wait(timeout=60)
        assert warm.status == "succeeded", warm.error
        server = redis.Redis.from_url(env["VISIONQ_REDIS_URL"])
        before = server.info("stats")["total_connections_received"]
        jobs = client.submit_many([
            {"kind": "generate", "input": {"prompt": f"job {i}", "width": 64, "height": 64, "steps": 1}}
            for i in range(JOBS)
        ])
        # Polled, not Job.wait: a wait's pub/sub connection would be counted too.
        wait_until(lambda: all(job.refresh().is_final for job in jobs), timeout_s=120, what="100 jobs final")
        assert {job.status for job in jobs} == {"succeeded"}
        opened = server.info("stats")["total_connections_received"] - before
        assert opened < 10, f"{opened} connections opened for {JOBS} jobs"
    finally:
        worker.stop()
