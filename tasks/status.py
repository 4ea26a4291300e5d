"""Job statuses and the only transitions allowed between them."""
from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"  # accepted, waiting in its kind's queue
    RUNNING = "running"  # a worker holds it (again after a redelivery, with attempt + 1)
    SUCCEEDED = "succeeded"  # output is complete and stored; final
    FAILED = "failed"  # error says why; final
    CANCELED = "canceled"  # canceled before or while running; final

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})

# from-status -> statuses it may move to. A final status has no way out, which is
# what makes redeliveries and late cancels harmless. running -> running is a
# redelivery after a worker died mid-job (the attempt counter grows).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}
    ),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
}


def can_transition(current: JobStatus, new: JobStatus) -> bool:
    return new in TRANSITIONS[current]


def allowed_sources(new: JobStatus) -> list[JobStatus]:
    """Statuses from which `new` may be reached (what the store's atomic check accepts)."""
    return [s for s, targets in TRANSITIONS.items() if new in targets]
