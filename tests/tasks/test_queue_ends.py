"""Taking the messages of expired, purged and dead jobs out of a deep queue, against a real Redis:
the right messages go, the others stay in order, and Redis is never held for the whole list."""
from __future__ import annotations

import json
import time

import pytest
import redis

from tasks import expiry
from tasks.expiry import QueueEnds
from tasks.kinds import JobKind, Priority, priority_list_key
from tasks.messages import task_message
from tasks.models import model_queue
from tasks.queues import ChunkReader
from tasks.status import JobStatus
from tasks.store import JobStore

pytestmark = pytest.mark.integration  # a real redis-server

DEPTH = 3000


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> JobStore:
    return JobStore(redis_client, ttl_s=600, prefix=key_prefix)


def fill(store: JobStore, jobs: int, queue_timeout_s: float = 600) -> tuple[str, list[str]]:
    """`jobs` queued caption jobs with their Celery messages, the first submitted at the list's tail."""
    queue = model_queue("caption", None)
    key = priority_list_key(queue, Priority.NORMAL, store.prefix)
    ids = []
    with store.redis.pipeline(transaction=False) as pipe:
        for n in range(jobs):
            record, _ = store.create(JobKind.CAPTION, {"image": f"s3://b/{n}"}, queue_timeout_s=queue_timeout_s)
            ids.append(record.id)
            kwargs = {"job_id": record.id, "request": {"image": f"s3://b/{n}"}}
            pipe.lpush(key, task_message(JobKind.CAPTION.task_name, record.id, kwargs, queue, Priority.NORMAL))
        pipe.execute()
    return key, ids


def queued_ids(store: JobStore, key: str) -> list[str]:
    """Oldest first."""
    return [json.loads(raw)["headers"]["id"] for raw in reversed(store.redis.lrange(key, 0, -1))]


def counting_chunk_reads(ends: QueueEnds) -> list[int]:
    """The offsets of the chunks `ends` reads the ids of, as it reads them."""
    offsets: list[int] = []
    read = ends._ids_in_chunk
    ends._ids_in_chunk = lambda key, offset, size: offsets.append(offset) or read(key, offset, size)
    return offsets


def test_expiry_takes_the_oldest_messages_reading_only_the_tail(store: JobStore) -> None:
    key, ids = fill(store, 5, queue_timeout_s=1)
    key, more = fill(store, DEPTH)
    ends = QueueEnds(store)
    chunks = counting_chunk_reads(ends)
    ended = ends.expire_due(now=time.time() + 10)
    assert chunks == [0]  # the tail's chunk, where a whole-list read would be DEPTH / chunk of them
    assert sorted(r.id for r in ended) == sorted(ids)
    assert queued_ids(store, key) == more  # the rest, in order


def test_a_message_past_the_scan_limit_stays_for_a_worker_to_drop(
    store: JobStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(expiry, "SCAN_CHUNK", 10)
    monkeypatch.setattr(expiry, "EXPIRY_SCAN_LIMIT", 20)
    key, older = fill(store, 30)
    key, expiring = fill(store, 1, queue_timeout_s=1)  # 30 messages from the tail: past the limit
    assert [r.id for r in QueueEnds(store).expire_due(now=time.time() + 10)] == expiring
    assert queued_ids(store, key) == older + expiring  # the job is final; its message left for a worker


def test_purge_takes_every_message_of_a_deep_queue_a_chunk_at_a_time(
    store: JobStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(expiry, "SCAN_CHUNK", 50)
    key, ids = fill(store, 420)
    ended = QueueEnds(store).purge(JobKind.CAPTION, "an operator purged it")
    assert len(ended) == 420 and store.redis.llen(key) == 0
    assert store.get(ids[0]).status.value == "canceled"


def test_purge_ends_the_queued_jobs_a_chunk_at_a_time_and_says_how_far_it_is(
    store: JobStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(expiry, "PURGE_CHUNK", 100)
    key, ids = fill(store, 250)
    store.advance(ids[7], JobStatus.RUNNING, attempt_increment=1)  # a worker took it: not purged
    store.redis.hset(store.job_key(ids[9]), "kind", "\"generate\"")  # another kind's job: not purged
    seen: list[int] = []
    ended = QueueEnds(store).purge(JobKind.CAPTION, "an operator purged it", on_progress=seen.append)
    assert sorted(r.id for r in ended) == sorted(set(ids) - {ids[7], ids[9]})
    assert all(r.status is JobStatus.CANCELED and r.error["message"] == "an operator purged it" for r in ended)
    assert len(seen) == 3 and seen == sorted(seen) and seen[-1] == 248  # after each chunk of 100 queued ids
    assert store.get(ids[7]).status is JobStatus.RUNNING and store.get(ids[9]).status is JobStatus.QUEUED
    assert queued_ids(store, key) == [ids[7], ids[9]]


def test_expiry_ends_only_jobs_still_queued_and_forgets_the_deadlines_of_records_gone(store: JobStore) -> None:
    key, ids = fill(store, 4, queue_timeout_s=1)
    store.advance(ids[1], JobStatus.RUNNING, attempt_increment=1)
    store.redis.delete(store.job_key(ids[2]))
    ended = QueueEnds(store).expire_due(now=time.time() + 10)
    assert sorted(r.id for r in ended) == sorted([ids[0], ids[3]])
    assert all(r.error["code"] == "expired" for r in ended)
    assert store.redis.zcard(store.deadlines_key) == 0
    assert queued_ids(store, key) == [ids[1], ids[2]]


def test_dead_messages_are_dropped_and_live_ones_kept(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(expiry, "SCAN_CHUNK", 7)
    key, ids = fill(store, 40)
    canceled = ids[3::4]
    for job_id in canceled:
        store.request_cancel(job_id)
    store.redis.delete(store.job_key(ids[0]))  # a record long gone
    assert QueueEnds(store).drop_dead_messages(JobKind.CAPTION) == len(canceled) + 1
    assert queued_ids(store, key) == [i for i in ids[1:] if i not in canceled]


def test_the_chunk_script_removes_only_the_named_jobs_within_its_chunk(store: JobStore) -> None:
    key, ids = fill(store, 10)
    ends = QueueEnds(store)
    # Tail offset 2, length 3: the 3rd to 5th oldest. ids[0] is outside it, ids[9] is not named.
    assert ends._remove(keys=[key], args=[2, 3, ids[0], ids[3], ids[4]]) == 2
    assert queued_ids(store, key) == [i for i in ids if i not in (ids[3], ids[4])]
    assert ends._remove(keys=[key], args=[50, 3, ids[0]]) == 0  # past the head: nothing


def test_an_error_taking_messages_out_still_returns_the_ended_jobs(
    store: JobStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The expirer owes every job it ended its final event: a failure after the ending is logged."""
    key, ids = fill(store, 2, queue_timeout_s=1)
    ends = QueueEnds(store)

    def redis_goes_away(*_: object) -> None:
        raise redis.ConnectionError("Redis went away")

    ends._ids_in_chunk = redis_goes_away
    assert sorted(r.id for r in ends.expire_due(now=time.time() + 10)) == sorted(ids)
    assert all(store.get(i).status.value == "failed" for i in ids)


def test_a_job_that_cannot_be_ended_leaves_the_others_ended_and_reported(store: JobStore) -> None:
    """One job's ending failing in Redis (its record spoiled between the read and the end) is
    that job's alone: the others end, are returned (their events owed) and leave the queue."""
    key, ids = fill(store, 3, queue_timeout_s=1)
    ends = QueueEnds(store)
    end = ends._end_queued

    def spoil_one_then_end(doomed: list, status: JobStatus) -> list:
        store.redis.delete(store.job_key(ids[1]))
        store.redis.set(store.job_key(ids[1]), "not a job hash")
        return end(doomed, status)

    ends._end_queued = spoil_one_then_end  # type: ignore[method-assign]
    assert sorted(r.id for r in ends.expire_due(now=time.time() + 10)) == sorted([ids[0], ids[2]])
    assert queued_ids(store, key) == [ids[1]]


def test_a_chunks_ids_come_tail_first_with_its_length(store: JobStore) -> None:
    key, ids = fill(store, 5)
    store.redis.rpush(key, "not a celery message")  # at the tail
    read, found = ChunkReader(store.redis)(key, 0, 4)
    assert read == 4 and found == ["", *ids[:3]]
    read, found = ChunkReader(store.redis)(key, 4, 4)
    assert read == 2 and found == ids[3:]
    read, found = ChunkReader(store.redis)(key, 0, 4, among=[ids[2], ids[0], ids[4]])  # ids[4]: another chunk
    assert read == 4 and found == [ids[0], ids[2]]
    assert ChunkReader(store.redis)(key, 0, 4, among=set()) == (4, [])  # none looked for: none found


def test_a_job_canceled_while_queued_takes_its_message_along_when_near_either_end(
    store: JobStore, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(expiry, "SCAN_CHUNK", 10)
    key, ids = fill(store, 40)
    ends = QueueEnds(store)
    for job_id in (ids[0], ids[-1], ids[20]):  # the oldest, the newest, one in the middle
        store.request_cancel(job_id)
    assert ends.take_message_of(store.get(ids[0])) and ends.take_message_of(store.get(ids[-1]))
    assert not ends.take_message_of(store.get(ids[20]))  # out of reach: a worker drops it
    assert queued_ids(store, key) == ids[1:-1]


def test_a_deadline_at_the_ttl_still_ends_the_job_expired(redis_client: redis.Redis, key_prefix: str) -> None:
    """A short VISIONQ_JOB_TTL_S cuts the default queue timeout to it: the record vanished at its
    deadline, before an expirer could end it, with no final status and its message left queued."""
    short = JobStore(redis_client, ttl_s=2, prefix=key_prefix)
    key, ids = fill(short, 1, queue_timeout_s=2)
    assert redis_client.ttl(short.job_key(ids[0])) > 2 + 30  # it outlives its deadline
    time.sleep(2.5)  # past the deadline and the TTL both
    [ended] = QueueEnds(short).expire_due()
    assert ended.id == ids[0] and ended.status is JobStatus.FAILED and ended.error["code"] == "expired"
    assert queued_ids(short, key) == []
    assert 0 < redis_client.ttl(short.job_key(ids[0])) <= 2  # ended: the usual TTL again
