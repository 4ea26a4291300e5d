"""No job waits forever: a time-to-start deadline, `visionq purge KIND`, and the oldest queued age.

generate has no worker in this deployment: the caption/segment worker must still
end generate jobs past their deadline.
"""
from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from producer.launch import child_env, visionq_argv
from tasks.expiry import QueueEnds
from tasks.kinds import JobKind, Priority, queue_list_key
from tasks.settings import Settings
from tasks.storage import job_key
from tests.observability.conftest import scrape
from tests.support.waiting import wait_until
from tests.support.workers import REPO


def _visionq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(visionq_argv(*args), env=child_env({**os.environ, **env}), cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _queued_messages(client: Any, kind: JobKind) -> int:
    prefix = client.settings.redis_prefix
    return sum(client.store.redis.llen(queue_list_key(kind, p, prefix)) for p in Priority)


@pytest.mark.integration
def test_a_job_no_worker_starts_fails_expired_with_its_final_event(obs_client: Any, metrics_url: str) -> None:
    before = scrape(metrics_url)
    messages_before = _queued_messages(obs_client, JobKind.GENERATE)
    job = obs_client.generate("nobody serves generate here", queue_timeout_s=1.5)
    assert job.to_dict()["queue_timeout_s"] == 1.5
    job.wait(timeout=60)  # returns: the job did not wait forever
    assert job.status == "failed" and job.error["code"] == "expired"
    assert "1.5 s" in job.error["message"] and "VISIONQ_QUEUE_TIMEOUT_GENERATE_S" in job.error["message"]
    assert job.to_dict()["started_at"] is None
    # Its message leaves the queue too, right after (the expirer ends every due job, then takes their messages).
    wait_until(lambda: _queued_messages(obs_client, JobKind.GENERATE) == messages_before, 10, "its message gone")
    key = 'visionq_jobs_total{error_code="expired",kind="generate",model="sd",status="failed"}'
    wait_until(lambda: scrape(metrics_url).get(key, 0) - before.get(key, 0) == 1, 30, "the expiry counted once")
    # No worker ended it, yet its result.json is written, from its record (worker/results.py).
    storage, result_key = obs_client.storage, job_key(job.id, "result.json")
    wait_until(lambda: storage.exists(result_key), 30, "the expired job's result.json")
    stored = json.loads(storage.read(storage.ref(result_key, b"", "application/json").uri, 1 << 20))
    assert stored["status"] == "failed" and stored["error"]["code"] == "expired" and stored["id"] == job.id


@pytest.mark.integration
def test_expiry_sends_job_failed_to_the_webhook(obs_client: Any) -> None:
    job = obs_client.generate("expiring with a webhook", queue_timeout_s=1.0, webhook="http://localhost:9/hook",
                               webhook_events=["job.failed"])
    assert job.wait(timeout=60).error["code"] == "expired"
    # Queued right after the record turned final, by whichever process expired it.
    wait_until(lambda: obs_client.deliveries.get(f"msg_{job.id}_1") is not None, 30, "the job's event queued")
    delivery = obs_client.deliveries.get(f"msg_{job.id}_1")  # the job's first and only event
    assert delivery.type == "job.failed"
    assert json.loads(delivery.body)["data"]["error"]["code"] == "expired"


@pytest.mark.integration
def test_default_queue_timeout_comes_from_the_kind_setting(obs_env: dict[str, str], obs_worker: Any) -> None:
    from producer.client import Client

    client = Client(settings=Settings.from_env({**obs_env, "VISIONQ_QUEUE_TIMEOUT_GENERATE_S": "1"}))
    job = client.generate("default deadline")
    assert job.to_dict()["queue_timeout_s"] == 1.0
    assert job.wait(timeout=60).error["code"] == "expired"
    assert Settings.from_env({}).queue_timeouts_s == {"caption": 3600.0, "segment": 3600.0, "generate": 3600.0}


@pytest.mark.integration
def test_a_started_job_never_expires(obs_client: Any) -> None:
    from tests.support.images import encode, scene

    job = obs_client.caption(encode(scene()), queue_timeout_s=600)
    assert job.wait(timeout=120).status == "succeeded"


@pytest.mark.integration
def test_purge_cancels_a_kinds_queued_jobs_and_drops_their_messages(
    obs_env: dict[str, str], obs_client: Any, obs_worker: Any,
) -> None:
    _visionq(obs_env, "purge", "generate")  # whatever earlier tests left queued
    assert _queued_messages(obs_client, JobKind.GENERATE) == 0
    jobs = [obs_client.generate(f"purged {i}", priority=p) for i, p in enumerate(["high", "normal", "low"])]
    canceled = obs_client.generate("canceled on its own").cancel()  # its message goes along
    assert canceled.status == "canceled"
    assert _queued_messages(obs_client, JobKind.GENERATE) == 3
    # A job canceled where its message could not be reached (the store's cancel alone: an earlier
    # version's, or deep in a long queue) leaves its message for a worker or a purge to drop.
    left = obs_client.generate("its message left behind")
    obs_client.store.request_cancel(left.id)
    assert _queued_messages(obs_client, JobKind.GENERATE) == 4
    queues = json.loads(_visionq(obs_env, "queues", "--json").stdout)
    assert queues["generate"]["total"] == 4 and queues["generate"]["oldest_age_s"] > 0

    result = _visionq(obs_env, "purge", "generate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "canceled 3 queued generate jobs; dropped 1 message of jobs already ended"
    for job in jobs:
        assert job.wait(timeout=10).status == "canceled"
        assert "visionq purge generate" in job.error["message"]
    assert _queued_messages(obs_client, JobKind.GENERATE) == 0  # an autoscaler reads an empty queue
    queues = json.loads(_visionq(obs_env, "queues", "--json").stdout)
    assert queues["generate"]["total"] == 0 and queues["generate"]["oldest_age_s"] == 0.0
    assert _visionq(obs_env, "purge", "generate").stdout.strip() == "canceled 0 queued generate jobs"


@pytest.mark.integration
def test_submit_takes_queue_timeout_on_the_command_line(obs_env: dict[str, str], obs_worker: Any) -> None:
    result = _visionq(obs_env, "submit", "generate", "a prompt", "--queue-timeout", "1", "--wait", "--json",
                      "--timeout", "60")
    assert result.returncode == 1  # the job ended failed
    assert json.loads(result.stdout)["error"]["code"] == "expired"
    bad = _visionq(obs_env, "submit", "generate", "a prompt", "--queue-timeout", "0")
    assert bad.returncode == 2 and "queue_timeout_s 0 must be above 0" in bad.stderr


@pytest.mark.integration
def test_gateway_jobs_take_queue_timeout_s_and_expire(gateway: str, obs_worker: Any, obs_client: Any) -> None:
    import httpx

    created = httpx.post(f"{gateway}/v1/jobs", json={"kind": "generate", "input": {"prompt": "via http"},
                                                     "queue_timeout_s": 1}, timeout=30)
    assert created.status_code == 201, created.text
    assert created.json()["queue_timeout_s"] == 1.0
    job_id = created.json()["id"]
    wait_until(lambda: httpx.get(f"{gateway}/v1/jobs/{job_id}", timeout=10).json()["status"] == "failed", 60,
               "the gateway job expired")
    assert httpx.get(f"{gateway}/v1/jobs/{job_id}", timeout=10).json()["error"]["code"] == "expired"
    default = httpx.post(f"{gateway}/v1/jobs", json={"kind": "generate", "input": {"prompt": "default"}}, timeout=30)
    assert default.json()["queue_timeout_s"] == 3600.0  # the kind's default: no gateway job waits forever
    httpx.post(f"{gateway}/v1/jobs/{default.json()['id']}/cancel", timeout=10)
    QueueEnds(obs_client.store).drop_dead_messages(JobKind.GENERATE)  # its message: later tests count the queue
    bad = httpx.post(f"{gateway}/v1/jobs", json={"kind": "generate", "input": {"prompt": "x"}, "queue_timeout_s": -1},
                     timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input"


@pytest.mark.integration
def test_the_sweeper_republishes_a_lost_message_only_inside_its_deadline(obs_client: Any) -> None:
    import time
    import uuid

    from tasks.store import JobStore
    from worker.sweeper import Sweeper

    # A prefix no worker watches: only this sweeper and no expirer act on these jobs.
    store = JobStore(obs_client.store.redis, ttl_s=3600, prefix=f"vqsweep-{uuid.uuid4().hex[:6]}")
    inside, _ = store.create(JobKind.GENERATE, {"prompt": "inside"}, queue_timeout_s=600)
    past, _ = store.create(JobKind.GENERATE, {"prompt": "past"}, queue_timeout_s=0.2)
    time.sleep(0.5)  # both messages were never published: lost; one deadline has passed
    published: list[str] = []
    sweeper = Sweeper(store, lambda kind, job_id, message, priority, model: published.append(job_id), grace_s=0.1,
                      sleep=lambda _s: None)
    assert sweeper.sweep() == [inside.id]
    assert published == [inside.id] and store.get(past.id).status.value == "queued"  # left to the expirer
