"""The sweeper against a real Redis: a message lost between BRPOP and kombu's
unacked bookkeeping is published again; a message anywhere in Redis is left alone."""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tasks.app import make_celery
from tasks.kinds import JobKind, Priority, priority_list_key, queue_list_key
from tasks.settings import Settings
from tasks.store import JobStore
from worker.sweeper import Sweeper, celery_publisher, unacked_key

pytestmark = pytest.mark.integration  # a real redis-server


@pytest.fixture
def setup(redis_server: Any, redis_client: redis.Redis, key_prefix: str, tmp_path: Path):
    settings = Settings(redis_url=redis_server.url, redis_prefix=key_prefix, storage_url=tmp_path.as_uri())
    app = make_celery(settings)
    store = JobStore(redis_client, ttl_s=60, prefix=key_prefix)
    publish = celery_publisher(app)
    queue = queue_list_key(JobKind.GENERATE, Priority.NORMAL, key_prefix)

    def submit(prompt: str) -> str:
        request = {"prompt": prompt}
        record, _ = store.create(JobKind.GENERATE, request, message=request)
        publish(JobKind.GENERATE, record.id, request, Priority.NORMAL)
        store.redis.zadd(store.queued_key, {record.id: time.time() - 100})  # queued for a while
        return record.id

    yield store, publish, queue, submit
    app.close()


def message_ids(client: redis.Redis, key: str) -> list[str]:
    return [json.loads(raw)["headers"]["id"] for raw in client.lrange(key, 0, -1)]


def test_a_message_taken_but_never_recorded_is_published_again(setup) -> None:
    store, publish, queue, submit = setup
    lost = submit("lost")
    store.redis.rpop(queue)  # what BRPOP does; the worker is killed before kombu records it as unacked
    assert message_ids(store.redis, queue) == []
    republished = Sweeper(store, publish, grace_s=15, sleep=lambda s: None).sweep()
    assert republished == [lost]
    raw = json.loads(store.redis.lrange(queue, 0, -1)[0])
    assert raw["headers"]["id"] == lost
    _args, kwargs, _embed = json.loads(base64.b64decode(raw["body"]))
    assert kwargs == {"job_id": lost, "request": {"prompt": "lost"}}
    assert store.queued_since(time.time() - 5) == []  # seen again now: not swept before another grace


def test_messages_in_a_queue_or_reserved_by_a_worker_are_left_alone(setup) -> None:
    store, publish, queue, submit = setup
    waiting = submit("waiting")
    reserved = submit("reserved")
    raw = store.redis.rpop(queue)  # the oldest is taken by a worker and recorded, as kombu does
    assert json.loads(raw)["headers"]["id"] == waiting
    store.redis.hset(unacked_key(store.prefix), "tag-1", json.dumps([json.loads(raw), "", "visionq.generate"]))
    assert Sweeper(store, publish, grace_s=15, sleep=lambda s: None).sweep() == []
    assert message_ids(store.redis, queue) == [reserved]
    assert store.queued_since(time.time() - 5) == []  # both seen now


def test_a_hand_over_in_progress_is_not_mistaken_for_a_loss(setup) -> None:
    store, publish, queue, submit = setup
    submit("in hand")
    raw = store.redis.rpop(queue)  # taken by a live worker, which records it a moment later

    def worker_records_it(_: float) -> None:
        store.redis.hset(unacked_key(store.prefix), "tag-2", json.dumps([json.loads(raw), "", "visionq.generate"]))

    assert Sweeper(store, publish, grace_s=15, sleep=worker_records_it).sweep() == []
    assert message_ids(store.redis, queue) == []


def test_a_job_no_longer_queued_is_not_published(setup) -> None:
    store, publish, queue, submit = setup
    job_id = submit("done")
    store.redis.rpop(queue)

    def it_finishes(_: float) -> None:
        store.request_cancel(job_id)

    assert Sweeper(store, publish, grace_s=15, sleep=it_finishes).sweep() == []
    assert message_ids(store.redis, queue) == []


def test_a_job_for_another_model_is_searched_for_and_published_again_on_its_own_queue(setup) -> None:
    store, publish, default_queue, _ = setup
    request = {"image": "s3://b/x.png"}
    record, _ = store.create(JobKind.CAPTION, request, message=request, model="vit-gpt2")
    publish(JobKind.CAPTION, record.id, request, Priority.NORMAL, "vit-gpt2")
    store.redis.zadd(store.queued_key, {record.id: time.time() - 100})
    own_queue = priority_list_key("visionq.caption.vit-gpt2", Priority.NORMAL, store.prefix)
    assert message_ids(store.redis, own_queue) == [record.id]
    assert Sweeper(store, publish, grace_s=15, sleep=lambda s: None).sweep() == []  # found where it waits
    store.redis.rpop(own_queue)  # lost between BRPOP and kombu's bookkeeping
    store.redis.zadd(store.queued_key, {record.id: time.time() - 100})  # and not seen for a grace since
    assert Sweeper(store, publish, grace_s=15, sleep=lambda s: None).sweep() == [record.id]
    assert message_ids(store.redis, own_queue) == [record.id]  # back on the model's queue, not the kind's
    assert message_ids(store.redis, queue_list_key(JobKind.CAPTION, Priority.NORMAL, store.prefix)) == []


def test_a_deep_queue_is_read_a_chunk_at_a_time_from_its_tail(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The oldest jobs' messages are found in the first chunk; a lost one is searched for a chunk
    at a time through the whole list, and never in one script that holds Redis for all of it."""
    from worker import sweeper

    store, publish, queue, submit = setup
    monkeypatch.setattr(sweeper, "SCAN_CHUNK", 10)
    monkeypatch.setattr(sweeper, "SCAN_OVERLAP", 3)
    oldest = [submit(f"oldest {n}") for n in range(5)]
    lost = submit("lost")
    newer = [submit(f"newer {n}") for n in range(60)]
    store.redis.zadd(store.queued_key, {job_id: time.time() - 1000 for job_id in oldest})  # the candidates
    store.redis.zadd(store.queued_key, {job_id: time.time() for job_id in [lost, *newer]})
    chunks: list[tuple[str, int]] = []

    def sweeper_reading_chunks() -> Sweeper:
        swept = Sweeper(store, publish, grace_s=15, sleep=lambda s: None)
        read = swept._ids_in_chunk
        swept._ids_in_chunk = lambda key, offset, size, among: chunks.append((key, offset)) or read(key, offset, size, among)
        return swept

    assert sweeper_reading_chunks().sweep() == []
    assert chunks == [(queue, 0)]  # the tail's chunk of its own list, found there
    store.redis.lrem(queue, 1, next(raw for raw in store.redis.lrange(queue, 0, -1)
                                    if json.loads(raw)["headers"]["id"] == lost))
    store.redis.zadd(store.queued_key, {lost: time.time() - 1000})
    chunks.clear()
    assert sweeper_reading_chunks().sweep() == [lost]
    # Twice (confirmed a second apart): its own list's 65 messages in overlapping chunks, then the 8 others
    own = [offset for key, offset in chunks if key == queue]
    assert own == [0, 7, 14, 21, 28, 35, 42, 49, 56] * 2
    assert len(chunks) == 2 * (9 + 8)
    assert message_ids(store.redis, queue)[0] == lost  # published again, at the head


def test_a_message_taken_by_a_worker_while_the_lists_are_read_is_seen_in_the_unacked_hash(setup) -> None:
    """A worker takes the message (list -> unacked hash) as the search begins: the lists are read
    first and the hash last, so one search sees it; the other order would see it in neither."""
    store, publish, queue, submit = setup
    taken = submit("taken meanwhile")
    swept = Sweeper(store, publish, grace_s=15, sleep=lambda s: None)
    read = swept._ids_in_chunk

    def a_worker_takes_it_first(key: str, offset: int, size: int, among: set[str]) -> tuple[int, list[str]]:
        raw = store.redis.rpop(queue)  # BRPOP, then kombu's bookkeeping: in the unacked hash
        if raw is not None:
            store.redis.hset(unacked_key(store.prefix), "tag-3", json.dumps([json.loads(raw), "", "visionq.generate"]))
        return read(key, offset, size, among)

    swept._ids_in_chunk = a_worker_takes_it_first
    assert swept._find_absent([taken]) == set()
