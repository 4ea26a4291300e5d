"""The fleet on CPU replicas: spread, readiness, drain, crash recovery, priorities, time limits.

Each test uses its own Redis key prefix, so its queues are its own (kombu keys are
prefixed too) and the session's worker never takes its jobs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from producer import Client
from tasks.settings import Settings
from tasks.heartbeats import list_workers
from tests.observability.conftest import scrape
from tests.support.cli import run_visionq
from tests.support.images import scene
from tests.support.waiting import wait_until
from tests.support.workers import REPO, WorkerProcess, free_port_pair

pytestmark = pytest.mark.integration

TIMEOUT = 90


@pytest.fixture
def fleet_env(service_env: dict[str, str], key_prefix: str) -> dict[str, str]:
    # A short visibility timeout so a killed worker's job comes back within the test.
    return {**service_env, "VISIONQ_REDIS_PREFIX": key_prefix, "VISIONQ_VISIBILITY_TIMEOUT": "3"}


@pytest.fixture
def fleet_client(fleet_env: dict[str, str]) -> Client:
    return Client(settings=Settings.from_env(fleet_env))


class Supervisor:
    """`python -m worker worker --replicas N ...` as an operator runs it."""

    def __init__(self, env: dict[str, str], log_dir: Path, *args: str) -> None:
        full_env = {**os.environ, **env, "PYTHONPATH": str(REPO)}
        self.log = log_dir / f"supervisor-{time.monotonic_ns()}.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "worker", "worker", *args],
                                            env=full_env, stdout=out, stderr=out, cwd=REPO)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def ready_workers(client: Client) -> list[dict]:
    return [w for w in list_workers(client.store.redis, client.settings.redis_prefix) if w["state"] in ("ready", "busy")]


@pytest.fixture
def supervisor_factory(fleet_env: dict[str, str], tmp_path: Path) -> Iterator:
    started: list[Supervisor] = []

    def start(*args: str) -> Supervisor:
        supervisor = Supervisor(fleet_env, tmp_path, *args)
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        supervisor.stop()


def test_replicas_share_the_queue_and_each_serves_its_own_metrics(fleet_client: Client, supervisor_factory) -> None:
    port = free_port_pair()
    supervisor_factory("--device", "cpu", "--replicas", "2", "--kinds", "generate",
                       "--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    wait_until(lambda: len(ready_workers(fleet_client)) == 2, TIMEOUT, "two ready replicas")
    # An odd number: two children can never have run as many, so reading one child's /metrics
    # twice could not pass for both below.
    jobs = [fleet_client.generate("a fox", width=128, height=128, steps=15, seed=i) for i in range(7)]
    for job in jobs:
        assert job.wait(timeout=TIMEOUT).status == "succeeded", job.error
    ran = Counter(job.to_dict()["worker"] for job in jobs)
    assert len(ran) == 2
    listed = json.loads(run_visionq("workers", "--json", env={
        "VISIONQ_REDIS_URL": fleet_client.settings.redis_url, "VISIONQ_REDIS_PREFIX": fleet_client.settings.redis_prefix,
    }).stdout)
    assert len(listed) == 2
    for worker in listed:
        assert worker["kinds"] == ["generate"] and worker["model_loads"] == 1
        assert worker["memory_mb"]["rss"] > 0 and worker["restarts"] == 0
    # Child i serves /metrics on port + i, counting the jobs it ran (counted just after a job
    # turns final, so read until both agree).
    urls = [f"http://127.0.0.1:{port + i}/metrics" for i in range(2)]
    wait_until(lambda: sorted(jobs_counted(url) for url in urls) == sorted(ran.values()), 30,
               "each child's /metrics counting its jobs")


def jobs_counted(metrics_url: str) -> float:
    return sum(value for sample, value in scrape(metrics_url).items() if sample.startswith("visionq_jobs_total{"))


def test_ready_only_after_loading_and_warm_up(fleet_env: dict, fleet_client: Client, tmp_path: Path) -> None:
    process = WorkerProcess(fleet_env, tmp_path, ["worker", "--device", "cpu", "--kinds", "caption"])
    command = [sys.executable, "-m", "worker", *process.args]
    with open(process.log_path, "wb") as log:
        process.process = subprocess.Popen(command, env=process.env, stdout=log, stderr=log, cwd=REPO)
    states: list[str] = []
    try:
        def record_state() -> bool:
            beat = process.heartbeat()
            if beat is not None and (not states or states[-1] != beat["state"]):
                states.append(beat["state"])
            return bool(states) and states[-1] == "ready"

        wait_until(record_state, TIMEOUT, "ready")
        assert states[0] == "loading"
        assert process.heartbeat()["models"]["caption/blip"]["model_id"].endswith("caption")
    finally:
        process.stop()


@pytest.mark.faults  # a stop mid-job, as the fault suite's sigterm-drain (there without a supervisor)
def test_sigterm_drains_the_job_in_hand(fleet_client: Client, supervisor_factory) -> None:
    supervisor = supervisor_factory("--device", "cpu", "--replicas", "1", "--kinds", "generate")
    wait_until(lambda: ready_workers(fleet_client), TIMEOUT, "ready worker")
    job = fleet_client.generate("long", width=256, height=256, steps=80, seed=3)
    wait_until(lambda: job.refresh().progress > 0, TIMEOUT, "job running")
    supervisor.process.send_signal(signal.SIGTERM)
    wait_until(lambda: any(w["state"] == "draining" for w in
                           list_workers(fleet_client.store.redis, fleet_client.settings.redis_prefix)),
               TIMEOUT, "draining state")
    assert supervisor.process.wait(timeout=TIMEOUT) == 0
    assert job.refresh().status == "succeeded"  # finished before the worker exited
    assert job.to_dict()["attempt"] == 1


@pytest.mark.faults  # a kill: with the fault suite
def test_sigkill_mid_job_is_redelivered_and_the_child_restarted(fleet_client: Client, supervisor_factory) -> None:
    supervisor_factory("--device", "cpu", "--replicas", "1", "--kinds", "generate")
    wait_until(lambda: ready_workers(fleet_client), TIMEOUT, "ready worker")
    job = fleet_client.generate("long", width=256, height=256, steps=60, seed=4)
    wait_until(lambda: job.refresh().progress > 0, TIMEOUT, "job running")
    victim = job.to_dict()["worker"]
    [pid] = [w["pid"] for w in ready_workers(fleet_client) if w["name"] == victim]
    os.kill(pid, signal.SIGKILL)
    # the supervisor replaces the child; kombu hands the unacked job back after the
    # visibility timeout; the new child runs it as attempt 2
    job.wait(timeout=TIMEOUT)
    record = job.to_dict()
    assert record["status"] == "succeeded", record["error"]
    assert record["attempt"] == 2
    wait_until(lambda: any(w.get("restarts") == 1 for w in ready_workers(fleet_client)), TIMEOUT, "restart counted")


def test_celery_control_shutdown_stops_a_child_for_good_and_add_consumer_keeps_to_served_queues(
    fleet_client: Client, supervisor_factory
) -> None:
    """`celery control shutdown` is an operator asking: the job in hand finishes (draining), then
    exit 0 and no restart (a crash exits 70 and is restarted). `add_consumer` for a model the
    worker has not loaded would take its messages and drop them as unregistered tasks: refused."""
    from tasks.app import make_celery

    supervisor = supervisor_factory("--device", "cpu", "--replicas", "1", "--kinds", "generate")
    wait_until(lambda: ready_workers(fleet_client), TIMEOUT, "ready worker")
    [name] = [w["name"] for w in ready_workers(fleet_client)]
    app = make_celery(fleet_client.settings)
    [refused] = app.control.add_consumer("visionq.segment", destination=[name], reply=True, timeout=10)
    assert "does not serve queue 'visionq.segment'" in refused[name]["error"]
    [added] = app.control.add_consumer("visionq.generate", destination=[name], reply=True, timeout=10)
    assert "ok" in added[name]

    job = fleet_client.generate("long", width=256, height=256, steps=80, seed=5)
    wait_until(lambda: job.refresh().progress > 0, TIMEOUT, "job running")
    app.control.shutdown(destination=[name])
    wait_until(lambda: any(w["state"] == "draining" for w in
                           list_workers(fleet_client.store.redis, fleet_client.settings.redis_prefix)),
               TIMEOUT, "draining state")
    assert supervisor.process.wait(timeout=TIMEOUT) == 0  # its only child stopped as asked
    assert job.refresh().status == "succeeded" and job.to_dict()["attempt"] == 1  # finished before it exited
    log = supervisor.log.read_text()
    assert "stopped as asked" in log and "restarting in" not in log and "exiting 70" not in log


@pytest.mark.faults  # children failing again and again: ~45 s, with the fault suite
def test_a_mistake_no_restart_mends_ends_the_fleet_with_its_exit_status(
    supervisor_factory, fleet_env: dict[str, str], tiny_models: Path, tmp_path: Path,
) -> None:
    """A child's usage error (exit 2) ends the fleet at once; models that fail to load (exit 1)
    after three quick runs in a row. Both used to be restarted forever, the fleet never failing."""
    no_cuda = Supervisor({**fleet_env, "CUDA_VISIBLE_DEVICES": ""}, tmp_path,  # no GPU, also on a GPU machine
                         "--device", "cuda", "--replicas", "2", "--kinds", "caption")
    assert no_cuda.process.wait(timeout=TIMEOUT) == 2
    assert "a usage or settings error" in no_cuda.log.read_text()
    broken = tmp_path / "models"
    shutil.copytree(tiny_models / "caption", broken / "caption")
    (broken / "caption" / "config.json").write_text("{not json")
    unloadable = supervisor_factory("--device", "cpu", "--replicas", "1", "--kinds", "caption", "--models", str(broken))
    assert unloadable.process.wait(timeout=3 * TIMEOUT) == 1
    log = unloadable.log.read_text()
    assert log.count("restarting in") == 2 and "failed to load 3 times in a row" in log
    refused = run_visionq("worker", "--replicas", "2", "--metrics-port", "65535", "--device", "cpu", env=fleet_env)
    assert refused.returncode == 2 and "past 65535" in refused.stderr


def test_a_second_live_worker_by_the_same_name_is_said_loudly(fleet_env: dict, tmp_path: Path) -> None:
    """Celery's `-d NAME` would reach both, and `visionq workers` show one entry flipping between
    them: the second says so (not refused: a killed worker's heartbeat outlives it a while)."""
    args = ["worker", "--device", "cpu", "--kinds", "generate", "--name", "twin"]
    with WorkerProcess(fleet_env, tmp_path, args) as first, WorkerProcess(fleet_env, tmp_path, args) as second:
        assert f"another worker is already named twin@{socket.gethostname()} (pid {first.pid}" in second.log_tail(50_000)
        assert "another worker is already named" not in first.log_tail(50_000)


def test_priorities_high_first_within_a_kind(
    fleet_client: Client, fleet_env: dict, tmp_path: Path
) -> None:
    # max_batch 1: two task threads, one holding the blocker, so at most one caption is reserved.
    env = {**fleet_env, "VISIONQ_MAX_BATCH_CAPTION": "1"}
    supervisor = Supervisor(env, tmp_path, "--device", "cpu", "--replicas", "1", "--kinds", "caption,generate")
    try:
        _check_priorities(fleet_client, fleet_env)
    finally:
        supervisor.stop()


def _check_priorities(fleet_client: Client, fleet_env: dict) -> None:
    wait_until(lambda: ready_workers(fleet_client), TIMEOUT, "ready worker")
    # Holds the model until it is canceled below (minutes of work on a CPU): however fast this
    # machine is at the moment, the captions are all queued behind it before it lets go.
    blocker = fleet_client.generate("block", width=512, height=512, steps=100, seed=5)
    wait_until(lambda: blocker.refresh().status == "running", TIMEOUT, "blocker running")
    low = fleet_client.caption(scene(seed=1), priority="low")
    normal = fleet_client.caption(scene(seed=2))
    high = fleet_client.caption(scene(seed=3), priority="high")
    depths = json.loads(run_visionq("queues", "--json", env=fleet_env).stdout)
    # The worker's spare task thread may already hold one caption (reserved, out of Redis); the
    # others wait in their priority lists, where `visionq queues` counts them.
    caption = depths["caption"]
    assert caption["total"] in (2, 3) and all(caption[p] <= 1 for p in ("high", "normal", "low"))
    assert caption["total"] == caption["high"] + caption["normal"] + caption["low"]
    blocker.cancel()  # cooperative: the generation stops at its next step
    assert blocker.wait(timeout=TIMEOUT).status == "canceled"
    for job in (low, normal, high):
        assert job.wait(timeout=TIMEOUT).status == "succeeded"
    high_at, normal_at, low_at = (job.to_dict()["started_at"] for job in (high, normal, low))
    assert high_at < normal_at
    # The spare task thread took the first caption to arrive (low) before the others existed: a job
    # a worker already holds keeps its turn (docs/jobs.md); every other one goes by priority.
    assert low_at < high_at or low_at > normal_at
    assert high.to_dict()["priority"] == "high"


def test_time_limit_ends_a_long_generation_and_the_worker_keeps_serving(
    fleet_env: dict, fleet_client: Client, tmp_path: Path
) -> None:
    env = {**fleet_env, "VISIONQ_TIME_LIMIT_GENERATE_S": "1"}
    worker = WorkerProcess(env, tmp_path, ["worker", "--device", "cpu", "--kinds", "generate"]).start()
    try:
        slow = fleet_client.generate("slow", width=512, height=512, steps=100, seed=6).wait(timeout=TIMEOUT)
        assert slow.status == "failed" and slow.error["code"] == "timeout"
        assert "time limit of 1 s" in slow.error["message"]
        quick = fleet_client.generate("quick", width=64, height=64, steps=1).wait(timeout=TIMEOUT)
        assert quick.status == "succeeded"
    finally:
        worker.stop()


def test_batched_outputs_equal_unbatched(fleet_client: Client, fleet_env: dict, tmp_path: Path) -> None:
    worker = WorkerProcess(fleet_env, tmp_path, ["worker", "--device", "cpu", "--kinds", "caption,segment,generate"]).start()
    try:
        images = [scene(96, 64, seed=i) for i in range(6)]
        # While a generation holds the model, the captions and masks pile up and run as batches.
        blocker = fleet_client.generate("block", width=256, height=256, steps=30, seed=1)
        wait_until(lambda: blocker.refresh().status == "running", TIMEOUT, "blocker running")
        batched = [fleet_client.caption(image, max_new_tokens=10) for image in images]
        masks = [fleet_client.segment(image, labels=["sun", "house"]) for image in images]
        for job in batched + masks:
            assert job.wait(timeout=TIMEOUT).status == "succeeded", job.error
        assert max(job.to_dict()["metrics"]["batch_size"] for job in batched) > 1
        assert max(job.to_dict()["metrics"]["batch_size"] for job in masks) > 1
        alone = [fleet_client.caption(image, max_new_tokens=10).wait(timeout=TIMEOUT) for image in images]
        assert all(job.to_dict()["metrics"]["batch_size"] == 1 for job in alone)
        assert [j.output["text"] for j in batched] == [j.output["text"] for j in alone]
        alone_masks = [fleet_client.segment(image, labels=["sun", "house"]).wait(timeout=TIMEOUT) for image in images]
        digests = lambda job: [s["mask"]["sha256"] for s in job.output["segments"]]  # noqa: E731
        assert [digests(j) for j in masks] == [digests(j) for j in alone_masks]
    finally:
        worker.stop()
