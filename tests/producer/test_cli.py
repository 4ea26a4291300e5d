"""The `visionq` CLI against a real worker (submit, status, cancel, exit codes)."""
from __future__ import annotations

import json
import time

import pytest
import redis

from tasks.kinds import JobKind
from tasks.served_models import queue_lists
from tests.support.cli import run_visionq
from tests.support.images import encode, scene

pytestmark = pytest.mark.integration


def test_submit_generate_wait_json(service_env: dict, worker) -> None:
    result = run_visionq("submit", "generate", "a watercolor fox", "--width", "64", "--height", "64",
                         "--steps", "2", "--seed", "7", "--num-images", "2", "--wait", "--json", env=service_env)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["status"] == "succeeded"
    assert record["output"]["seed"] == 7 and len(record["output"]["images"]) == 2
    assert "succeeded" in result.stderr  # the live status line

    status = run_visionq("status", record["id"], "--json", env=service_env)
    assert json.loads(status.stdout)["output"] == record["output"]
    human = run_visionq("status", record["id"], env=service_env)
    assert "succeeded" in human.stdout and "image: s3://" in human.stdout


def test_submit_caption_and_segment_from_a_file(service_env: dict, worker, tmp_path) -> None:
    path = tmp_path / "scene.png"
    path.write_bytes(encode(scene()))
    caption = run_visionq("submit", "caption", str(path), "--prompt", "a photo of", "--wait", env=service_env)
    assert caption.returncode == 0, caption.stderr
    assert "text:" in caption.stdout
    segment = run_visionq("submit", "segment", str(path), "--label", "car", "--label", "person",
                          "--wait", "--json", env=service_env)
    assert segment.returncode == 0, segment.stderr
    labels = [s["label"] for s in json.loads(segment.stdout)["output"]["segments"]]
    assert labels == ["car", "person"]


def test_submit_without_wait_prints_the_id(service_env: dict, worker) -> None:
    result = run_visionq("submit", "generate", "x", "--width", "64", "--height", "64", "--steps", "1",
                         env=service_env)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    waited = run_visionq("status", job_id, "--wait", "--timeout", "60", "--json", env=service_env)
    assert json.loads(waited.stdout)["status"] == "succeeded"


def test_errors_and_exit_codes(service_env: dict, worker) -> None:
    bad = run_visionq("submit", "generate", "x", "--width", "4000", env=service_env)
    assert bad.returncode == 2
    assert "width 4000 exceeds the maximum 2048" in bad.stderr
    missing = run_visionq("status", "no-such-job", env=service_env)
    assert missing.returncode == 3
    assert "no job 'no-such-job'" in missing.stderr
    not_image = run_visionq("submit", "caption", "file:///etc/passwd", "--wait", env=service_env)
    assert not_image.returncode == 2
    assert "image /etc/passwd is not a JPEG, PNG or WebP file" in not_image.stderr  # refused at submit, named
    failed = run_visionq("submit", "generate", "word " * 300, "--width", "64", "--height", "64",
                         "--wait", env=service_env)
    assert failed.returncode == 1
    assert "invalid_input" in failed.stdout


def test_cancel_command(service_env: dict, worker, tmp_path) -> None:
    # A job for a model no live worker serves stays queued however fast this machine is.
    image = tmp_path / "in.png"
    image.write_bytes(encode(scene(), "PNG"))
    submitted = run_visionq("submit", "caption", str(image), "--model", "vit-gpt2", env=service_env)
    queued = submitted.stdout.strip()
    assert "visionq: no live worker serves caption/vit-gpt2" in submitted.stderr  # said at once, without --wait
    assert "it stays queued until one starts" in submitted.stderr
    assert json.loads(run_visionq("status", queued, "--json", env=service_env).stdout)["status"] == "queued"
    canceled = run_visionq("cancel", queued, env=service_env)
    assert canceled.returncode == 0
    assert canceled.stdout.strip() == f"{queued} canceled"
    lists = queue_lists(JobKind.CAPTION, "vit-gpt2", service_env.get("VISIONQ_REDIS_PREFIX", "visionq"))
    queue = redis.Redis.from_url(service_env["VISIONQ_REDIS_URL"])
    assert not any(queued.encode() in raw for key in lists for raw in queue.lrange(key, 0, -1))  # its message too
    assert json.loads(run_visionq("status", queued, "--json", env=service_env).stdout)["status"] == "canceled"
    again = run_visionq("cancel", queued, env=service_env)
    assert again.returncode == 0 and again.stdout.strip() == f"{queued} already canceled: nothing to cancel"


def test_workers_command(service_env: dict, worker) -> None:
    # The busy/ready flip is written lazily by the heartbeat thread: a job of an earlier
    # test may still show as busy for one beat.
    deadline = time.monotonic() + 30
    while True:
        listed = json.loads(run_visionq("workers", "--json", env=service_env).stdout)
        mine = [w for w in listed if w["pid"] == worker.pid]
        if (mine and mine[0]["state"] == "ready") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert mine and mine[0]["state"] == "ready"
    assert sorted(mine[0]["kinds"]) == ["caption", "generate", "segment"]


def test_a_reader_that_leaves_early_ends_the_command_quietly(service_env: dict, worker) -> None:
    """`visionq workers --json | head -1`: no "Broken pipe" error, no traceback at exit."""
    import subprocess

    from tests.support.cli import visionq_command, visionq_env

    process = subprocess.Popen([*visionq_command(), "workers", "--json"], env=visionq_env(service_env, True),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # gone before the command writes a byte
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 141 and stderr == b""


def test_help_shows_each_options_default(capsys: pytest.CaptureFixture[str]) -> None:
    from producer.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for shown in ("--width WIDTH pixels, a multiple of 8 (default: 512)", "(default: 0.0)", "(default: normal)"):
        assert shown in text, text
    assert "(default: None)" not in text


def test_every_option_of_every_command_has_help() -> None:
    """With its default shown where it has one (an option without help shows neither)."""
    import argparse

    from producer.cli import MODEL_EXAMPLES, build_parser
    from tasks.models import CATALOGUE

    def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        found = [parser]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    found += parsers(child)
        return found

    bare = [f"{parser.prog} {action.option_strings[0]}" for parser in parsers(build_parser())
            for action in parser._actions if action.option_strings and not action.help]
    assert bare == []
    for kind, example in MODEL_EXAMPLES.items():  # names the kind's catalogue has
        names = {entry.full_name.split("/", 1)[1] for entry in CATALOGUE if entry.full_name.startswith(kind + "/")}
        assert set(example.removeprefix("e.g. ").split(", ")) <= names, kind


def test_queues_table_keeps_its_columns_under_long_model_names(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse
    import types

    from producer import cli
    from tasks import queues

    per_model = {"high": 0, "normal": 2, "low": 0, "total": 2}
    depths = {"segment": {**per_model, "oldest_age_s": 1.5, "models": {
        "clipseg": {**per_model, "live_workers": 1}, "owlv2-sam-large": {**per_model, "live_workers": 0}}}}
    monkeypatch.setattr(queues, "queue_report", lambda *_: depths)
    monkeypatch.setattr(cli, "_client", lambda: types.SimpleNamespace(
        gateway=None, store=types.SimpleNamespace(redis=None), settings=types.SimpleNamespace(redis_prefix="p")))
    assert cli._queues(argparse.Namespace(json=False)) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    end = header.index("high") + len("high")  # the columns are right-aligned: every row's first count ends here
    assert len(rows) == 3 and all(row[end - 1] in "0123456789" and row[end] == " " for row in rows), rows
