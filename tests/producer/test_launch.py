"""producer/launch.py without Redis: how children are started, and a child that dies early."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from producer.launch import WorkerExited, WorkerProcess, visionq_argv, wait_all_ready


def test_children_never_import_from_their_working_folder() -> None:
    assert visionq_argv("worker", "--device", "cpu") == [
        sys.executable, "-P", "-m", "producer.cli", "worker", "--device", "cpu",
    ]


def test_a_worker_that_exits_before_ready_is_reported_with_its_log(tmp_path: Path) -> None:
    worker = WorkerProcess(
        [sys.executable, "-c", "print('cannot load the models'); raise SystemExit(3)"], env={},
        log_path=tmp_path / "worker.log", redis_url="redis://127.0.0.1:9/0", prefix="unused",
    ).start()
    assert worker.process is not None
    worker.process.wait()  # ended before anyone looks at Redis
    with pytest.raises(WorkerExited, match=r"exited with 3:\ncannot load the models"):
        wait_all_ready([worker], timeout_s=60)
