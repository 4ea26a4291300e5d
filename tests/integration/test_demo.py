"""The README's first command, as a newcomer runs it: everything embedded."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.support.cli import run_visionq

pytestmark = pytest.mark.integration


def test_demo_runs_every_kind_on_embedded_defaults(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VISIONQ_", "AWS_"))}
    env.update({"HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    result = run_visionq("demo", env=env, timeout=300, inherit=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "started a private redis-server" in out
    assert "TINY random-weight models" in out
    assert "4 of 4 jobs succeeded" in out
    bin_dir = Path(sys.executable).parent
    assert f'export PATH="{bin_dir}:$PATH"' in out  # how to run `visionq` from the user's own shell
    storage = tmp_path / ".visionq" / "demo" / "storage" / "jobs"
    assert len(list(storage.glob("*/result.json"))) == 4
    assert list(storage.glob("*/output-0.png")) and list(storage.glob("*/overlay.png"))
