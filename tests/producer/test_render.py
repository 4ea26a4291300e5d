"""What `visionq status`, `visionq webhooks dead` and a long `visionq purge` print: never a control character
from remote text, and progress only where it helps."""
from __future__ import annotations

import io

from producer.render import ProgressLine, describe, describe_dead, printable

HOSTILE = "OK\x1b[2J\x1b]0;owned\x07\r\nfake line\u202etxt.exe\x9b31m\x00"


def assert_clean(text: str) -> None:
    assert all(c.isprintable() or c == "\n" for c in text), repr(text)


def test_printable_drops_controls_and_keeps_text() -> None:
    assert printable(HOSTILE) == "OK[2J]0;owned  fake linetxt.exe31m"
    assert printable("légende — ok") == "légende — ok"


def test_status_output_has_no_control_characters() -> None:
    record = {
        "id": "0" * 32, "kind": "caption", "status": "failed\x1b[32m",
        "error": {"code": "invalid_input", "message": f"fetching 'http://x/' answered HTTP 500 {HOSTILE}"},
        "output": {"segments": [{"label": HOSTILE, "area": 0.5, "mask": {"uri": "s3://b/k\x1b[0m"}}]},
        "metrics": {},
    }
    text = describe(record)
    assert_clean(text)
    assert "answered HTTP 500 OK[2J" in text
    assert len(text.splitlines()) == 3  # a remote line break cannot forge a line


def test_status_of_a_running_job_shows_its_progress() -> None:
    record = {"id": "0" * 32, "kind": "generate", "status": "running", "progress": 0.375, "metrics": {}}
    assert describe(record).splitlines()[0] == f"{'0' * 32}  generate  running  38%"
    assert describe({**record, "progress": "x"}).splitlines()[0].endswith("running")  # not a number: left out


def test_progress_line_has_no_control_characters_of_the_record() -> None:
    class Job:
        id, kind, status, progress = "0" * 32, "caption", "running\x1b[2K\rsucceeded", 0.5

    stream = io.StringIO()
    ProgressLine(stream).update(Job())
    assert_clean(stream.getvalue())


def test_dead_delivery_line_has_no_control_characters() -> None:
    line = describe_dead({
        "id": "msg_1", "type": "job.succeeded", "url": "https://hooks.example/cb",
        "attempts": [{}, {}], "reason": f"HTTP 503 {HOSTILE}",
    })
    assert "\n" not in line
    assert_clean(line)
    assert line.endswith("2 attempts  HTTP 503 OK[2J]0;owned  fake linetxt.exe31m")


def test_a_purge_says_how_far_it_is_at_most_once_a_second(monkeypatch, capsys) -> None:
    from producer import cli

    now = [100.0]
    monkeypatch.setattr(cli.time, "monotonic", lambda: now[0])
    progress = cli._PurgeProgress("caption")
    progress(500)  # within the first second: nothing
    now[0] += 1.2
    progress(1000)
    now[0] += 0.5
    progress(1500)  # half a second after the last line: nothing
    now[0] += 0.6
    progress(2000)
    progress.close()
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout keeps the purge's one summary line
    assert captured.err.splitlines() == ["canceled 1000 queued caption jobs so far...",
                                         "canceled 2000 queued caption jobs so far...",
                                         "taking their messages out of the queue..."]


def test_a_short_purge_says_nothing_on_the_way(capsys) -> None:
    from producer import cli

    progress = cli._PurgeProgress("caption")
    progress(3)
    progress.close()
    assert capsys.readouterr().err == ""
