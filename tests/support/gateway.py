"""A real `visionq gateway` process for the tests: uvicorn on a port the OS picks (port 0,
read back from its log, so no free port is chosen first and bound later)."""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import httpx

from producer.launch import child_env, visionq_argv

REPO = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"Uvicorn running on (http://[0-9.]+:\d+)")


def local_storage_env(redis_url: str, models_dir: Path, storage_dir: Path, prefix: str) -> dict[str, str]:
    """A deployment storing files in a local folder (the default setup): outputs are served by
    the gateway's signed links. Workers and gateways started with it share one Redis prefix."""
    return {
        "VISIONQ_REDIS_URL": redis_url,
        "VISIONQ_STORAGE_URL": storage_dir.as_uri(),
        "VISIONQ_REDIS_PREFIX": prefix,
        "VISIONQ_MODELS_DIR": str(models_dir),
        "VISIONQ_TORCH_THREADS": "1",
        "VISIONQ_WEBHOOK_ALLOW": "localhost",
        "VISIONQ_WEBHOOK_SCHEDULE": "0,0.4,0.4,0.4",
        "VISIONQ_WEBHOOK_TIMEOUT_S": "2",
        "HF_HUB_OFFLINE": "1",
    }


class GatewayProcess:
    def __init__(self, env: dict[str, str], log_dir: Path, *args: str) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log_dir / f"gateway-{time.monotonic_ns()}.log"
        # TEMPORARY until `visionq gateway` is wired into producer/cli.py.
        import sys
        no_auth = "--no-auth" in args
        self.argv = [sys.executable, "-P", "-c",
                     f"import sys; from producer.gateway.server import serve; sys.exit(serve('127.0.0.1', 0, no_auth={no_auth}))"]
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout_s: float = 60.0) -> GatewayProcess:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.argv, env=child_env(self.env), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            )
        deadline = time.monotonic() + timeout_s
        while not self.url:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited ({self.process.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the gateway did not listen within {timeout_s} s:\n{self.log()}")
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
