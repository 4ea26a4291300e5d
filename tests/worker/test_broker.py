"""The worker's kombu transport: one Redis client per channel, no connection per job, and a
receipt that records the popped message and takes what else the prefetch credit allows."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
from kombu import Connection, Consumer, Producer, Queue

from tasks.kinds import PRIORITY_STEPS
from tasks.settings import Settings
from tests.support.waiting import wait_until
from worker.broker import TAKE_ALONG_MAX_BYTES, TRANSPORT

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
JOBS = 100


def test_the_channel_reuses_one_client_for_acks_and_bookkeeping(redis_server: object, key_prefix: str) -> None:
    with Connection(redis_server.url, transport=TRANSPORT,
                    transport_options={"global_keyprefix": f"{key_prefix}:"}) as connection:
        channel = connection.channel()
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second, "a new Redis client per call (kombu's own behaviour)"
        given = redis.Redis.from_url(redis_server.url)
        with channel.conn_or_acquire(given) as client:
            assert client is given
        first.ping()


def test_a_hundred_jobs_open_no_connection_each(service_env: dict[str, str], tmp_path: Path) -> None:
    """Redis's own count of accepted connections over 100 jobs on a live worker: what the
    worker opens per job (a client per ack, an events connection per task, ...) shows here."""
    from producer.client import Client
    from producer.launch import WorkerProcess, visionq_argv, wait_all_ready

    env = {**os.environ, **service_env, "VISIONQ_REDIS_PREFIX": f"vqconn-{uuid.uuid4().hex[:6]}"}
    worker = WorkerProcess(
        visionq_argv("--cost-ms", "0", module="tests.support.standin_worker"),
        env=env, log_path=tmp_path / "worker.log", redis_url=env["VISIONQ_REDIS_URL"],
        prefix=env["VISIONQ_REDIS_PREFIX"], cwd=REPO,
    ).start()
    try:
        wait_all_ready([worker], 60)
        client = Client(settings=Settings.from_env(env))
        warm = client.generate("warm-up", width=64, height=64, steps=1).wait(timeout=60)
        assert warm.status == "succeeded", warm.error
        server = redis.Redis.from_url(env["VISIONQ_REDIS_URL"])
        before = server.info("stats")["total_connections_received"]
        jobs = client.submit_many([
            {"kind": "generate", "input": {"prompt": f"job {i}", "width": 64, "height": 64, "steps": 1}}
            for i in range(JOBS)
        ])
        # Polled, not Job.wait: a wait's pub/sub connection would be counted too.
        wait_until(lambda: all(job.refresh().is_final for job in jobs), timeout_s=120, what="100 jobs final")
        assert {job.status for job in jobs} == {"succeeded"}
        opened = server.info("stats")["total_connections_received"] - before
        assert opened < 10, f"{opened} connections opened for {JOBS} jobs"
    finally:
        worker.stop()


QUEUE = "q"


@pytest.fixture
def options(key_prefix: str) -> dict[str, Any]:
    return {"global_keyprefix": f"{key_prefix}:", "priority_steps": PRIORITY_STEPS}


def _publish(url: str, options: dict[str, Any], priorities: list[int], padding: int = 0) -> None:
    with Connection(url, transport_options=options) as connection:
        producer = Producer(connection.channel())
        for i, priority in enumerate(priorities):
            producer.publish({"i": i, "pad": "x" * padding}, routing_key=QUEUE, declare=[Queue(QUEUE)],
                             serializer="json", priority=priority)


@pytest.fixture
def consumer(redis_server: Any, options: dict[str, Any]) -> Iterator[Any]:
    """Our transport's channel consuming QUEUE; `consumer(prefetch)` -> (connection, channel, received)."""
    opened: list[Connection] = []

    def start(prefetch: int, transport: str | None = TRANSPORT, on_message: Any = None) -> tuple[Any, Any, list[Any]]:
        connection = Connection(redis_server.url, transport=transport, transport_options=options)
        opened.append(connection)
        channel = connection.channel()
        channel.basic_qos(0, prefetch, False)
        received: list[Any] = []

        def callback(body: Any, message: Any) -> None:
            received.append((body["i"], message))
            if on_message is not None:
                on_message(body)

        Consumer(channel, [Queue(QUEUE)], callbacks=[callback], accept=["json"]).consume()
        return connection, channel, received

    yield start
    for connection in opened:
        connection.close()


def test_a_receipt_takes_what_the_credit_allows_in_one_step(
    redis_server: Any, redis_client: redis.Redis, options: dict[str, Any], key_prefix: str, consumer: Any,
) -> None:
    _publish(redis_server.url, options, [0] * 5)
    connection, _channel, received = consumer(3)
    transactions = redis_client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0)
    connection.drain_events(timeout=5)  # one BRPOP reply
    assert [i for i, _ in received] == [0, 1, 2]
    assert redis_client.llen(f"{key_prefix}:{QUEUE}") == 2, "taken beyond the credit"
    # Recorded as kombu records them (its MULTI/ZADD/HSET/EXEC per message, not run here).
    assert redis_client.info("commandstats").get("cmdstat_exec", {}).get("calls", 0) == transactions
    unacked = redis_client.hgetall(f"{key_prefix}:unacked")
    assert sorted(redis_client.zrange(f"{key_prefix}:unacked_index", 0, -1)) == sorted(unacked)
    for _i, message in received:
        payload, exchange, routing_key = json.loads(unacked[message.delivery_tag.encode()])
        assert (payload, exchange, routing_key) == (message._raw, "", QUEUE)
    for _i, message in received:
        message.ack()
    assert redis_client.hlen(f"{key_prefix}:unacked") == 0
    connection.drain_events(timeout=5)
    assert [i for i, _ in received] == [0, 1, 2, 3, 4]


def test_messages_taken_together_keep_kombus_priority_order(
    redis_server: Any, redis_client: redis.Redis, options: dict[str, Any], consumer: Any,
) -> None:
    priorities = [9, 0, 6, 0, 3, 9]
    _publish(redis_server.url, options, priorities)
    stock, _channel, one_by_one = consumer(1, transport="redis")
    while len(one_by_one) < len(priorities):
        stock.drain_events(timeout=5)
        one_by_one[-1][1].ack()
    _publish(redis_server.url, options, priorities)
    ours, _channel, together = consumer(len(priorities))
    ours.drain_events(timeout=5)
    assert [i for i, _ in together] == [i for i, _ in one_by_one]


def test_an_unreadable_message_is_left_where_it_was(
    redis_server: Any, redis_client: redis.Redis, options: dict[str, Any], key_prefix: str, consumer: Any,
) -> None:
    _publish(redis_server.url, options, [0])
    redis_client.lpush(f"{key_prefix}:{QUEUE}", b"not json \xff", json.dumps({"properties": []}))
    _publish(redis_server.url, options, [0])
    connection, _channel, received = consumer(4)
    connection.drain_events(timeout=5)
    assert [i for i, _ in received] == [0]
    # Next in line, for kombu's own path to meet alone; nothing behind it lost.
    assert redis_client.lrange(f"{key_prefix}:{QUEUE}", 0, -1)[-1] == b"not json \xff"
    assert redis_client.llen(f"{key_prefix}:{QUEUE}") == 3
    assert redis_client.hlen(f"{key_prefix}:unacked") == 1


def test_a_large_message_is_not_taken_along_but_by_the_next_read(
    redis_server: Any, redis_client: redis.Redis, options: dict[str, Any], key_prefix: str, consumer: Any,
) -> None:
    """Parsing a message that carries an image inline would hold Redis for milliseconds."""
    _publish(redis_server.url, options, [0])
    _publish(redis_server.url, options, [0], padding=TAKE_ALONG_MAX_BYTES)
    _publish(redis_server.url, options, [0])
    connection, _channel, received = consumer(4)
    connection.drain_events(timeout=5)
    assert len(received) == 1 and redis_client.llen(f"{key_prefix}:{QUEUE}") == 2
    connection.drain_events(timeout=5)  # BRPOP takes the large one, the script the small one behind it
    assert len(received) == 3 and len(received[1][1].body) > TAKE_ALONG_MAX_BYTES
    assert redis_client.hlen(f"{key_prefix}:unacked") == 3


def test_taken_messages_not_handed_over_go_back_when_the_channel_closes(
    redis_server: Any, redis_client: redis.Redis, options: dict[str, Any], key_prefix: str, consumer: Any,
) -> None:
    _publish(redis_server.url, options, [0] * 4)

    def fail(_body: Any) -> None:
        raise RuntimeError("the consumer broke on the first message")

    connection, channel, received = consumer(3, on_message=fail)
    with pytest.raises(RuntimeError):
        connection.drain_events(timeout=5)
    assert len(received) == 1 and redis_client.hlen(f"{key_prefix}:unacked") == 3
    channel.close()
    assert redis_client.llen(f"{key_prefix}:{QUEUE}") == 4, "a taken message left for the visibility timeout"
    assert redis_client.hlen(f"{key_prefix}:unacked") == 0
