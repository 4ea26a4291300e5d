"""A user's own `tasks.py` (every Celery tutorial has one) never runs in our processes,
and where Python itself would find it first, the error says what to do."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from producer.launch import WorkerProcess, wait_all_ready
from tasks.heartbeats import list_workers
from tests.support.cli import run_visionq, visionq_command, visionq_env
from tests.support.images import encode, scene
from tests.support.waiting import wait_until

HOSTILE = """\
from pathlib import Path
Path(__file__).with_name("MARKER").write_text("a tasks.py from the working folder was imported")
raise SystemExit("the working folder's tasks.py ran")
"""


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "tutorial"
    folder.mkdir()
    (folder / "tasks.py").write_text(HOSTILE)
    return folder


def test_a_script_next_to_tasks_py_gets_an_error_that_says_what_to_do(hostile_folder: Path) -> None:
    (hostile_folder / "submit.py").write_text("from producer import Client\n")
    result = subprocess.run([sys.executable, "submit.py"], cwd=hostile_folder, env=visionq_env({}),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"ImportError: {hostile_folder / 'tasks.py'} shadows visionq's `tasks` package" in result.stderr
    assert "Rename that file, or run from another folder" in result.stderr
    assert not (hostile_folder / "MARKER").exists()  # found, named, never executed


def test_the_cli_ignores_the_working_folder(hostile_folder: Path) -> None:
    result = run_visionq("submit", "generate", "--help", env={}, cwd=hostile_folder)
    assert result.returncode == 0, result.stderr
    assert not (hostile_folder / "MARKER").exists()


@pytest.mark.integration
def test_worker_webhooks_and_a_fleet_started_from_a_folder_with_tasks_py(
    service_env: dict[str, str], key_prefix: str, hostile_folder: Path, tmp_path: Path,
) -> None:
    from producer.client import Client
    from tasks.settings import Settings

    env = visionq_env({**service_env, "VISIONQ_REDIS_PREFIX": key_prefix})
    started = [
        WorkerProcess([*visionq_command(), *args], env=env, log_path=tmp_path / f"{name}.log",
                      redis_url=service_env["VISIONQ_REDIS_URL"], prefix=key_prefix, cwd=hostile_folder)
        for name, args in [("worker", ["worker", "--device", "cpu", "--kinds", "caption"]),
                           ("webhooks", ["webhooks", "--concurrency", "2"])]
    ]
    # One replica: the supervisor and a child it starts, each from that folder.
    fleet = WorkerProcess([*visionq_command(), "worker", "--device", "cpu", "--replicas", "1", "--kinds", "caption"],
                          env=env, log_path=tmp_path / "fleet.log", redis_url=service_env["VISIONQ_REDIS_URL"],
                          prefix=key_prefix, cwd=hostile_folder)
    try:
        for process in [*started, fleet]:
            process.start()
        wait_all_ready(started, timeout_s=120)
        client = Client(settings=Settings.from_env({**service_env, "VISIONQ_REDIS_PREFIX": key_prefix}))
        # The supervisor has no heartbeat of its own: its child does (three in all).
        wait_until(lambda: sum(w["state"] == "ready" for w in list_workers(client.store.redis, key_prefix)) == 3,
                   120, "the worker, the deliverer and the replica ready")
        job = client.caption(encode(scene()), max_new_tokens=5).wait(timeout=120)
        assert job.status == "succeeded", job.error
        listed = json.loads(run_visionq("workers", "--json", env={**service_env, "VISIONQ_REDIS_PREFIX": key_prefix},
                                        cwd=hostile_folder).stdout)
        assert len(listed) == 3  # worker, deliverer, the replica
    finally:
        for process in [fleet, *started]:
            process.stop()
    assert not (hostile_folder / "MARKER").exists()


@pytest.mark.integration
def test_waiting_with_no_worker_for_the_kind_says_so_on_stderr(service_env: dict[str, str], key_prefix: str) -> None:
    # A prefix no worker serves: the job stays queued.
    env = {**service_env, "VISIONQ_REDIS_PREFIX": key_prefix}
    result = run_visionq("submit", "generate", "a fox", "--width", "64", "--height", "64", "--wait",
                         "--timeout", "10", env=env)
    assert result.returncode == 4, result.stderr  # timed out, as asked, after saying why
    assert (f"visionq: no live worker serves generate: is `visionq worker` running against "
            f"{service_env['VISIONQ_REDIS_URL']} with VISIONQ_REDIS_PREFIX={key_prefix}? (still waiting)") in result.stderr
    assert "still queued after 10.0 s" in result.stderr
