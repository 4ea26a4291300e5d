"""Gateway deployments for the tests: a real `visionq gateway` (producer/gateway/launch.py)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from producer.gateway.launch import GatewayProcess as _Launched

REPO = Path(__file__).resolve().parents[2]


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


class GatewayProcess(_Launched):
    """`visionq gateway ARGS` with the test's environment, logging into `log_dir`."""

    def __init__(self, env: dict[str, str], log_dir: Path, *args: str) -> None:
        super().__init__({**os.environ, **env}, log_dir / f"gateway-{time.monotonic_ns()}.log", *args, cwd=REPO)
