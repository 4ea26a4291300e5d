"""Running the `visionq` command as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def visionq_command() -> list[str]:
    """The installed console script when there is one, else the same entry point via -m."""
    script = Path(sys.executable).parent / "visionq"
    return [str(script)] if script.exists() else [sys.executable, "-m", "producer.cli"]


def run_visionq(
    *args: str, env: dict[str, str], timeout: float = 120, inherit: bool = True
) -> subprocess.CompletedProcess[str]:
    """`inherit=False`: `env` is the whole environment (nothing leaks in from the test process)."""
    full_env = {**os.environ, **env} if inherit else dict(env)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    return subprocess.run(
        [*visionq_command(), *args], env=full_env, capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )
