"""How Celery sees a job that failed: an exception it can pickle, so `throws` matches it."""
from __future__ import annotations

import pickle

from celery.utils.serialization import get_pickleable_exception

from worker.observe import JobFailed


def test_job_failed_survives_celerys_pickling_as_itself() -> None:
    failed = JobFailed("invalid_input", "image is truncated")
    back = pickle.loads(pickle.dumps(failed))
    assert (type(back), back.code, back.message, str(back)) == (
        JobFailed, "invalid_input", "image is truncated", "invalid_input: image is truncated")
    # Celery wraps an exception it cannot rebuild; a wrapper no longer matches the task's `throws`.
    assert type(get_pickleable_exception(failed)) is JobFailed


def test_a_final_lines_durations_are_rounded_to_the_microsecond(caplog) -> None:
    import logging

    from tasks.kinds import JobKind
    from tasks.record import JobRecord, new_job_id
    from tasks.status import JobStatus
    from worker.observe import log_final

    record = JobRecord(id=new_job_id(), kind=JobKind.CAPTION, status=JobStatus.SUCCEEDED,
                       created_at="2026-01-01T00:00:00.000Z", metrics={"run_ms": 36.477000000000004, "batch_size": 8})
    with caplog.at_level(logging.INFO, logger="visionq.worker"):
        log_final(record)
    [line] = caplog.records
    assert line.run_ms == 36.477 and line.batch_size == 8 and "run_ms=36.477 batch_size=8" in line.getMessage()
