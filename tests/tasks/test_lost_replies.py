"""A script whose reply is lost may run twice: a redis-py client with a Retry (`redis.Redis()`'s
default in redis-py 8, a caller's own setting, other versions' defaults for every client) sends a
command again on a new connection when the first failed before its answer (a cut, or an answer
later than its socket_timeout), though Redis already ran it. Against a real Redis, through a
proxy that drops one answer after the request went through: the scripts that must not act
twice notice it."""
from __future__ import annotations

import uuid
from typing import Any, Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks import expiry
from tasks.expiry import QueueEnds
from tasks.kinds import JobKind, Priority, priority_list_key
from tasks.messages import task_message
from tasks.models import model_queue
from tasks.record import utc_now
from tasks.status import JobStatus
from tasks.store import Enqueue, JobStore, NewJob
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration  # a real redis-server

QUEUE = model_queue(JobKind.GENERATE.value, None)


@pytest.fixture
def proxy(redis_server: Any) -> Iterator[TcpProxy]:
    proxy = TcpProxy(redis_server.port)
    yield proxy
    proxy.close()


@pytest.fixture
def store(proxy: TcpProxy, key_prefix: str) -> JobStore:
    """Through the proxy, with a client that sends a command again after a lost answer."""
    client = redis.Redis(port=proxy.port, retry=Retry(NoBackoff(), 3))
    client.ping()  # connected: the answer lost is a script's, not the handshake's
    store = JobStore(client, ttl_s=600, prefix=key_prefix)
    for script in (store._create, store._transition, QueueEnds(store)._end):  # ...and not a NOSCRIPT's
        client.script_load(script.script)
    return store


def new_job(store: JobStore, n: int, idempotency_key: str | None = None) -> tuple[NewJob, Enqueue]:
    request = {"prompt": f"a fox {n}", "width": 64, "height": 64}
    new = store.new_job(JobKind.GENERATE, request, idempotency_key)
    message = task_message(JobKind.GENERATE.task_name, new.record.id, {"job_id": new.record.id, "request": request},
                           QUEUE, Priority.NORMAL)
    return new, Enqueue(priority_list_key(QUEUE, Priority.NORMAL, store.prefix), message)


def queued_messages(redis_client: redis.Redis, store: JobStore) -> int:
    return int(redis_client.llen(priority_list_key(QUEUE, Priority.NORMAL, store.prefix)))


def test_a_submit_whose_answer_is_lost_queues_its_job_once(
    store: JobStore, proxy: TcpProxy, redis_client: redis.Redis,
) -> None:
    proxy.lose_next_reply()
    [(record, created)] = store.create_many([new_job(store, 0)])  # one EVALSHA, sent twice
    assert created and queued_messages(redis_client, store) == 1

    # A job that ran meanwhile is not set back to `queued` by the second run.
    first = store.create_many([new_job(store, 1)])[0][0]
    store.transition(first.id, JobStatus.RUNNING)
    store.transition(first.id, JobStatus.SUCCEEDED, output={"images": []})
    jobs = [new_job(store, n) for n in range(2, 7)]
    proxy.lose_next_reply()
    assert all(created for _, created in store.create_many(jobs))  # one pipeline, sent twice
    assert queued_messages(redis_client, store) == 7
    assert store.get(first.id).status == JobStatus.SUCCEEDED


def test_an_idempotent_submit_whose_answer_is_lost_still_made_the_job(store: JobStore, proxy: TcpProxy) -> None:
    # Told "not created" (the key held by its own job), the gateway would answer 200 for a new
    # job, give the tenant's admission back, and leave the job's webhook secret unset.
    proxy.lose_next_reply()
    [(record, created)] = store.create_many([new_job(store, 0, idempotency_key="order-1")])
    assert created
    [(again, created_again)] = store.create_many([new_job(store, 0, idempotency_key="order-1")])
    assert not created_again and again.id == record.id


def test_a_purge_whose_answer_is_lost_still_reports_every_job_it_ended(
    store: JobStore, proxy: TcpProxy, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids = [record.id for record, _ in store.create_many([new_job(store, n) for n in range(20)])]
    run_pipelined = expiry.run_pipelined

    def losing_the_answer(script: Any, calls: list[Any], **options: Any) -> list[Any]:
        proxy.lose_next_reply()  # the chunk's end scripts run, their answers are lost, they run again
        return run_pipelined(script, calls, **options)

    monkeypatch.setattr(expiry, "run_pipelined", losing_the_answer)
    ended = QueueEnds(store).purge(JobKind.GENERATE, "purged in a test")
    assert sorted(r.id for r in ended) == sorted(ids)  # so each gets its event, its message goes
    assert all(store.get(job_id).status == JobStatus.CANCELED for job_id in ids)
    assert queued_messages(redis_client, store) == 0


def test_transitions_whose_answers_are_lost_answer_as_the_first_run_did(store: JobStore, proxy: TcpProxy) -> None:
    # worker/outage.py's until_redis_answers sends a transition again after a lost answer too.
    [(record, _)] = store.create_many([new_job(store, 0)])
    proxy.lose_next_reply()
    started = store.advance(record.id, JobStatus.RUNNING, attempt_increment=1, started_at=utc_now(), worker="w1",
                            read_back=True, max_attempts=3)
    assert started.applied and started.record is not None and started.record.attempt == 1  # counted once

    proxy.lose_next_reply()
    done = store.advance(record.id, JobStatus.SUCCEEDED, completed_at=utc_now(), output={"text": "a fox"},
                         metrics={"run_ms": 12.5})
    assert done.applied and done.status is JobStatus.SUCCEEDED  # not "already final"
    assert store.get(record.id).attempt == 1

    # Not a second run: another worker finishing the same job later is still refused.
    late = store.advance(record.id, JobStatus.SUCCEEDED, completed_at=utc_now(), output={"text": "late"},
                         metrics={"run_ms": 13.0})
    assert not late.applied and store.get(record.id).output == {"text": "a fox"}


def test_a_redelivery_is_still_a_new_attempt(store: JobStore) -> None:
    [(record, _)] = store.create_many([new_job(store, 0)])
    for attempt, worker in ((1, "w1"), (2, "w2")):  # w1 died: the message came to w2
        outcome = store.advance(record.id, JobStatus.RUNNING, attempt_increment=1, started_at=utc_now(),
                                worker=worker, read_back=True)
        assert outcome.applied and outcome.record is not None and outcome.record.attempt == attempt


def test_the_services_own_clients_send_a_command_once(redis_server: Any, proxy: TcpProxy, key_prefix: str,
                                                      redis_client: redis.Redis) -> None:
    """Whatever the installed redis-py's default: a lost answer is the caller's to act on."""
    from tasks.redis_connect import connect

    client = connect(f"redis://127.0.0.1:{proxy.port}/0", "mymaster")
    store = JobStore(client, ttl_s=600, prefix=key_prefix)
    client.script_load(store._create.script)
    proxy.lose_next_reply()
    with pytest.raises(redis.ConnectionError):
        store.create_many([new_job(store, 0)])
    assert queued_messages(redis_client, store) == 1  # it ran: sent once
