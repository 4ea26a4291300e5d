"""A worker checks Redis and storage before it loads models, and says which one it cannot reach."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.cli import run_visionq


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound by us, never listening, held for the test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def empty_models(tmp_path: Path) -> Path:
    # A models folder with no models: a worker that loaded before checking would fail
    # with a model error (exit 1) instead of the unreachable service (exit 5).
    folder = tmp_path / "no-models"
    folder.mkdir()
    return folder


def plain_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VISIONQ_", "AWS_"))}
    return {**env, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
            "VISIONQ_STORAGE_URL": (tmp_path / "storage").as_uri(), **variables}


@pytest.mark.parametrize("command", [
    ["worker", "--device", "cpu"],
    ["worker", "--device", "cpu", "--replicas", "2"],  # the supervisor checks once, instead of restarting children
    ["webhooks"],
])
def test_unreachable_redis_exits_5_before_loading(command: list[str], closed_port: int, empty_models: Path,
                                                  tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{closed_port}/0"
    if command[0] == "worker":
        command = [*command, "--models", str(empty_models)]
    result = run_visionq(*command, env=plain_env(tmp_path, VISIONQ_REDIS_URL=url), inherit=False)
    assert result.returncode == 5, result.stderr
    assert f"cannot reach Redis at {url} (VISIONQ_REDIS_URL)" in result.stderr


def test_a_cuda_device_where_torch_sees_none_is_a_usage_error(closed_port: int, tmp_path: Path) -> None:
    """Exit 2, named as the worker's, before the services are checked (this Redis would say 5)."""
    env = plain_env(tmp_path, VISIONQ_REDIS_URL=f"redis://127.0.0.1:{closed_port}/0",
                    CUDA_VISIBLE_DEVICES="")  # no GPU, also on a machine that has one
    result = run_visionq("worker", "--device", "cuda", env=env, inherit=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "visionq worker: device cuda:0 requested but CUDA is not available in this process"


@pytest.mark.integration
def test_missing_bucket_exits_5_before_loading(service_env: dict[str, str], empty_models: Path) -> None:
    env = {**service_env, "VISIONQ_STORAGE_URL": "s3://no-such-bucket/x"}
    result = run_visionq("worker", "--device", "cpu", "--models", str(empty_models), env=env)
    assert result.returncode == 5, result.stderr
    assert "storage bucket 'no-such-bucket' does not exist at http://127.0.0.1:" in result.stderr


@pytest.mark.integration
def test_unreachable_s3_endpoint_exits_5_before_loading(service_env: dict[str, str], closed_port: int,
                                                        empty_models: Path) -> None:
    env = {**service_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{closed_port}"}
    result = run_visionq("worker", "--device", "cpu", "--models", str(empty_models), env=env)
    assert result.returncode == 5, result.stderr
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{closed_port}" in result.stderr


@pytest.mark.integration
def test_unwritable_storage_folder_exits_5_before_loading(service_env: dict[str, str], empty_models: Path,
                                                          tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**service_env, "VISIONQ_STORAGE_URL": (blocker / "storage").as_uri()}
    result = run_visionq("worker", "--device", "cpu", "--models", str(empty_models), env=env)
    assert result.returncode == 5, result.stderr
    assert f"storage folder {blocker / 'storage'} is not writable" in result.stderr


@pytest.mark.integration
def test_a_missing_model_folder_is_named(service_env: dict[str, str], empty_models: Path, tmp_path: Path) -> None:
    """Exit 1, saying the folder is missing (the library called a path a malformed repo id); a
    VISIONQ_MODELS_DIR that is no folder is a settings error, as `--models` is."""
    result = run_visionq("worker", "--device", "cpu", "--kinds", "caption", "--models", str(empty_models),
                         env=service_env)
    assert result.returncode == 1, result.stderr
    assert f"from '{empty_models / 'caption'}': no such folder" in result.stderr
    env = {k: v for k, v in service_env.items() if k != "VISIONQ_MODELS_DIR"}
    missing = run_visionq("worker", "--device", "cpu", env={**env, "VISIONQ_MODELS_DIR": str(tmp_path / "nope")})
    assert missing.returncode == 2 and "VISIONQ_MODELS_DIR" in missing.stderr and "no such folder" in missing.stderr


def test_an_empty_kinds_list_is_refused_not_read_as_every_kind(closed_port: int, tmp_path: Path) -> None:
    """`--kinds "$KINDS"` with KINDS unset: exit 2, before Redis is even asked."""
    env = plain_env(tmp_path, VISIONQ_REDIS_URL=f"redis://127.0.0.1:{closed_port}/0")
    result = run_visionq("worker", "--device", "cpu", "--kinds", "", env=env, inherit=False)
    assert result.returncode == 2 and "no job kind given" in result.stderr, result.stderr


@pytest.mark.integration
def test_a_metrics_port_in_use_is_a_usage_error(service_env: dict[str, str], empty_models: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_visionq("worker", "--device", "cpu", "--models", str(empty_models), "--metrics-host", "127.0.0.1",
                             "--metrics-port", str(port), env=service_env)
    assert result.returncode == 2, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port} (--metrics-port)" in result.stderr
