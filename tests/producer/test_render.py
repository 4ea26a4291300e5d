"""What `visionq status` and `visionq webhooks dead` print: never a control character from remote text."""
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
