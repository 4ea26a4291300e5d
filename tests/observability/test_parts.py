"""The pure parts: deadlines, the JSON log format and its masking, fleet metrics ports."""
from __future__ import annotations

import json
import logging

import pytest

from tasks.errors import InvalidInput
from tasks.expiry import check_queue_timeout, past_start_deadline, start_deadline
from tasks.kinds import JobKind
from tasks.logs import JsonFormatter, secrets_of
from tasks.record import JobRecord, new_job_id, parse_time
from tasks.settings import Settings, SettingsError
from tasks.status import JobStatus

SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXZpc2lvbnEtd2ViaG9va3M="


def test_queue_timeout_defaults_per_kind_and_is_checked() -> None:
    settings = Settings.from_env({"VISIONQ_QUEUE_TIMEOUT_SEGMENT_S": "900", "VISIONQ_JOB_TTL_S": "1200"})
    assert check_queue_timeout(None, JobKind.SEGMENT, settings) == 900.0
    assert check_queue_timeout(None, JobKind.CAPTION, settings) == 1200.0  # never past the record's TTL
    assert isinstance(check_queue_timeout(None, JobKind.CAPTION, settings), float)  # a record's JSON says 1200.0
    assert check_queue_timeout(30, JobKind.CAPTION, settings) == 30.0
    for bad in (0, -1, 1201, float("nan"), "60", True):
        with pytest.raises(InvalidInput, match="queue_timeout_s"):
            check_queue_timeout(bad, JobKind.CAPTION, settings)
    with pytest.raises(SettingsError, match="VISIONQ_QUEUE_TIMEOUT_CAPTION_S"):
        Settings.from_env({"VISIONQ_QUEUE_TIMEOUT_CAPTION_S": "0"})
    with pytest.raises(SettingsError, match="VISIONQ_QUEUE_TIMEOUT_CAPTION_S"):
        Settings.from_env({"VISIONQ_QUEUE_TIMEOUT_CAPTON_S": "60"})  # a typo is refused, with the right name
    # Set longer than the record lives: refused, not cut short in silence (the default alone is cut).
    with pytest.raises(SettingsError, match="VISIONQ_QUEUE_TIMEOUT_SEGMENT_S 99999999 is longer than VISIONQ_JOB_TTL_S"):
        Settings.from_env({"VISIONQ_QUEUE_TIMEOUT_SEGMENT_S": "99999999"})
    with pytest.raises(SettingsError, match="VISIONQ_QUEUE_TIMEOUT_CAPTION_S 3600 is longer"):  # the default's value, set
        Settings.from_env({"VISIONQ_QUEUE_TIMEOUT_CAPTION_S": "3600", "VISIONQ_JOB_TTL_S": "1800"})
    assert Settings.from_env({"VISIONQ_JOB_TTL_S": "1800"}).queue_timeout_s(JobKind.CAPTION) == 3600  # cut at submit
    with pytest.raises(InvalidInput, match="queue_timeout_s 99999999 must be"):  # as typed, not 1e+08
        check_queue_timeout(99999999, JobKind.CAPTION, settings)


def test_the_start_deadline_counts_from_created_at() -> None:
    record = JobRecord(id=new_job_id(), kind=JobKind.CAPTION, status=JobStatus.QUEUED,
                       created_at="2026-01-01T00:00:00.000Z", queue_timeout_s=60)
    created = parse_time(record.created_at).timestamp()
    assert start_deadline(record) == created + 60
    assert not past_start_deadline(record, now=created + 59.9)
    assert past_start_deadline(record, now=created + 60)
    record.queue_timeout_s = None
    assert not past_start_deadline(record, now=created + 10**9)


def test_json_lines_carry_the_fields_and_never_a_secret() -> None:
    settings = Settings.from_env({"VISIONQ_WEBHOOK_SECRET": SECRET, "VISIONQ_REDIS_URL": "redis://:pw-123456@h:1/0"})
    env = {"AWS_SECRET_ACCESS_KEY": "aws-secret-abcdef"}
    formatter = JsonFormatter(secrets_of(settings, env))
    record = logging.makeLogRecord({
        "name": "visionq.worker", "levelno": logging.INFO, "levelname": "INFO",
        "msg": "connecting to %s with %s and %s", "args": ("redis://:pw-123456@h:1/0", SECRET, "aws-secret-abcdef"),
        "job_id": "ab" * 16, "kind": "caption", "status": "succeeded", "run_ms": 12.5,
    })
    line = formatter.format(record)
    assert "\n" not in line
    data = json.loads(line)
    assert (data["job_id"], data["kind"], data["status"], data["run_ms"]) == ("ab" * 16, "caption", "succeeded", 12.5)
    assert data["level"] == "INFO" and data["logger"] == "visionq.worker" and data["ts"].endswith("Z")
    for secret in ("pw-123456", SECRET, SECRET.removeprefix("whsec_"), "aws-secret-abcdef"):
        assert secret not in line


def test_each_fleet_child_gets_its_own_metrics_port() -> None:
    from worker.fleet import plan_slots

    slots = plan_slots([0, 1], 2, "cuda", ["--kinds", "caption"], metrics_port=9100)
    ports = [slot.args[slot.args.index("--metrics-port") + 1] for slot in slots]
    assert ports == ["9100", "9101", "9102", "9103"]
    assert all("--metrics-port" not in slot.args for slot in plan_slots(None, 2, "cpu", []))
