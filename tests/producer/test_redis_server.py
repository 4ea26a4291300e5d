"""Which redis-server the demo, the tests and the benchmarks start."""
from pathlib import Path

import pytest

from producer.redis_server import find_redis_server


def test_visionq_redis_server_names_the_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = tmp_path / "redis-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("VISIONQ_REDIS_SERVER", str(binary))
    assert find_redis_server() == str(binary)


def test_a_visionq_redis_server_that_cannot_run_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VISIONQ_REDIS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(RuntimeError, match="VISIONQ_REDIS_SERVER=.*missing"):
        find_redis_server()


def test_without_it_path_decides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    binary = tmp_path / "redis-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.delenv("VISIONQ_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == str(binary)


def test_the_settings_typo_check_knows_it() -> None:
    from tasks.settings import Settings

    Settings.from_env({"VISIONQ_REDIS_SERVER": "/usr/bin/redis-server"})  # a worker started beside it must start
