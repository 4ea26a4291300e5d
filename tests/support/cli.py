"""Running the `visionq` command as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def visionq_command() -> list[str]:
    """The installed console script when there is one, else the same entry point via -m
    (-P: like the console script, nothing is imported from the working folder)."""
    script = Path(sys.executable).parent / "visionq"
    return [str(script)] if script.exists() else [sys.executable, "-P", "-m", "producer.cli"]


def visionq_env(env: dict[str, str], inherit: bool = True) -> dict[str, str]:
    """`inherit=False`: `env` is the whole environment (nothing leaks in from the test process)."""
    full_env = {**os.environ, **env} if inherit else dict(env)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    return full_env


def run_visionq(
    *args: str, env: dict[str, str], timeout: float = 120, inherit: bool = True, cwd: Path = REPO,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*visionq_command(), *args], env=visionq_env(env, inherit), capture_output=True, text=True,
        timeout=timeout, cwd=cwd,
    )
