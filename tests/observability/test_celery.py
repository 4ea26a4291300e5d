"""Celery's own tools against a visionq deployment: `celery -A tasks.app ...`, Flower, revoke.

Every command here is the real `celery` executable (or `visionq celery`), run from a
folder that is not the repository, against this test's private Redis and key prefix.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from producer.launch import WorkerProcess, child_env, visionq_argv, wait_all_ready
from producer.redis_server import free_port
from tests.observability.conftest import celery_cli
from tests.support.waiting import wait_until
from tests.support.workers import REPO

TIMEOUT = 60


@pytest.fixture(scope="module")
def gated(obs_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A one-slot worker whose stand-in model runs `gate:NAME` jobs until gates/NAME exists."""
    from producer.client import Client
    from tasks.settings import Settings

    folder = tmp_path_factory.mktemp("gated")
    env = {**os.environ, **obs_env, "VISIONQ_REDIS_PREFIX": f"vqcel-{uuid.uuid4().hex[:6]}",
           "VISIONQ_LOG_FORMAT": "text"}
    gates = folder / "gates"
    gates.mkdir()
    worker = WorkerProcess(
        visionq_argv("--cost-ms", "10", "--gates", str(gates), module="tests.support.standin_worker"),
        env=env, log_path=folder / "worker.log", redis_url=env["VISIONQ_REDIS_URL"],
        prefix=env["VISIONQ_REDIS_PREFIX"], cwd=REPO,
    ).start()
    try:
        wait_all_ready([worker], 60)
        name = worker.heartbeat()["name"]  # type: ignore[index]
        yield {"env": env, "gates": gates, "client": Client(settings=Settings.from_env(env)), "name": name,
               "cwd": folder, "worker": worker}
    finally:
        worker.stop()


def test_importing_tasks_app_reads_no_configuration() -> None:
    env = child_env({**os.environ, "VISIONQ_NOT_A_SETTING": "1"})
    imported = subprocess.run([sys.executable, "-P", "-c", "import tasks.app"], env=env, cwd=REPO,
                              capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr
    built = subprocess.run([sys.executable, "-P", "-c", "import tasks.app; tasks.app.app"], env=env, cwd=REPO,
                           capture_output=True, text=True)
    assert "unknown setting VISIONQ_NOT_A_SETTING" in built.stderr  # built from the environment on access


def test_a_plain_celery_worker_refuses_to_start(tmp_path: Path) -> None:
    env = {"VISIONQ_REDIS_URL": "redis://127.0.0.1:9/0"}  # never reached: it stops before connecting
    result = celery_cli(env, tmp_path, "-A", "tasks.app", "worker", "--pool", "solo")
    assert result.returncode == 2
    assert "visionq worker" in result.stderr


@pytest.mark.integration
def test_inspect_and_status_see_the_worker_and_its_queues(gated: dict[str, Any]) -> None:
    env, cwd, name = gated["env"], gated["cwd"], gated["name"]

    def ask(*command: str) -> subprocess.CompletedProcess[str]:
        # `-d name`: Celery stops listening once the named worker answered, instead of for the
        # whole --timeout (five questions took 25 s); what each answer says is checked as before.
        return celery_cli(env, cwd, "-A", "tasks.app", *command, "--timeout", "5", "-d", name)

    ping = ask("inspect", "ping")
    assert ping.returncode == 0 and f"{name}: OK" in ping.stdout, ping.stdout + ping.stderr
    queues = ask("inspect", "active_queues", "--json")
    assert "visionq.generate" in queues.stdout and "visionq.caption" not in queues.stdout
    stats = ask("inspect", "stats", "--json")
    assert name in stats.stdout and '"pool"' in stats.stdout

    job = gated["client"].generate("gate:inspected")
    wait_until(lambda: job.refresh().status == "running", TIMEOUT, "the gated job running")
    active = ask("inspect", "active", "--json")
    assert job.id in active.stdout
    (gated["gates"] / "inspected").touch()
    assert job.wait(timeout=TIMEOUT).status == "succeeded"

    status = ask("status")
    assert status.returncode == 0 and "1 node online" in status.stdout, status.stdout + status.stderr


@pytest.mark.integration
def test_visionq_celery_is_immune_to_a_tasks_py_in_the_current_folder(gated: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text("raise SystemExit('the user tasks.py was imported')\n")
    plain = celery_cli(gated["env"], tmp_path, "-A", "tasks.app", "inspect", "ping", "--timeout", "5")
    assert plain.returncode != 0  # why `visionq celery` exists
    ours = subprocess.run(visionq_argv("celery", "inspect", "ping", "--timeout", "5", "-d", gated["name"]),
                          cwd=tmp_path, env=child_env({**os.environ, **gated["env"]}), capture_output=True, text=True,
                          timeout=60)
    assert ours.returncode == 0 and f"{gated['name']}: OK" in ours.stdout, ours.stdout + ours.stderr


@pytest.mark.integration
def test_celery_events_shows_task_events(gated: dict[str, Any]) -> None:
    env, cwd = gated["env"], gated["cwd"]
    full = child_env({**os.environ, **env})
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full.get("PYTHONPATH")]))
    log = cwd / "events.log"
    with open(log, "w") as out:
        events = subprocess.Popen([str(Path(sys.executable).with_name("celery")), "-A", "tasks.app", "events",
                                   "--dump"], env=full, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: "heartbeat" in log.read_text(), TIMEOUT, "the event dump connected")
        job = gated["client"].generate("seen by celery events")
        assert job.wait(timeout=TIMEOUT).status == "succeeded"
        wait_until(lambda: "task succeeded" in log.read_text(), TIMEOUT, "task events in the dump")
    finally:
        events.send_signal(signal.SIGTERM)
        events.wait(timeout=30)
    text = log.read_text()
    assert "task received" in text and "task started" in text and job.id in text


@pytest.fixture(scope="module")
def flower(gated: dict[str, Any]) -> Iterator[str]:
    env, cwd = gated["env"], gated["cwd"]
    port = free_port()
    full = child_env({**os.environ, **env, "FLOWER_UNAUTHENTICATED_API": "true"})
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full.get("PYTHONPATH")]))
    with open(cwd / "flower.log", "w") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("celery")), "-A", "tasks.app", "flower",
             "--address=127.0.0.1", f"--port={port}"], env=full, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def sees_worker() -> bool:
        try:
            return gated["name"] in httpx.get(f"{url}/api/workers?refresh=1", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            assert process.poll() is None, (cwd / "flower.log").read_text()
            return False
    try:
        wait_until(sees_worker, TIMEOUT, "Flower listing the worker")
        yield url
    finally:
        process.send_signal(signal.SIGTERM)  # by the pid we started
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _flower_task(url: str, task_id: str) -> dict[str, Any]:
    return httpx.get(f"{url}/api/tasks", timeout=10).json().get(task_id, {})


@pytest.mark.integration
def test_flower_shows_a_failed_job_as_failure_with_its_code(gated: dict[str, Any], flower: str) -> None:
    from tasks.kinds import JobKind

    client = gated["client"]
    # A message whose request fails on the worker (the SDK would refuse it before sending).
    record, _ = client.store.create(JobKind.GENERATE, {"prompt": "x"}, queue_timeout_s=600)
    client.celery.send_task(JobKind.GENERATE.task_name, kwargs={"job_id": record.id, "request": {"prompt": "x", "width": -5}},
                            queue=JobKind.GENERATE.queue, task_id=record.id)
    assert client.get(record.id).wait(timeout=TIMEOUT).error["code"] == "invalid_input"
    wait_until(lambda: _flower_task(flower, record.id).get("state") == "FAILURE", TIMEOUT, "FAILURE in Flower")
    assert "invalid_input" in _flower_task(flower, record.id)["exception"]
    ok = client.generate("fine")
    assert ok.wait(timeout=TIMEOUT).status == "succeeded"
    wait_until(lambda: _flower_task(flower, ok.id).get("state") == "SUCCESS", TIMEOUT, "SUCCESS in Flower")


@pytest.mark.integration
def test_revoke_cancels_queued_and_running_jobs_and_flower_shows_revoked(gated: dict[str, Any], flower: str) -> None:
    env, cwd, client = gated["env"], gated["cwd"], gated["client"]
    running = client.generate("gate:revoked-running")
    wait_until(lambda: running.refresh().status == "running", TIMEOUT, "the gated job running")
    queued = client.generate("revoked while queued")  # the one slot is taken: it waits
    name = gated["name"]  # -d: Celery stops listening once it answered (not after the whole --timeout)
    revoke = celery_cli(env, cwd, "-A", "tasks.app", "control", "revoke", queued.id, "--timeout", "5", "-d", name)
    assert revoke.returncode == 0, revoke.stdout + revoke.stderr
    assert queued.wait(timeout=TIMEOUT).status == "canceled"  # at once: the worker wrote the cancel
    assert queued.error["code"] == "canceled" and queued.to_dict()["started_at"] is None

    terminate = celery_cli(env, cwd, "-A", "tasks.app", "control", "terminate", "TERM", running.id,
                           "--timeout", "5", "-d", name)
    assert terminate.returncode == 0, terminate.stdout + terminate.stderr
    assert running.wait(timeout=TIMEOUT).status == "canceled"  # at its next checkpoint; the gate never opened
    assert queued.to_dict()["started_at"] is None

    # Flower's Terminate button: revoke with terminate=True.
    clicked = client.generate("gate:terminated-from-flower")
    wait_until(lambda: clicked.refresh().status == "running", TIMEOUT, "the second gated job running")
    answer = httpx.post(f"{flower}/api/task/revoke/{clicked.id}", params={"terminate": "true"}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert clicked.wait(timeout=TIMEOUT).status == "canceled"
    assert gated["worker"].process.poll() is None  # no thread or process was killed

    for job in (running, queued, clicked):
        wait_until(lambda: _flower_task(flower, job.id).get("state") == "REVOKED", TIMEOUT, f"REVOKED {job.id}")
    after = client.generate("after the revokes")
    assert after.wait(timeout=TIMEOUT).status == "succeeded"


@pytest.mark.integration
def test_flower_shows_jobs_ended_while_queued_as_revoked_and_failed(gated: dict[str, Any], flower: str) -> None:
    """No worker serves caption here, so no task ever reports these jobs: the result writer that
    writes their result.json tells Celery's monitors, as its worker."""
    from tests.support.images import encode, scene

    client = gated["client"]
    canceled = client.caption(encode(scene(seed=1)), queue_timeout_s=600)
    expired = client.caption(encode(scene(seed=2)), queue_timeout_s=1)
    assert client.cancel(canceled.id).status == "canceled"
    assert expired.wait(timeout=TIMEOUT).error["code"] == "expired"
    wait_until(lambda: _flower_task(flower, canceled.id).get("state") == "REVOKED", TIMEOUT, "REVOKED in Flower")
    wait_until(lambda: _flower_task(flower, expired.id).get("state") == "FAILURE", TIMEOUT, "FAILURE in Flower")
    failure = _flower_task(flower, expired.id)
    assert "expired" in failure["exception"] and failure["worker"] == gated["name"], failure
    # Told as the worker that wrote the results: the workers Flower knows from events are that one only.
    assert list(httpx.get(f"{flower}/api/workers", params={"status": "true"}, timeout=10).json()) == [gated["name"]]


@pytest.mark.integration
def test_the_delivery_worker_alone_takes_a_revoke_too(obs_env: dict[str, str], tmp_path: Path) -> None:
    from producer.client import Client
    from tasks.settings import Settings
    from tests.support.workers import WorkerProcess as Started

    env = {**obs_env, "VISIONQ_REDIS_PREFIX": f"vqrev-{uuid.uuid4().hex[:6]}", "VISIONQ_LOG_FORMAT": "text"}
    deliverer = Started(env, tmp_path, ["webhooks", "--concurrency", "2"]).start()  # no GPU worker at all
    try:
        client = Client(settings=Settings.from_env(env))
        job = client.generate("revoked with only the delivery worker up")
        revoke = celery_cli(env, tmp_path, "-A", "tasks.app", "control", "revoke", job.id, "--timeout", "5")
        assert revoke.returncode == 0, revoke.stdout + revoke.stderr
        assert job.wait(timeout=TIMEOUT).status == "canceled"
        # Celery's revoke asks a result backend for the task's state; with none (by design) it
        # would warn about each revoke.
        assert "Failed to mark task" not in deliverer.log_tail(100_000)

        # An add_consumer sent to every node: the delivery worker would take caption messages
        # and drop them as unregistered tasks. It refuses.
        from tasks.app import make_celery
        from tasks.heartbeats import list_workers
        from tasks.queues import queue_depths
        from tests.support.images import encode, scene

        name = next(w["name"] for w in list_workers(client.store.redis, client.settings.redis_prefix))
        [answer] = make_celery(client.settings).control.add_consumer("visionq.caption", reply=True, timeout=10)
        assert "does not serve queue 'visionq.caption'" in answer[name]["error"], answer
        waiting = client.caption(encode(scene(seed=3)))
        time.sleep(2)  # it would have taken the message by now: it consumes in milliseconds
        assert queue_depths(client.store.redis, client.settings.redis_prefix)["caption"]["total"] == 1
        assert waiting.refresh().status == "queued" and "unregistered" not in deliverer.log_tail(100_000)
    finally:
        deliverer.stop()
