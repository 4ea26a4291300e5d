"""The producer's directly built Celery message, and the store writing it with the record.

An unmodified kombu consumer (the same Redis transport a Celery worker uses, built from
`tasks.app`'s configuration) takes and decodes the message; Celery's own protocol-2
parser reads its task, id and keyword arguments.
"""
from __future__ import annotations

import json

import pytest
import redis
from celery.worker.request import Request

from tasks.app import make_celery
from tasks.kinds import JobKind, Priority
from tasks.messages import job_enqueue
from tasks.settings import Settings
from tasks.store import JobStore

pytestmark = pytest.mark.integration  # a real redis-server


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> JobStore:
    return JobStore(redis_client, ttl_s=60, prefix=key_prefix)


def _noop(job_id: str, request: dict) -> None:
    """Stands for the worker's task: only its name matters to the parser."""


def _create(store: JobStore, priority: str = "normal", model: str | None = None, key: str | None = None):
    request = {"image": "s3://b/k.png", "prompt": None, "max_new_tokens": 30, "num_beams": 1}
    new = store.new_job(JobKind.CAPTION, request, key, None, priority, message=request, model=model)
    return store.create_many([(new, job_enqueue(new.record, request, store.prefix))])[0]


@pytest.mark.parametrize("priority", ["high", "normal", "low"])
def test_an_unmodified_kombu_consumer_takes_and_parses_the_message(
    store: JobStore, redis_server: object, key_prefix: str, priority: str,
) -> None:
    record, created = _create(store, priority)
    assert created
    app = make_celery(Settings.from_env({}, redis_url=redis_server.url, redis_prefix=key_prefix))
    task = app.task(name="visionq.run.caption")(_noop)
    with app.connection_for_read() as connection:
        message = connection.default_channel.basic_get("visionq.caption", no_ack=True)
        assert message is not None, "no message on the caption queue"
        assert message.headers["task"] == "visionq.run.caption" and message.headers["id"] == record.id
        assert message.properties["priority"] == Priority(priority).level
        assert message.delivery_info["routing_key"] == "visionq.caption"
        args, kwargs, embed = message.decode()
        assert args == [] and kwargs["job_id"] == record.id and kwargs["request"]["image"] == "s3://b/k.png"
        # Celery's own worker-side parser of protocol 2.
        request = Request(message, app=app, task=task)
        assert request.id == record.id and request.name == "visionq.run.caption"
        assert request.kwargs == kwargs


def test_a_job_for_another_model_waits_on_that_models_queue(store: JobStore, redis_client: redis.Redis) -> None:
    _create(store, model="vit-gpt2")
    assert redis_client.llen(f"{store.prefix}:visionq.caption.vit-gpt2\x06\x163") == 1
    assert redis_client.llen(f"{store.prefix}:visionq.caption\x06\x163") == 0


def test_record_and_message_land_together_and_an_idempotent_repeat_writes_nothing(
    store: JobStore, redis_client: redis.Redis,
) -> None:
    queue = f"{store.prefix}:visionq.caption\x06\x163"
    first, created = _create(store, key="order-7")
    assert created and redis_client.llen(queue) == 1
    assert redis_client.zscore(store.queued_key, first.id) is not None
    again, created_again = _create(store, key="order-7")
    assert not created_again and again.id == first.id
    assert redis_client.llen(queue) == 1, "an idempotent repeat queued a second message"
    assert len(redis_client.keys(f"{store.prefix}:job:*")) == 1


def test_a_failed_script_writes_neither(store: JobStore, redis_client: redis.Redis) -> None:
    """The queue list's key holds a string: the LPUSH fails. A Lua script that errors keeps
    the writes it made before, so nothing of the job may be written ahead of the message."""
    queue = f"{store.prefix}:visionq.caption\x06\x163"
    redis_client.set(queue, "not a list")
    with pytest.raises(redis.ResponseError):
        _create(store)
    assert redis_client.keys(f"{store.prefix}:job:*") == []
    assert redis_client.zcard(store.queued_key) == 0


def test_the_submit_publishes_celerys_task_sent_event_in_the_same_script(
    store: JobStore, redis_client: redis.Redis, redis_server: object, key_prefix: str,
) -> None:
    app = make_celery(Settings.from_env({}, redis_url=redis_server.url, redis_prefix=key_prefix))
    pubsub = redis_client.pubsub()
    pubsub.subscribe(f"{key_prefix}:/0.celeryev/task.sent")
    pubsub.get_message(timeout=1)
    request = {"image": "s3://b/k.png"}
    new = store.new_job(JobKind.CAPTION, request, None, None, "normal", message=request)
    store.create_many([(new, job_enqueue(new.record, request, store.prefix, sent_event_db=0))])
    raw = pubsub.get_message(timeout=5)
    assert raw is not None, "no task-sent event"
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        event = channel.Message(json.loads(raw["data"]), channel=channel).decode()
    assert event["type"] == "task-sent" and event["uuid"] == new.record.id
    assert event["name"] == "visionq.run.caption" and event["queue"] == "visionq.caption"
