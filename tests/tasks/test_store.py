from __future__ import annotations

import json
import pickle
import threading
import time
from typing import Any

import pytest
import redis

from producer.redis_server import RedisServer
from tasks.errors import InvalidInput, JobNotFound
from tasks.kinds import JobKind
from tasks.status import JobStatus
from tasks.store import JobStore

pytestmark = pytest.mark.integration  # a real redis-server


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> JobStore:
    return JobStore(redis_client, ttl_s=60, prefix=key_prefix)


def test_create_and_get(store: JobStore) -> None:
    record, created = store.create(JobKind.CAPTION, {"image": "s3://b/k"})
    assert created
    loaded = store.get(record.id)
    assert loaded.status is JobStatus.QUEUED
    assert loaded.input == {"image": "s3://b/k"}
    assert loaded.attempt == 0
    assert 0 < store.redis.ttl(store.job_key(record.id)) <= 60


def test_unknown_job(store: JobStore) -> None:
    with pytest.raises(JobNotFound, match="no job 'nope'") as raised:
        store.get("nope")
    assert raised.value.code == "not_found"  # the gateway's 404 code: one code whichever way a client asks


def test_idempotency_key_returns_existing_job(store: JobStore) -> None:
    first, created = store.create(JobKind.GENERATE, {"prompt": "a"}, idempotency_key="order-1")
    again, created_again = store.create(JobKind.GENERATE, {"prompt": "a"}, idempotency_key="order-1")
    assert created and not created_again
    assert again.id == first.id
    other, _ = store.create(JobKind.GENERATE, {"prompt": "a"}, idempotency_key="order-2")
    assert other.id != first.id


def test_transitions_are_atomic_and_final_is_final(store: JobStore) -> None:
    record, _ = store.create(JobKind.CAPTION, {})
    assert store.transition(record.id, JobStatus.RUNNING, attempt_increment=1, worker="w1")
    assert store.transition(record.id, JobStatus.SUCCEEDED, output={"text": "hi"})
    assert not store.transition(record.id, JobStatus.FAILED, error={"code": "internal", "message": "x"})
    assert not store.transition(record.id, JobStatus.RUNNING)
    final = store.get(record.id)
    assert final.status is JobStatus.SUCCEEDED
    assert final.output == {"text": "hi"}
    assert final.error is None
    assert final.attempt == 1


def test_racing_finishers_only_one_wins(store: JobStore) -> None:
    record, _ = store.create(JobKind.CAPTION, {})
    store.transition(record.id, JobStatus.RUNNING, attempt_increment=1)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def finish(i: int) -> None:
        barrier.wait()
        status = JobStatus.SUCCEEDED if i % 2 else JobStatus.FAILED
        results.append(store.transition(record.id, status, output={"i": i}))

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1


def test_cancel_queued_is_immediate(store: JobStore) -> None:
    record, _ = store.create(JobKind.CAPTION, {})
    assert store.request_cancel(record.id) == (JobStatus.CANCELED, True)
    assert store.request_cancel(record.id) == (JobStatus.CANCELED, False)
    canceled = store.get(record.id)
    assert canceled.status is JobStatus.CANCELED
    assert canceled.error["code"] == "canceled"
    assert not store.transition(record.id, JobStatus.RUNNING)


def test_cancel_running_sets_flag_only(store: JobStore) -> None:
    record, _ = store.create(JobKind.GENERATE, {})
    store.transition(record.id, JobStatus.RUNNING, attempt_increment=1)
    assert not store.cancel_requested(record.id)
    assert store.request_cancel(record.id) == (JobStatus.RUNNING, False)
    assert store.cancel_requested(record.id)


def test_cancel_final_changes_nothing(store: JobStore) -> None:
    record, _ = store.create(JobKind.CAPTION, {})
    store.transition(record.id, JobStatus.RUNNING, attempt_increment=1)
    store.transition(record.id, JobStatus.SUCCEEDED)
    assert store.request_cancel(record.id) == (JobStatus.SUCCEEDED, False)
    assert store.get(record.id).status is JobStatus.SUCCEEDED


def test_progress_only_while_running(store: JobStore) -> None:
    record, _ = store.create(JobKind.GENERATE, {})
    store.set_progress(record.id, 0.5)
    assert store.get(record.id).progress == 0.0
    store.transition(record.id, JobStatus.RUNNING, attempt_increment=1)
    assert not store.set_progress(record.id, 0.5)  # no cancel requested
    assert store.get(record.id).progress == 0.5


def test_the_transitions_and_progress_writes_carry_the_cancel_check(store: JobStore) -> None:
    record, _ = store.create(JobKind.GENERATE, {})
    assert not store.advance(record.id, JobStatus.RUNNING, attempt_increment=1).cancel_requested
    store.request_cancel(record.id)
    assert store.set_progress(record.id, 0.7)
    outcome = store.advance(record.id, JobStatus.CANCELED, completed_at="2026-01-01T00:00:00Z")
    assert outcome.applied and outcome.cancel_requested
    assert store.get(record.id).status is JobStatus.CANCELED
    assert not store.advance(record.id, JobStatus.SUCCEEDED).applied  # final stays final


def test_a_cancel_requested_while_running_wins_the_final_transition(store: JobStore) -> None:
    record, _ = store.create(JobKind.GENERATE, {})
    store.advance(record.id, JobStatus.RUNNING, attempt_increment=1, progress=0.0)
    store.set_progress(record.id, 0.4)
    store.request_cancel(record.id)
    error = {"code": "canceled", "message": "canceled while running"}
    outcome = store.advance(record.id, JobStatus.SUCCEEDED, cancel_error=error, output={"text": "x"}, progress=1.0,
                            completed_at="2026-01-01T00:00:00Z")
    assert outcome.applied and outcome.status is JobStatus.CANCELED
    final = store.get(record.id)
    assert final.status is JobStatus.CANCELED and final.error == error and final.output is None
    assert final.progress == 0.4 and final.completed_at == "2026-01-01T00:00:00Z"


def test_the_final_transition_acknowledges_the_message_and_reads_back(store: JobStore) -> None:
    from tasks.store import Delivery

    record, _ = store.create(JobKind.CAPTION, {})
    delivery = Delivery("tag-1", f"{store.prefix}:unacked_index", f"{store.prefix}:unacked")
    store.redis.zadd(delivery.index_key, {"tag-1": 1.0, "tag-2": 1.0})
    store.redis.hset(delivery.hash_key, mapping={"tag-1": "m1", "tag-2": "m2"})
    started = store.advance(record.id, JobStatus.RUNNING, attempt_increment=1, read_back=True, worker="w")
    assert started.record is not None and started.record.status is JobStatus.RUNNING
    assert started.record.worker == "w" and started.record.attempt == 1
    assert store.redis.hexists(delivery.hash_key, "tag-1")  # not acknowledged by the start
    done = store.advance(record.id, JobStatus.SUCCEEDED, acknowledge=delivery)
    assert done.applied and done.record is None
    assert not store.redis.hexists(delivery.hash_key, "tag-1") and store.redis.zscore(delivery.index_key, "tag-1") is None
    assert store.redis.hexists(delivery.hash_key, "tag-2")
    other = Delivery("tag-2", delivery.index_key, delivery.hash_key)
    assert not store.advance(record.id, JobStatus.FAILED, acknowledge=other).applied
    assert store.redis.hexists(delivery.hash_key, "tag-2"), "a refused transition acknowledged its message"


def test_a_job_out_of_attempts_is_not_started_again(store: JobStore) -> None:
    record, _ = store.create(JobKind.CAPTION, {})
    for _ in range(2):
        assert store.advance(record.id, JobStatus.RUNNING, attempt_increment=1, max_attempts=2).applied
    outcome = store.advance(record.id, JobStatus.RUNNING, attempt_increment=1, max_attempts=2)
    assert not outcome.applied and outcome.exhausted is not None and outcome.exhausted.attempt == 2
    assert store.get(record.id).attempt == 2


def test_wait_is_woken_by_the_transition(store: JobStore) -> None:
    record, _ = store.create(JobKind.CAPTION, {})
    store.transition(record.id, JobStatus.RUNNING, attempt_increment=1)
    timer = threading.Timer(0.3, lambda: store.transition(record.id, JobStatus.SUCCEEDED))
    timer.start()
    seen: list[str] = []
    final = store.wait_for_final(record.id, timeout_s=30, poll_s=60, on_change=lambda r: seen.append(r.status.value))
    assert final.status is JobStatus.SUCCEEDED
    assert seen[0] == "running" and seen[-1] == "succeeded"


def test_wait_times_out(store: JobStore) -> None:
    record, _ = store.create(JobKind.CAPTION, {})
    with pytest.raises(TimeoutError, match="still queued"):
        store.wait_for_final(record.id, timeout_s=0.3, poll_s=0.1)


def test_a_wait_rides_out_redis_going_away_once_it_has_read_the_job(
    redis_server: RedisServer, store: JobStore,
) -> None:
    from tasks.redis_connect import connect
    from tests.support.tcp_proxy import TcpProxy

    proxy = TcpProxy(redis_server.port)
    try:
        waiter = JobStore(connect(f"redis://127.0.0.1:{proxy.port}/0", "mymaster"), ttl_s=60, prefix=store.prefix)
        record, _ = store.create(JobKind.CAPTION, {})

        def outage() -> None:  # the job ends while the waiter cannot reach Redis
            time.sleep(0.3)
            proxy.cut()
            store.transition(record.id, JobStatus.RUNNING)
            store.transition(record.id, JobStatus.SUCCEEDED, output={"text": "hi"})
            time.sleep(1.0)
            proxy.restore()

        thread = threading.Thread(target=outage)
        thread.start()
        final = waiter.wait_for_final(record.id, timeout_s=30, poll_s=0.2)
        thread.join()
        assert final.status is JobStatus.SUCCEEDED and final.output == {"text": "hi"}
    finally:
        proxy.close()


def test_a_jobs_wait_rides_out_an_outage_across_its_two_phases(
    redis_server: RedisServer, store: JobStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """`Job.wait` waits in two phases (the no-worker hint between them): Redis away when the
    second begins is waited out too, the Job having read its record before, and said once."""
    from producer import job as job_module
    from tests.support.tcp_proxy import TcpProxy

    monkeypatch.setattr(job_module, "NO_WORKER_CHECK_AFTER_S", 0.5)
    proxy = TcpProxy(redis_server.port)
    try:
        job, record = _job_through(proxy, store)

        def outage() -> None:  # from within the first phase to past the second's start
            time.sleep(0.2)
            proxy.cut()
            time.sleep(1.0)
            store.transition(record.id, JobStatus.RUNNING)
            store.transition(record.id, JobStatus.SUCCEEDED, output={"text": "hi"})
            proxy.restore()

        thread = threading.Thread(target=outage)
        thread.start()
        try:
            with caplog.at_level("WARNING", logger="visionq"):
                assert job.wait(timeout=30).status == "succeeded"
        finally:
            thread.join()
        told = [r.getMessage() for r in caplog.records if "Redis unavailable" in r.getMessage()]
        assert len(told) == 1, told
    finally:
        proxy.close()


def test_a_wait_that_times_out_during_an_outage_says_its_status_may_be_old(
    redis_server: RedisServer, store: JobStore,
) -> None:
    from tests.support.tcp_proxy import TcpProxy

    proxy = TcpProxy(redis_server.port)
    try:
        job, record = _job_through(proxy, store)
        proxy.cut()
        store.transition(record.id, JobStatus.RUNNING)  # unseen by the waiter
        with pytest.raises(TimeoutError) as raised:
            job.wait(timeout=1)
        assert str(raised.value) == (f"job {record.id} is not final after 1 s as far as known: Redis has not "
                                     "answered since it was last seen queued")
        assert str(pickle.loads(pickle.dumps(raised.value))) == str(raised.value)  # e.g. from a process pool
    finally:
        proxy.close()


def _job_through(proxy: Any, store: JobStore) -> tuple[Any, Any]:
    """A queued job, and the SDK's `Job` of it reading Redis through `proxy` (which a test cuts)."""
    from producer.job import Job
    from producer.redis_source import RedisJobSource
    from tasks.redis_connect import connect

    url = f"redis://127.0.0.1:{proxy.port}/0"
    through = JobStore(connect(url, "mymaster"), ttl_s=60, prefix=store.prefix)
    record, _ = store.create(JobKind.CAPTION, {})
    return Job(RedisJobSource(through, None, url), through.get(record.id)), record  # type: ignore[arg-type]


def test_a_refused_password_ends_a_wait_at_once(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """An AuthenticationError is a ConnectionError to redis-py, but no outage: a password changed
    while Redis restarted would otherwise keep a wait spinning, silent, until its timeout."""
    record, _ = store.create(JobKind.CAPTION, {})

    def refused(job_id: str) -> None:
        raise redis.AuthenticationError("invalid username-password pair")

    monkeypatch.setattr(store, "get", refused)
    with pytest.raises(redis.AuthenticationError):
        store.wait_for_final(record.id, timeout_s=30, seen=record)


def test_a_wait_that_cannot_read_the_job_at_all_fails_at_once(store: JobStore) -> None:
    from producer.redis_server import free_port
    from tasks.redis_connect import connect

    nowhere = JobStore(connect(f"redis://127.0.0.1:{free_port()}/0", "mymaster"), ttl_s=60, prefix=store.prefix)
    # A wait that waited on would end in TimeoutError after 30 s: the connection error is the proof.
    with pytest.raises(redis.ConnectionError):
        nowhere.wait_for_final("any", timeout_s=30)


def test_queued_index_follows_the_status(store: JobStore) -> None:
    """The sweeper's list of queued jobs: in while queued, out on any other status."""
    running, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k"})
    canceled, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k"})
    failed, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k"})
    waiting, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k"})
    assert set(store.queued_since(time.time() + 1)) == {running.id, canceled.id, failed.id, waiting.id}
    store.transition(running.id, JobStatus.RUNNING, attempt_increment=1)
    store.request_cancel(canceled.id)
    store.transition(failed.id, JobStatus.FAILED, error={"code": "internal", "message": "x"})
    assert store.queued_since(time.time() + 1) == [waiting.id]
    assert store.queued_since(time.time() - 60) == []  # not older than the cutoff


def test_queued_message_keeps_inline_data_until_the_job_leaves_queued(store: JobStore) -> None:
    inline = "data:image/png;base64,iVBORw0KGgo="
    record, _ = store.create(JobKind.CAPTION, {"image": "inline:sha256:ab"}, message={"image": inline})
    plain, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k"}, message={"image": "s3://b/k"})
    assert store.queued_message(record) == {"image": inline}
    assert store.queued_message(plain) == {"image": "s3://b/k"}
    assert not store.redis.hexists(store.job_key(plain.id), "message")  # no second copy
    assert store.get(record.id).input == {"image": "inline:sha256:ab"}
    store.transition(record.id, JobStatus.RUNNING, attempt_increment=1)
    assert not store.redis.hexists(store.job_key(record.id), "message")


def test_mark_queued_seen_moves_only_queued_jobs(store: JobStore) -> None:
    record, _ = store.create(JobKind.CAPTION, {})
    done, _ = store.create(JobKind.CAPTION, {})
    store.transition(done.id, JobStatus.FAILED, error={"code": "internal", "message": "x"})
    store.redis.zadd(store.queued_key, {record.id: 1.0})
    store.mark_queued_seen([record.id, done.id])
    assert store.queued_since(2.0) == []
    assert store.redis.zscore(store.queued_key, done.id) is None  # XX: not added back


def test_a_record_whose_id_is_not_its_keys_is_never_moved(store: JobStore) -> None:
    """A record written by hand under another job's key (a forgery) is refused, untouched."""
    record, _ = store.create(JobKind.CAPTION, {"image": "s3://b/k"})
    key = store.job_key(record.id)
    store.redis.hset(key, "id", json.dumps("../forged"))
    with pytest.raises(InvalidInput, match="carries another id"):
        store.advance(record.id, JobStatus.RUNNING, attempt_increment=1, read_back=True)
    assert json.loads(store.redis.hget(key, "status")) == "queued"
    assert store.redis.hget(key, "attempt") in (None, b"0")


def test_a_record_read_leaves_the_queued_message_in_redis(store: JobStore) -> None:
    """A queued job keeps its request with the image inline (up to MBs) beside its record: reads of
    the record never carry it (a purge reads 500 at a time)."""
    inline = {"image": "data:image/png;base64," + "A" * 1_000_000}
    records = [store.create(JobKind.CAPTION, {"image": "inline image"}, message=inline)[0] for _ in range(3)]
    sent_before = store.redis.info("stats")["total_net_output_bytes"]
    assert [store.get(r.id).input for r in records] == [{"image": "inline image"}] * 3
    assert sorted(store.get_many([r.id for r in records] + ["0" * 32])) == sorted(r.id for r in records)
    assert store.redis.info("stats")["total_net_output_bytes"] - sent_before < 100_000
    assert store.queued_message(records[0]) == inline  # still there for the sweeper
