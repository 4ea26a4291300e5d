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
