"""Leases and kombu's unacked messages, against a real Redis."""
from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from kombu import Connection, Queue

from tasks.app import make_celery
from tasks.settings import Settings
from worker.leases import Leases, survive_reconnects, unacked_index_key

pytestmark = pytest.mark.integration  # a real redis-server


def test_a_held_message_is_renewed_and_a_released_one_is_not(redis_client: redis.Redis, key_prefix: str) -> None:
    key = unacked_index_key(key_prefix)
    redis_client.zadd(key, {"held": 1.0, "released": 1.0})
    leases = Leases(redis_client, key_prefix, visibility_timeout_s=3600)
    with leases.hold("held"):
        with leases.hold("released"):
            pass
        leases.renew()
    assert redis_client.zscore(key, "held") > time.time() - 60  # kombu will not see it as abandoned
    assert redis_client.zscore(key, "released") == 1.0
    redis_client.zrem(key, "held")  # acknowledged meanwhile
    with leases.hold("held"):
        leases.renew()
    assert redis_client.zscore(key, "held") is None  # an acknowledged message is not brought back


def test_a_channel_closed_by_a_reconnect_keeps_its_messages_and_still_acknowledges(
    redis_server: Any, redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a Redis restart does to a consuming worker: kombu closes the channel after
    the connection is torn down, while the message's task still runs. kombu used to
    restore the message then (AttributeError ... 'hostname'), and the task's ack on
    the closed channel failed (AttributeError ... 'client'): Celery stopped the worker."""
    from kombu.transport import redis as kombu_redis

    monkeypatch.setattr(kombu_redis.QoS, "restore_at_shutdown", kombu_redis.QoS.restore_at_shutdown)
    monkeypatch.setattr(kombu_redis.QoS, "ack", kombu_redis.QoS.ack)
    survive_reconnects(redis_client, key_prefix)
    options = {"global_keyprefix": f"{key_prefix}:"}
    queue = Queue("visionq.generate")
    with Connection(redis_server.url, transport_options=options) as producer:
        producer.Producer().publish({"job": 1}, routing_key=queue.name, declare=[queue])
    connection = Connection(redis_server.url, transport_options=options)
    channel = connection.channel()
    received: list[Any] = []
    connection.Consumer(queue, channel=channel, callbacks=[lambda body, message: received.append(message)]).consume()
    connection.drain_events(timeout=5)
    assert len(received) == 1
    assert redis_client.zcard(unacked_index_key(key_prefix)) == 1  # the index Leases renews is kombu's
    channel._pool = None  # as after the reconnect attempt: the next command needs a new pool
    connection._do_close_transport()  # the connection's client is gone (None)
    channel.close()
    assert redis_client.hlen(f"{key_prefix}:unacked") == 1  # still there, for the visibility timeout
    assert redis_client.llen(f"{key_prefix}:visionq.generate") == 0  # not pushed back while it runs
    received[0].ack()  # the task finished after the reconnect
    assert redis_client.hlen(f"{key_prefix}:unacked") == 0
    assert redis_client.zcard(unacked_index_key(key_prefix)) == 0


def test_redelivery_is_looked_for_on_every_tick_at_most_10_s_apart(tmp_path: Any) -> None:
    for timeout_s, interval_s in [(3600, 10), (4, 2), (1, 1)]:
        app = make_celery(Settings(storage_url=tmp_path.as_uri(), visibility_timeout_s=timeout_s))
        options = app.conf.broker_transport_options
        assert options["unacked_restore_throttle"] == 1  # kombu's default 10 made it up to 100 s
        assert options["unacked_restore_interval"] == interval_s


def test_the_delivery_tag_a_lease_renews_is_found_in_a_celery_task_request(
    redis_server: Any, key_prefix: str, tmp_path: Any,
) -> None:
    from celery.app.task import Context
    from celery.worker.request import Request

    from tasks.kinds import JobKind
    from worker.leases import delivery_tag

    app = make_celery(Settings(redis_url=redis_server.url, redis_prefix=key_prefix, storage_url=tmp_path.as_uri()))
    def run_job(job_id: str, request: dict) -> None:
        pass

    app.task(name=JobKind.GENERATE.task_name)(run_job)
    app.send_task(JobKind.GENERATE.task_name, kwargs={"job_id": "j", "request": {}}, queue=JobKind.GENERATE.queue)
    received: list[Any] = []
    with app.connection() as connection:
        queue = Queue(JobKind.GENERATE.queue)
        with connection.Consumer(queue, callbacks=[lambda body, message: received.append(message)],
                                 accept=["json"]):
            connection.drain_events(timeout=5)
        message = received[0]
        request = Context(Request(message, app=app, task=app.tasks[JobKind.GENERATE.task_name]).request_dict)
        assert message.delivery_tag and delivery_tag(request) == message.delivery_tag
        message.ack()


def test_messages_given_back_on_a_deliberate_exit_are_abandoned_at_once_and_never_renewed(
    redis_client: redis.Redis, key_prefix: str,
) -> None:
    """A worker that exits on its own (its model process died, a job stuck past its limit) gives
    back what it holds: kombu's next look for abandoned messages takes them, not one an hour on."""
    from worker.leases import give_back_all

    key = unacked_index_key(key_prefix)
    now = time.time()
    redis_client.zadd(key, {"held": now, "acknowledged": now})
    leases = Leases(redis_client, key_prefix, visibility_timeout_s=3600)
    with leases.hold("held"):
        redis_client.zrem(key, "acknowledged")
        with leases.hold("acknowledged"):
            give_back_all()
            assert redis_client.zscore(key, "held") == 0  # older than any visibility timeout
            assert redis_client.zscore(key, "acknowledged") is None  # not brought back
            leases.renew()  # the renewal thread, between the give-back and the exit
            assert redis_client.zscore(key, "held") == 0
