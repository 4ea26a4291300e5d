"""`Job` through the JobSource interface, with a source that is plain data (nothing running)."""
from __future__ import annotations

import logging
from typing import Callable

import pytest

from producer.job import Job
from tasks.kinds import JobKind
from tasks.record import JobRecord, utc_now
from tasks.status import JobStatus


def record(status: JobStatus, kind: JobKind = JobKind.CAPTION) -> JobRecord:
    return JobRecord(id="job-1", kind=kind, status=status, created_at=utc_now())


class ScriptedSource:
    """Answers `wait` from a script: each entry is a record to return or an exception to raise."""

    address = "redis://127.0.0.1:9/0"

    def __init__(self, waits: list[JobRecord | Exception], serving: set[str]) -> None:
        self.waits = list(waits)
        self.serving = serving
        self.canceled: list[str] = []

    def get(self, job_id: str) -> JobRecord:
        return record(JobStatus.RUNNING)

    def cancel(self, job_id: str) -> JobRecord:
        self.canceled.append(job_id)
        return record(JobStatus.CANCELED)

    def wait(self, job_id: str, timeout_s: float | None,
             on_change: Callable[[JobRecord], None] | None = None, seen: JobRecord | None = None) -> JobRecord:
        outcome = self.waits.pop(0)
        if isinstance(outcome, Exception):
            if on_change is not None:
                on_change(record(JobStatus.QUEUED))
            raise outcome
        return outcome

    def serving_kinds(self) -> set[str]:
        return self.serving


def test_a_queued_job_with_no_worker_for_its_kind_says_so_and_keeps_waiting(caplog) -> None:
    source = ScriptedSource([TimeoutError("still queued"), record(JobStatus.SUCCEEDED)], serving={"generate"})
    with caplog.at_level(logging.WARNING, logger="visionq"):
        job = Job(source, record(JobStatus.QUEUED)).wait()
    assert job.status == "succeeded"
    [note] = [r.getMessage() for r in caplog.records]
    assert note.startswith("no live worker serves caption: is `visionq worker` running against redis://127.0.0.1:9/0?")


def test_no_note_when_a_worker_serves_the_kind(caplog) -> None:
    source = ScriptedSource([TimeoutError("still queued"), record(JobStatus.SUCCEEDED)], serving={"caption"})
    with caplog.at_level(logging.WARNING, logger="visionq"):
        assert Job(source, record(JobStatus.QUEUED)).wait().status == "succeeded"
    assert caplog.records == []


def test_timeout_names_the_whole_wait() -> None:
    source = ScriptedSource([TimeoutError("first part"), TimeoutError("second part")], serving=set())
    with pytest.raises(TimeoutError, match=r"job job-1 is still queued after 30 s"):
        Job(source, record(JobStatus.QUEUED)).wait(timeout=30)


def test_refresh_and_cancel_go_through_the_source() -> None:
    source = ScriptedSource([], serving=set())
    job = Job(source, record(JobStatus.QUEUED))
    assert job.refresh().status == "running"
    assert job.cancel().status == "canceled" and source.canceled == ["job-1"]


def test_a_job_for_a_model_no_live_worker_loaded_says_which(caplog) -> None:
    def for_vit_gpt2(status: JobStatus) -> JobRecord:
        named = record(status)
        named.model = "vit-gpt2"
        return named

    class ModelSource(ScriptedSource):
        def wait(self, job_id: str, timeout_s: float | None,
                 on_change: Callable[[JobRecord], None] | None = None, seen: JobRecord | None = None) -> JobRecord:
            outcome = self.waits.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

    # Workers serve caption, but only its default model: the job's model is what counts.
    source = ModelSource([TimeoutError("still queued"), for_vit_gpt2(JobStatus.SUCCEEDED)],
                         serving={"caption", "caption/blip"})
    with caplog.at_level(logging.WARNING, logger="visionq"):
        Job(source, for_vit_gpt2(JobStatus.QUEUED)).wait()
    [note] = [r.getMessage() for r in caplog.records]
    assert note.startswith("no live worker serves caption/vit-gpt2:")


def test_on_change_hears_of_changes_only() -> None:
    running = record(JobStatus.RUNNING)
    halfway = record(JobStatus.RUNNING)
    halfway.progress = 0.5
    redelivered = record(JobStatus.RUNNING)  # its worker died: running again, from the start
    redelivered.attempt = 2

    class RepeatingSource(ScriptedSource):
        def wait(self, job_id: str, timeout_s: float | None,
                 on_change: Callable[[JobRecord], None] | None = None, seen: JobRecord | None = None) -> JobRecord:
            for each in (record(JobStatus.QUEUED), record(JobStatus.QUEUED), running, running, halfway,
                         redelivered, redelivered):
                on_change(each)
            done = record(JobStatus.SUCCEEDED)
            on_change(done)
            return done

    seen: list[tuple[str, float, int]] = []
    Job(RepeatingSource([], serving=set()), record(JobStatus.QUEUED)).wait(
        on_change=lambda job: seen.append((job.status, job.progress, job.to_dict()["attempt"])))
    assert seen == [("queued", 0.0, 0), ("running", 0.0, 0), ("running", 0.5, 0), ("running", 0.0, 2),
                    ("succeeded", 0.0, 0)]


def test_the_no_worker_note_names_a_prefix_of_its_own() -> None:
    """Workers under another VISIONQ_REDIS_PREFIX are invisible too: the note names the one it reads."""
    import redis

    from producer.redis_source import RedisJobSource
    from tasks.store import JobStore

    def address(prefix: str) -> str:  # the clients never connect here
        return RedisJobSource(JobStore(redis.Redis(), ttl_s=60, prefix=prefix), None, "redis://:pw@127.0.0.1:9/0").address

    assert address("visionq") == "redis://:***@127.0.0.1:9/0"
    assert address("staging") == "redis://:***@127.0.0.1:9/0 with VISIONQ_REDIS_PREFIX=staging"
