"""Real `visionq worker` processes for the integration tests (producer/launch.py starts them)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from producer.launch import WorkerProcess as _Launched
from producer.launch import visionq_argv
from tasks.settings import Settings

REPO = Path(__file__).resolve().parents[2]


class WorkerProcess(_Launched):
    """`visionq ARGS` (a GPU-side worker by default, or `webhooks`) with the test's environment."""

    def __init__(self, env: dict[str, str], log_dir: Path, args: list[str] | None = None) -> None:
        full_env = {**os.environ, **env}
        settings = Settings.from_env(full_env)
        self.args = args or ["worker", "--device", "cpu"]
        super().__init__(
            visionq_argv(*self.args), env=full_env, log_path=log_dir / f"worker-{time.monotonic_ns()}.log",
            redis_url=settings.redis_url, prefix=settings.redis_prefix, cwd=REPO,
            sentinel_master=settings.redis_sentinel_master,
            sentinel_password=settings.redis_sentinel_password,
        )

    def start(self, timeout_s: float = 120.0) -> WorkerProcess:
        super().start()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> WorkerProcess:
        """`with WorkerProcess(...) as worker:` started and ready inside, stopped after."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()



def free_port_pair() -> int:
    """A loopback port P with P + 1 free too (checked by binding both): a fleet's children
    serve /metrics on --metrics-port + their index."""
    import socket

    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
