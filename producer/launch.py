"""Starting `visionq` processes and waiting until a worker is ready: the demo, the tests
and the benchmarks all start their workers through `WorkerProcess`.

Children run as `python -P -m ...`: nothing is imported from their working folder
(a user's own `tasks.py` there would shadow our `tasks` package), and our own
packages are found where this process found them.
"""
from __future__ import annotations

import os
import shlex
import signal
import site
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from tasks.heartbeats import worker_with_pid
from tasks.redis_connect import connect

# Where the `producer`, `tasks` and `worker` packages this process runs from live.
PACKAGES_ROOT = Path(__file__).resolve().parents[1]


class WorkerExited(RuntimeError):
    """The worker process ended before it was ready; the message holds its log's tail."""


class WorkerNotReady(TimeoutError):
    """The worker did not announce `ready` in time; the message holds its log's tail."""


def visionq_argv(*args: str, module: str = "producer.cli") -> list[str]:
    """`visionq ARGS` (or `python -m MODULE ARGS`) run by this interpreter, safe from the working folder."""
    return [sys.executable, "-P", "-m", module, *args]


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) with our packages importable even when they are not installed."""
    full = dict(os.environ if env is None else env)
    installed = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if PACKAGES_ROOT not in installed:
        full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGES_ROOT), full.get("PYTHONPATH")]))
    return full


class WorkerProcess:
    """One worker process we start (`visionq worker ...` by default), ready once its
    heartbeat in Redis (under `prefix`) says `ready`. Stopped by the pid we started."""

    def __init__(
        self, argv: list[str], *, env: dict[str, str], log_path: Path, redis_url: str, prefix: str,
        cwd: Path | None = None, sentinel_master: str = "mymaster", sentinel_password: str | None = None,
    ) -> None:
        self.argv = argv
        self.sentinel_master = sentinel_master  # with a sentinel:// redis_url
        self.sentinel_password = sentinel_password
        self.env = env
        self.log_path = log_path
        self.redis_url = redis_url
        self.prefix = prefix
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self._redis: redis.Redis | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def start(self) -> WorkerProcess:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv, env=child_env(self.env), stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
            )
        return self

    def heartbeat(self) -> dict[str, Any] | None:
        """This process's heartbeat, or None before its first one."""
        if self._redis is None:
            self._redis = connect(self.redis_url, self.sentinel_master, self.sentinel_password)
        return worker_with_pid(self._redis, self.prefix, self.pid)

    def is_ready(self) -> bool:
        """True once the heartbeat says ready; raises WorkerExited if the process has ended."""
        if self.process is None or self.process.poll() is not None:
            code = None if self.process is None else self.process.returncode
            raise WorkerExited(f"{shlex.join(self.argv)} exited with {code}:\n{self.log_tail()}")
        beat = self.heartbeat()
        return beat is not None and beat.get("state") == "ready"

    def wait_ready(self, timeout_s: float) -> WorkerProcess:
        wait_all_ready([self], timeout_s)
        return self

    def log_tail(self, chars: int = 5000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (Celery's warm shutdown: the job in hand finishes), SIGKILL after `timeout_s`."""
        if self._redis is not None:
            self._redis.close()
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def wait_all_ready(workers: list[WorkerProcess], timeout_s: float, poll_s: float = 0.1) -> None:
    """Wait until every one of `workers` is ready (they load their models in parallel)."""
    deadline = time.monotonic() + timeout_s
    pending = list(workers)
    while pending:
        pending = [w for w in pending if not w.is_ready()]
        if not pending:
            return
        if time.monotonic() > deadline:
            first = pending[0]
            raise WorkerNotReady(f"{shlex.join(first.argv)} not ready within {timeout_s:g} s "
                                 f"(log {first.log_path}):\n{first.log_tail()}")
        time.sleep(poll_s)
