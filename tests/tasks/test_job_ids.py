"""Job ids are checked wherever they enter: messages, records and local storage paths."""
from __future__ import annotations

from pathlib import Path

import pytest

from tasks.errors import InvalidInput
from tasks.kinds import JobKind
from tasks.record import JobRecord, check_job_id, new_job_id
from tasks.status import JobStatus
from tasks.storage import LocalStorage

FORGED = ["../../x", "", "x" * 32, "A" * 32, "0" * 31, "0" * 33, "0" * 31 + "/", "0" * 32 + "\n", None, 7]


def test_ids_the_store_makes_pass() -> None:
    job_id = new_job_id()
    assert check_job_id(job_id) == job_id


@pytest.mark.parametrize("value", FORGED, ids=repr)
def test_anything_else_is_refused(value: object) -> None:
    with pytest.raises(InvalidInput, match="job id"):
        check_job_id(value)


def test_a_record_with_a_forged_id_does_not_load() -> None:
    data = JobRecord(id=new_job_id(), kind=JobKind.CAPTION, status=JobStatus.QUEUED, created_at="2026-01-01T00:00:00Z").to_dict()
    assert JobRecord.from_dict(data).id == data["id"]
    with pytest.raises(InvalidInput, match="'../../x'"):
        JobRecord.from_dict({**data, "id": "../../x"})


def test_local_storage_never_writes_outside_its_folder(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    with pytest.raises(InvalidInput, match="outside the storage folder"):
        storage.put("jobs/../../../x/result.json", b"{}", "application/json")
    assert [p.name for p in tmp_path.rglob("*")] == []
    ref = storage.put("jobs/0123/result.json", b"{}", "application/json")
    assert Path(ref.uri.removeprefix("file://")).is_relative_to(tmp_path / "storage")
