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


def test_public_names_format_as_their_values() -> None:
    """Users log and format codes, statuses and kinds: `f"{error.code}"` is "invalid_input", as
    its JSON is, not "ErrorCode.INVALID_INPUT" (Python 3.11 formats a (str, Enum) by its name)."""
    from tasks.errors import ErrorCode, InvalidInput
    from tasks.kinds import JobKind, Priority
    from tasks.webhooks import EventType

    members = [ErrorCode.INVALID_INPUT, JobStatus.SUCCEEDED, JobKind.CAPTION, Priority.HIGH, EventType.STARTED]
    assert [f"{member}" for member in members] == [str(member) for member in members] == [m.value for m in members]
    assert f"{InvalidInput('bad').code}: bad" == "invalid_input: bad"
