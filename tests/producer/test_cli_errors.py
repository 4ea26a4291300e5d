"""How the `visionq` CLI fails: exit codes, which usage it shows, and --json on stdout either way
(in process, against a real Redis where a command needs one; no worker: jobs stay queued)."""
from __future__ import annotations

import json
import socket
import threading
import uuid
from pathlib import Path

import pytest
import redis

from producer.cli import main
from producer.redis_server import RedisServer
from tests.support.cli import run_visionq


@pytest.fixture
def redis_env(redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {"VISIONQ_REDIS_URL": redis_server.url, "VISIONQ_REDIS_PREFIX": f"vqcli-{uuid.uuid4().hex[:8]}",
           "VISIONQ_STORAGE_URL": (tmp_path / "storage").as_uri()}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("VISIONQ_API_URL", "VISIONQ_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return env


def test_redis_only_commands_refuse_a_setup_that_names_only_the_gateway(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    # They would otherwise act on the default Redis, 127.0.0.1:6379, not the fleet's.
    monkeypatch.setenv("VISIONQ_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("VISIONQ_API_KEY", "k" * 32)
    monkeypatch.delenv("VISIONQ_REDIS_URL", raising=False)
    for command in (["purge", "caption"], ["webhooks", "dead"], ["webhooks", "replay", "d1"], ["keys", "list"]):
        assert main(command) == 2, command
        assert "set VISIONQ_REDIS_URL too" in capsys.readouterr().err, command


def test_submit_many_names_a_file_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit-many", str(tmp_path / "missing.jsonl")]) == 2
    assert f"visionq: {tmp_path / 'missing.jsonl'}: No such file or directory" in capsys.readouterr().err
    binary = tmp_path / "photo.jsonl"
    binary.write_bytes(b"\xff\xd8\xff\xe0 not text")
    assert main(["submit-many", str(binary), "--json"]) == 2
    captured = capsys.readouterr()
    assert f"{binary}: not UTF-8 text" in captured.err
    assert json.loads(captured.out)["error"]["code"] == "invalid_input"


@pytest.mark.parametrize("argv, said", [
    (["status", "j", "--wait", "--timeout", "-1"], "argument --timeout: not a number of seconds, 0 or more: '-1'"),
    (["status", "j", "--wait", "--timeout", "nan"], "not a number of seconds"),
    (["status", "j", "--timeout", "5"], "--timeout is how long --wait waits: add --wait"),
    (["submit", "generate", "a fox", "--timeout", "5"], "add --wait"),
    (["submit", "caption", "cat.jpg", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_usage_errors_show_the_commands_own_usage(argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    command = " ".join(argv[:2] if argv[0] == "submit" else argv[:1])
    assert err.startswith(f"usage: visionq {command} ") and said in err, err


@pytest.mark.parametrize("argv, said", [
    (["worker", "--loglevel", "LOUD"], "argument --loglevel: 'LOUD' is not one of DEBUG, INFO"),
    (["webhooks", "--loglevel", "x"], "argument --loglevel: 'x' is not one of"),
    (["worker", "--metrics-port", "99999"], "argument --metrics-port: not a port, 1 to 65535: '99999'"),
    (["worker", "--replicas", "0"], "argument --replicas: not a whole number, 1 or more: '0'"),
    (["webhooks", "--concurrency", "0"], "argument --concurrency: not a whole number, 1 or more"),
    (["gateway", "--port", "-1"], "argument --port: not a port, 0 to 65535"),
])
def test_long_running_commands_refuse_bad_flags_before_starting(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """A worker checked --loglevel only once its models were loaded, minutes later, with a traceback."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and said in capsys.readouterr().err


def test_a_usage_error_with_json_prints_the_error_on_stdout_too(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, said in ((["submit", "generate", "a fox", "--priority", "urgent", "--json"], "invalid choice: 'urgent'"),
                       (["status", "j", "--timeout", "5", "--json"], "add --wait")):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        captured = capsys.readouterr()
        assert exited.value.code == 2 and captured.err.startswith("usage: ")
        error = json.loads(captured.out)["error"]
        assert error["code"] == "invalid_input" and said in error["message"], captured.out


def test_an_address_that_is_not_redis_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Something else answers there (a web server): redis-py's InvalidResponse, no ConnectionError."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer_http() -> None:
            for _ in range(3):  # redis-py may retry
                try:
                    connection, _ = server.accept()
                except OSError:
                    return
                with connection:
                    connection.recv(1024)
                    connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

        threading.Thread(target=answer_http, daemon=True).start()
        monkeypatch.setenv("VISIONQ_REDIS_URL", f"redis://127.0.0.1:{port}/0")
        monkeypatch.delenv("VISIONQ_API_URL", raising=False)
        assert main(["queues", "--json"]) == 5
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["code"] == "unavailable"
    assert "is not Redis (InvalidResponse)" in captured.err and "Traceback" not in captured.err


def test_a_redis_that_times_out_is_unavailable(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """redis-py's TimeoutError (a connect to an address that drops packets) is no ConnectionError:
    it must still be exit 5 `unavailable`, not a traceback."""
    from producer import cli

    class Stalled:
        def get(self, job_id: str) -> None:
            raise redis.TimeoutError("Timeout connecting to server")

    monkeypatch.setattr(cli, "_client", Stalled)
    monkeypatch.setenv("VISIONQ_REDIS_URL", "redis://:secret@10.9.8.7:6380/0")
    assert main(["status", "abc", "--json"]) == 5
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["code"] == "unavailable" and "Timeout" in captured.err
    # The address it could not reach (redis-py's timeout names none), its password masked.
    assert "cannot reach Redis at redis://:***@10.9.8.7:6380/0 (VISIONQ_REDIS_URL)" in captured.err


def test_redis_clients_give_up_a_connect_and_a_read_after_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the kernel's ~2 minutes to connect, nor forever for an answer (redis-py before 8 waits
    forever by default); a URL's own settings win."""
    from tasks.redis_connect import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, connect, connect_async

    for client in (connect("redis://127.0.0.1:1/0", "mymaster"), connect_async("redis://127.0.0.1:1/0", "m")):
        options = client.connection_pool.connection_kwargs
        assert options["socket_connect_timeout"] == CONNECT_TIMEOUT_S <= 30
        assert options["socket_timeout"] == READ_TIMEOUT_S <= 30
    chosen = connect("redis://127.0.0.1:1/0?socket_connect_timeout=2.5&socket_timeout=40", "mymaster")
    assert chosen.connection_pool.connection_kwargs["socket_connect_timeout"] == 2.5
    assert chosen.connection_pool.connection_kwargs["socket_timeout"] == 40


@pytest.mark.integration
def test_json_failures_print_the_error_on_stdout_too(redis_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    for argv, exit_code, code in (
        (["status", "no-such-job", "--json"], 3, "not_found"),
        (["cancel", "no-such-job", "--json"], 3, "not_found"),
        (["submit", "generate", "a fox", "--width", "65", "--json"], 2, "invalid_input"),
    ):
        assert main(argv) == exit_code, argv
        captured = capsys.readouterr()
        error = json.loads(captured.out)["error"]
        assert error["code"] == code and error["message"] in captured.err, argv
    assert main(["status", "no-such-job"]) == 3
    assert capsys.readouterr().out == ""  # without --json, stdout stays for results only


@pytest.mark.integration
def test_json_outputs_of_submit_many_purge_and_a_wait_that_times_out(
    redis_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    lines = tmp_path / "jobs.jsonl"
    lines.write_text('{"kind": "generate", "input": {"prompt": "a fox", "width": 64, "height": 64}}\n'
                     "\n"
                     '{"kind": "generate", "input": {"prompt": "a fox", "width": 65}}\n')
    assert main(["submit-many", str(lines), "--json"]) == 1
    queued, refused = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert queued["line"] == 1 and set(queued) == {"line", "id"}
    assert refused["line"] == 3 and refused["error"]["code"] == "invalid_input" and "width" in refused["error"]["message"]

    # No worker: the job stays queued, so a wait with a timeout ends with it as it stands.
    assert main(["status", queued["id"], "--wait", "--timeout", "0.2", "--json"]) == 4
    captured = capsys.readouterr()
    assert json.loads(captured.out)["status"] == "queued" and "still" in captured.err

    assert main(["purge", "generate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"kind": "generate", "canceled": 1, "dropped_messages": 0}


@pytest.mark.integration
def test_gateway_on_a_port_in_use_is_a_usage_error(redis_server: RedisServer, tmp_path: Path) -> None:
    # uvicorn's own exit status for it, 3, is the CLI's "no such job".
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {"VISIONQ_REDIS_URL": redis_server.url, "VISIONQ_REDIS_PREFIX": f"vqcli-{uuid.uuid4().hex[:8]}",
               "VISIONQ_STORAGE_URL": (tmp_path / "storage").as_uri()}
        started = run_visionq("gateway", "--no-auth", "--port", str(port), env=env, timeout=60)
    assert started.returncode == 2, started.stderr
    assert f"visionq: could not start on 127.0.0.1:{port}" in started.stderr


def test_a_worker_command_without_a_package_of_the_worker_extra_names_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit 2 naming what is missing (a half-installed environment without diffusers raised a
    ModuleNotFoundError with a traceback: only torch was looked for)."""
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else found(name, *a))
    assert main(["models", "tiny", str(tmp_path / "models")]) == 2
    assert "needs the [worker] extra (missing: diffusers)" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()
