"""Starting a `visionq gateway` process and learning its URL (the tests and the benchmarks).

uvicorn binds port 0 and logs the port the OS picked: nothing chooses a free port first
and binds it later (another process could take it in between).
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx

from producer.launch import child_env, visionq_argv

_LISTENING = re.compile(r"Uvicorn running on (http://[0-9.]+:\d+)")


class GatewayProcess:
    """`visionq gateway --port 0 ARGS` with `env`; stopped by the pid we started."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str, cwd: Path | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.argv = visionq_argv("gateway", "--host", "127.0.0.1", "--port", "0", *args)
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout_s: float = 60.0) -> GatewayProcess:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv, env=child_env(self.env), stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
            )
        deadline = time.monotonic() + timeout_s
        while not self.url:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited ({self.process.returncode}):\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the gateway did not listen within {timeout_s} s:\n{self.log()[-4000:]}")
            found = _LISTENING.search(self.log())
            self.url = found.group(1) if found else ""
            time.sleep(0.05)
        httpx.get(f"{self.url}/healthz", timeout=10).raise_for_status()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
