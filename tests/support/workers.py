"""Real `visionq worker` processes for the integration tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """`python -m worker ARGS` (a GPU-side worker by default, or `webhooks`)."""

    def __init__(self, env: dict[str, str], log_dir: Path, args: list[str] | None = None) -> None:
        self.env = {**os.environ, **env}
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), self.env.get("PYTHONPATH")]))
        self.log_path = log_dir / f"worker-{time.monotonic_ns()}.log"
        self.args = args or ["worker", "--device", "cpu"]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_s: float = 120.0) -> WorkerProcess:
        command = [sys.executable, "-m", "worker", *self.args]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log, cwd=REPO)
        self.wait_ready(timeout_s)
        return self

    def heartbeat(self) -> dict[str, Any] | None:
        client = redis.Redis.from_url(self.env["VISIONQ_REDIS_URL"])
        prefix = self.env.get("VISIONQ_REDIS_PREFIX", "visionq")
        for key in client.scan_iter(match=f"{prefix}:workers:*"):
            value = client.get(key)
            if value is not None and json.loads(value)["pid"] == self.pid:
                return json.loads(value)
        return None

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            beat = self.heartbeat()
            if beat is not None and beat["state"] == "ready":
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready within {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, timeout_s: float = 30.0) -> int | None:
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
