"""The result writer against a real Redis and real local storage: a job that ended without a
worker's final transition (canceled, purged or expired while queued) gets its result.json."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import redis

from tasks.errors import StorageError
from tasks.expiry import QueueEnds
from tasks.kinds import JobKind
from tasks.record import FileRef
from tasks.status import JobStatus
from tasks.storage import LocalStorage
from tasks.store import JobStore
from worker import results
from worker.results import ResultWriter

pytestmark = pytest.mark.integration  # a real redis-server


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> JobStore:
    return JobStore(redis_client, ttl_s=60, prefix=key_prefix)


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


def stored_result(storage: LocalStorage, job_id: str) -> dict:
    return json.loads((storage.root / "jobs" / job_id / "result.json").read_bytes())


def writer(store: JobStore, storage: LocalStorage, lease_s: int = 60) -> ResultWriter:
    """A result writer whose claims last `lease_s` (a storage retry budget of 0 and the margin)."""
    monkeypatched = ResultWriter(store, storage, storage_retry_s=0)
    monkeypatched.lease_s = lease_s
    return monkeypatched


def noted(store: JobStore) -> list[str]:
    return [i.decode() for i in store.redis.zrange(store.unwritten_key, 0, -1)]


def test_a_job_canceled_while_queued_gets_its_result_json(store: JobStore, storage: LocalStorage) -> None:
    record, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k"})
    running, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k2"})
    store.transition(running.id, JobStatus.RUNNING)
    store.request_cancel(record.id)
    store.request_cancel(running.id)  # only flagged: its worker ends it and writes its file
    assert noted(store) == [record.id]
    assert writer(store, storage).write() == [record.id]
    result = stored_result(storage, record.id)
    assert result["status"] == "canceled" and result["error"]["code"] == "canceled"
    assert result == json.loads(json.dumps(store.get(record.id).to_json_fields()))  # what the record says
    assert noted(store) == []
    assert not (storage.root / "jobs" / running.id).exists()


def test_expired_and_purged_jobs_get_their_result_json(store: JobStore, storage: LocalStorage) -> None:
    expiring, _ = store.create(JobKind.GENERATE, {"prompt": "a"}, queue_timeout_s=1)
    purged, _ = store.create(JobKind.SEGMENT, {"image": "s3://b/k", "prompts": ["car"]})
    ends = QueueEnds(store)
    assert [r.id for r in ends.expire_due(now=time.time() + 10)] == [expiring.id]
    assert [r.id for r in ends.purge(JobKind.SEGMENT, "purged by an operator")] == [purged.id]
    assert sorted(writer(store, storage).write()) == sorted([expiring.id, purged.id])
    assert stored_result(storage, expiring.id)["error"]["code"] == "expired"
    assert stored_result(storage, purged.id)["status"] == "canceled"


def test_a_storage_outage_keeps_the_jobs_noted_until_their_lease_ends(store: JobStore, tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where the storage folder should be")
    away, working = LocalStorage(tmp_path / "blocked"), LocalStorage(tmp_path / "storage")
    leased, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k"})
    store.request_cancel(leased.id)
    assert writer(store, away).write() == []
    assert noted(store) == [leased.id]  # kept, claimed for a lease of 60 s
    assert writer(store, working).write() == []  # not due again before its lease ends
    short, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k2"})
    store.request_cancel(short.id)
    assert writer(store, away, lease_s=0).write() == []  # a lease that ends at once
    assert writer(store, working).write() == [short.id]  # due again on its own
    assert stored_result(working, short.id)["status"] == "canceled"


def test_a_note_made_again_while_its_claim_is_written_stays(store: JobStore, storage: LocalStorage) -> None:
    record, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k"})
    store.request_cancel(record.id)
    racing = writer(store, storage)
    claim = racing._claim

    def noted_again_meanwhile(keys: list[str], args: list) -> list:
        claimed = claim(keys=keys, args=args)
        store.note_unwritten(record.id)  # a refused transition's worker wrote another result.json
        return claimed

    racing._claim = noted_again_meanwhile
    assert racing.write() == [record.id]
    assert noted(store) == [record.id]  # still due: the next round writes it again from the record


def test_two_writers_never_claim_the_same_note(store: JobStore, storage: LocalStorage) -> None:
    ids = []
    for n in range(3):
        record, _ = store.create(JobKind.CAPTION, {"image": f"s3://b/{n}"})
        store.request_cancel(record.id)
        ids.append(record.id)
    first, second = writer(store, storage), writer(store, storage)
    _lease_end, *claimed = [i.decode() for i in first._claim(keys=[store.unwritten_key], args=[2, 60])]
    assert len(claimed) == 2
    assert second.write() == [i for i in ids if i not in claimed]  # only the third
    assert sorted(noted(store)) == sorted(claimed)  # the first's, leased, until it writes them


def test_a_gone_record_and_a_job_not_final_are_dropped(store: JobStore, storage: LocalStorage) -> None:
    gone, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k"})
    queued, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k2"})
    store.redis.delete(store.job_key(gone.id))
    store.note_unwritten(gone.id)
    store.note_unwritten(queued.id)  # never noted so by the service: whoever ends it writes its file
    assert writer(store, storage).write() == []
    assert noted(store) == []
    assert not (storage.root / "jobs").exists()


def test_a_transition_notes_the_job_only_when_applied_and_beside_an_acknowledgement(store: JobStore) -> None:
    from tasks.store import Delivery

    record, _ = store.create(JobKind.GENERATE, {"prompt": "a"})
    store.transition(record.id, JobStatus.RUNNING)
    delivery = Delivery("tag-1", f"{store.prefix}:unacked_index", f"{store.prefix}:unacked")
    store.redis.hset(delivery.hash_key, "tag-1", "[]")
    outcome = store.advance(record.id, JobStatus.FAILED, acknowledge=delivery, note_unwritten=True,
                            error={"code": "timeout", "message": "m"})
    assert outcome.applied and noted(store) == [record.id]  # the last of seven keys
    assert store.redis.hget(delivery.hash_key, "tag-1") is None  # and acknowledged
    store.redis.delete(store.unwritten_key)
    refused = store.advance(record.id, JobStatus.SUCCEEDED, note_unwritten=True)
    assert not refused.applied and noted(store) == []


def test_the_latest_notes_are_written_first(
    store: JobStore, storage: LocalStorage, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cancel made now is not written after a purge's backlog."""
    backlog, latest = [], None
    for n in range(3):
        record, _ = store.create(JobKind.CAPTION, {"image": f"s3://b/{n}"})
        store.request_cancel(record.id)
        backlog.append(record.id)
    store.redis.zadd(store.unwritten_key, {job_id: time.time() - 100 for job_id in backlog})  # a purge before
    latest, _ = store.create(JobKind.CAPTION, {"image": "s3://b/latest"})
    store.request_cancel(latest.id)
    monkeypatch.setattr(results, "PER_ROUND", 1)
    assert writer(store, storage).write() == [latest.id]


def test_a_round_goes_on_while_whole_batches_are_due(
    store: JobStore, storage: LocalStorage, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for n in range(5):
        record, _ = store.create(JobKind.CAPTION, {"image": f"s3://b/{n}"})
        store.request_cancel(record.id)
    monkeypatch.setattr(results, "PER_ROUND", 2)
    assert len(writer(store, storage).run_once()) == 5  # batches of 2, 2 and 1
    assert noted(store) == []


class _SlowStorage(LocalStorage):
    """Local storage whose writes take a network round trip's time, counting how many overlap."""

    def __init__(self, root: Path, fail: bool = False) -> None:
        super().__init__(root)
        self.fail, self.in_flight, self.most_at_once = fail, 0, 0
        self._lock = threading.Lock()

    def put(self, key: str, data: bytes, content_type: str) -> FileRef:
        with self._lock:
            self.in_flight += 1
            self.most_at_once = max(self.most_at_once, self.in_flight)
        try:
            time.sleep(0.2)  # long beside starting WRITERS threads, even on a busy machine
            if self.fail:
                raise StorageError("the store is away")
            return super().put(key, data, content_type)
        finally:
            with self._lock:
                self.in_flight -= 1


def cancel_queued(store: JobStore, jobs: int) -> list[str]:
    ids = []
    for n in range(jobs):
        record, _ = store.create(JobKind.CAPTION, {"image": f"s3://b/{n}"})
        store.request_cancel(record.id)
        ids.append(record.id)
    return ids


def test_files_are_written_several_at_a_time(store: JobStore, tmp_path: Path) -> None:
    """On S3 each file is a round trip: a backlog is written WRITERS at a time."""
    ids = cancel_queued(store, 20)
    storage = _SlowStorage(tmp_path / "storage")
    assert sorted(writer(store, storage).write()) == sorted(ids)
    assert storage.most_at_once == results.WRITERS
    assert noted(store) == [] and all(stored_result(storage, i)["status"] == "canceled" for i in ids)


def test_a_storage_error_ends_the_round_and_keeps_every_note(store: JobStore, tmp_path: Path) -> None:
    ids = cancel_queued(store, 20)
    storage = _SlowStorage(tmp_path / "storage", fail=True)
    assert writer(store, storage).write() == []
    assert storage.most_at_once <= results.WRITERS
    assert sorted(noted(store)) == sorted(ids)  # each due again when its lease ends
