"""The compose file against the compose specification's JSON schema (no Docker engine here).

check-jsonschema ships the schema (`vendor.compose-spec`), so nothing is downloaded at run time.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[1] / "docker" / "compose.yaml"


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_compose_file_matches_the_compose_specification() -> None:
    result = _check(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_refuses_a_broken_compose_file(tmp_path: Path) -> None:
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["worker"]["restart"] = ["not", "a", "policy"]
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    assert _check(path).returncode != 0


def test_compose_runs_every_part_with_pinned_images() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"redis", "worker", "webhooks", "gateway"} <= set(services)
    for name, service in services.items():
        if "image" in service:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), name
