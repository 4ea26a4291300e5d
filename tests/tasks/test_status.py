from __future__ import annotations

import pytest

from tasks.status import FINAL_STATUSES, JobStatus, allowed_sources, can_transition


@pytest.mark.parametrize("final", sorted(FINAL_STATUSES))
def test_final_status_never_changes(final: JobStatus) -> None:
    assert not any(can_transition(final, new) for new in JobStatus)


def test_lifecycle() -> None:
    assert can_transition(JobStatus.QUEUED, JobStatus.RUNNING)
    assert can_transition(JobStatus.QUEUED, JobStatus.CANCELED)
    assert can_transition(JobStatus.RUNNING, JobStatus.RUNNING)  # redelivery
    assert not can_transition(JobStatus.QUEUED, JobStatus.SUCCEEDED)
    assert allowed_sources(JobStatus.SUCCEEDED) == [JobStatus.RUNNING]
