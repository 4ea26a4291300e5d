"""The job lifecycle in JobRunner, with stand-in pipelines that each fail in one way.

Real Redis and real local storage; only the model is replaced.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from tasks.errors import InvalidInput
from tasks.kinds import JobKind
from tasks.models import ROLE_MODELS
from tasks.schemas import request_to_message, parse_request, request_to_record
from tasks.settings import Settings
from tasks.ssrf import AllowList
from tasks.status import JobStatus
from tasks.storage import LocalStorage
from tasks.store import JobStore
from tests.support.images import encode, scene
from worker.inputs import InputReader
from worker.pipelines.base import FileSlot, PipelineResult
from worker.runtime import JobRunner

pytestmark = pytest.mark.integration  # a real redis-server


class StandIn:
    """A pipeline whose `run` is given by the test."""

    model_label = "stand-in"

    def __init__(self, behaviour: Any, input_side: int | None = None) -> None:
        self.behaviour = behaviour
        self.input_side = input_side

    def warm_up(self) -> None:
        pass

    def batch_key(self, request: Any) -> None:
        return None

    def run_batch(self, requests: list[Any], images: list[Any], progress: Any) -> list[PipelineResult]:
        return [self.behaviour(requests[0], images[0], progress)]


def succeed(request: Any, image: Any, progress: Any) -> PipelineResult:
    progress(1.0)
    return PipelineResult(
        output={"images": [FileSlot("output-0.png")], "seed": 1},
        images={"output-0.png": Image.new("RGB", (8, 8), (255, 0, 0))},
    )


def raise_(exc: BaseException):
    def behaviour(*_: Any) -> PipelineResult:
        raise exc
    return behaviour


class OutOfMemoryError(RuntimeError):
    """Same name as torch.cuda.OutOfMemoryError, which is what the runtime recognises."""


@pytest.fixture
def harness(redis_client: redis.Redis, key_prefix: str, tmp_path: Path):
    store = JobStore(redis_client, ttl_s=60, prefix=key_prefix)
    storage = LocalStorage(tmp_path / "storage")
    settings = Settings(redis_url="redis://unused", storage_url=storage.root.as_uri())

    def make(behaviour: Any, kind: JobKind = JobKind.GENERATE, input_side: int | None = None) -> JobRunner:
        return JobRunner(
            settings=settings, store=store, storage=storage,
            inputs=InputReader(storage, settings.limits, AllowList()),
            pipelines={ROLE_MODELS[kind.value]: StandIn(behaviour, input_side)}, worker_name="w-test",
        )

    def submit(kind: JobKind, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        request = parse_request(kind, params)
        record, _ = store.create(kind, request_to_record(request))
        return record.id, request_to_message(request)

    return make, submit, store, storage


def test_success_records_output_metrics_and_result_json(harness) -> None:
    make, submit, store, storage = harness
    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})
    make(succeed).run(JobKind.GENERATE, job_id, message)
    record = store.get(job_id)
    assert record.status is JobStatus.SUCCEEDED
    assert record.output["images"][0]["uri"].endswith(f"jobs/{job_id}/output-0.png")
    assert record.worker == "w-test" and record.model_id == "stand-in" and record.attempt == 1
    assert record.metrics["batch_size"] == 1 and record.metrics["total_ms"] >= record.metrics["run_ms"]
    result = json.loads((storage.root / "jobs" / job_id / "result.json").read_text())
    assert result["status"] == "succeeded" and result["output"] == record.output


@pytest.mark.parametrize(
    "exc, code",
    [
        (RuntimeError("shape mismatch"), "model_error"),
        (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
        (InvalidInput("prompt has 90 tokens, more than 77"), "invalid_input"),
    ],
)
def test_pipeline_failures_become_codes(harness, exc: Exception, code: str) -> None:
    make, submit, store, _ = harness
    runner = make(raise_(exc))
    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})
    runner.run(JobKind.GENERATE, job_id, message)
    record = store.get(job_id)
    assert record.status is JobStatus.FAILED
    assert record.error["code"] == code
    # the same runner keeps serving
    runner.pipelines[ROLE_MODELS["generate"]] = StandIn(succeed)
    next_id, next_message = submit(JobKind.GENERATE, {"prompt": "again"})
    runner.run(JobKind.GENERATE, next_id, next_message)
    assert store.get(next_id).status is JobStatus.SUCCEEDED


def test_bad_message_fails_with_invalid_input(harness) -> None:
    make, submit, store, _ = harness
    job_id, _ = submit(JobKind.GENERATE, {"prompt": "a fox"})
    make(succeed).run(JobKind.GENERATE, job_id, {"prompt": "a fox", "width": -5})
    record = store.get(job_id)
    assert record.status is JobStatus.FAILED and record.error["code"] == "invalid_input"


def test_bad_image_fails_with_invalid_input(harness) -> None:
    make, submit, store, storage = harness
    ref = storage.put("inputs/bad.png", encode(scene())[:50], "image/png")
    job_id, message = submit(JobKind.CAPTION, {"image": ref.uri})
    make(succeed, JobKind.CAPTION).run(JobKind.CAPTION, job_id, message)
    record = store.get(job_id)
    assert record.error["code"] == "invalid_input", record.error


@pytest.mark.parametrize(("input_side", "seen"), [(50, (67, 50)), (None, (400, 300))])
def test_the_input_is_decoded_at_the_side_the_pipeline_names(harness, input_side, seen) -> None:
    make, submit, store, storage = harness
    ref = storage.put("inputs/large.png", encode(scene(400, 300)), "image/png")
    job_id, message = submit(JobKind.CAPTION, {"image": ref.uri})
    sizes = []

    def note_size(request: Any, image: Any, progress: Any) -> PipelineResult:
        sizes.append(image.size)
        return PipelineResult(output={"text": "a scene"})

    make(note_size, JobKind.CAPTION, input_side).run(JobKind.CAPTION, job_id, message)
    assert store.get(job_id).status is JobStatus.SUCCEEDED
    assert sizes == [seen]  # 300 // 50 = 6: box-averaged by 6


def test_redelivered_final_job_is_not_run_again(harness) -> None:
    make, submit, store, _ = harness
    calls: list[int] = []

    def counting(*args: Any) -> PipelineResult:
        calls.append(1)
        return succeed(*args)

    runner = make(counting)
    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})
    runner.run(JobKind.GENERATE, job_id, message)
    first = store.get(job_id)
    runner.run(JobKind.GENERATE, job_id, message, redelivered=True)  # kombu gives the message back
    assert len(calls) == 1
    assert store.get(job_id).output == first.output


def test_a_second_copy_of_a_final_jobs_message_changes_nothing(harness) -> None:
    """A copy not marked redelivered (the sweeper's republish racing a hand-over) may reach the
    model, which does not wait for the running transition; the refused job gets no result."""
    make, submit, store, _ = harness
    runner = make(succeed)
    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})
    runner.run(JobKind.GENERATE, job_id, message)
    first = store.get(job_id)
    runner.run(JobKind.GENERATE, job_id, message)
    assert store.get(job_id) == first


def test_redelivery_of_a_running_job_counts_the_attempt(harness) -> None:
    make, submit, store, _ = harness
    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})
    store.transition(job_id, JobStatus.RUNNING, attempt_increment=1, worker="died")
    make(succeed).run(JobKind.GENERATE, job_id, message)
    record = store.get(job_id)
    assert record.status is JobStatus.SUCCEEDED and record.attempt == 2


def test_cancel_while_running_discards_outputs(harness) -> None:
    make, submit, store, storage = harness
    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})

    def cancel_midway(request: Any, image: Any, progress: Any) -> PipelineResult:
        progress(0.3)
        store.request_cancel(job_id)
        # The job's own thread reads the flag every 0.1 s; the first checkpoint after raises JobCanceled.
        canceled_at = time.monotonic()
        while time.monotonic() - canceled_at < 5:
            time.sleep(0.01)
            progress(0.6)
        raise AssertionError("not reached")

    make(cancel_midway).run(JobKind.GENERATE, job_id, message)
    record = store.get(job_id)
    assert record.status is JobStatus.CANCELED and record.output is None
    assert record.error["code"] == "canceled"
    assert not list((storage.root / "jobs" / job_id).glob("output-*"))


def test_the_model_thread_never_waits_on_redis_for_progress_or_cancel(harness, monkeypatch) -> None:
    import threading

    make, submit, store, _ = harness
    callers: list[str] = []

    def spied(name: str) -> Any:
        real = getattr(store, name)

        def call(*args: Any) -> Any:
            callers.append(threading.current_thread().name)
            return real(*args)
        return call

    for name in ("set_progress", "cancel_requested"):
        monkeypatch.setattr(store, name, spied(name))

    ran_s = []

    def steps(request: Any, image: Any, progress: Any) -> PipelineResult:
        started = time.monotonic()
        for step in range(30):  # 0.3 s or more of checkpoints: the job's own thread writes and reads meanwhile
            time.sleep(0.01)
            progress(step / 30)
        ran_s.append(time.monotonic() - started)
        return succeed(request, image, progress)

    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})
    make(steps).run(JobKind.GENERATE, job_id, message)
    assert store.get(job_id).status is JobStatus.SUCCEEDED
    # Once per 0.1 s of model time (however slow this machine is today), not at each of the 30 checkpoints.
    assert 1 <= len(callers) <= ran_s[0] / 0.1 + 1 and len(callers) < 30, (callers, ran_s)
    assert "visionq-model" not in callers


def test_missing_record_drops_the_message(harness) -> None:
    make, _, store, _ = harness
    calls: list[int] = []

    def counting(*args: Any) -> PipelineResult:
        calls.append(1)
        return succeed(*args)

    runner = make(counting)
    gone = "0" * 32
    runner.run(JobKind.GENERATE, gone, {"prompt": "x"})
    # The model may have run it meanwhile (it does not wait for the running transition); no result is kept.
    assert len(calls) <= 1 and runner.jobs_done == 0
    assert not store.redis.exists(store.job_key(gone))  # nothing was written for it


def test_time_limit_ends_the_job_with_timeout(harness) -> None:
    make, submit, store, _ = harness

    def slow(request: Any, image: Any, progress: Any) -> PipelineResult:
        import time

        for _ in range(50):
            time.sleep(0.05)
            progress(0.1)
        raise AssertionError("the checkpoint should have stopped it")

    runner = make(slow)
    runner.settings = Settings(redis_url="redis://unused", storage_url=runner.settings.storage_url,
                               time_limits_s={"caption": 1, "segment": 1, "generate": 0.5})
    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})
    runner.run(JobKind.GENERATE, job_id, message)
    record = store.get(job_id)
    assert record.status is JobStatus.FAILED and record.error["code"] == "timeout"
    assert "0.5 s" in record.error["message"]


def test_a_job_whose_worker_was_lost_max_attempts_times_fails_worker_lost(harness) -> None:
    make, submit, store, _ = harness
    calls: list[int] = []

    def counting(*args: Any) -> PipelineResult:
        calls.append(1)
        return succeed(*args)

    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})
    for _ in range(3):  # three runs started, each time its worker died (VISIONQ_MAX_ATTEMPTS=3)
        store.transition(job_id, JobStatus.RUNNING, attempt_increment=1, worker="died")
    # kombu marks the message it gives back: such a job is started (and refused) before the model takes it
    make(counting).run(JobKind.GENERATE, job_id, message, redelivered=True)
    record = store.get(job_id)
    assert calls == []
    assert record.status is JobStatus.FAILED and record.error["code"] == "worker_lost"
    assert "3 attempts" in record.error["message"] and "VISIONQ_MAX_ATTEMPTS is 3" in record.error["message"]


def test_a_redelivered_job_below_max_attempts_runs(harness) -> None:
    make, submit, store, _ = harness
    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})
    for _ in range(2):
        store.transition(job_id, JobStatus.RUNNING, attempt_increment=1, worker="died")
    make(succeed).run(JobKind.GENERATE, job_id, message, redelivered=True)
    record = store.get(job_id)
    assert record.status is JobStatus.SUCCEEDED and record.attempt == 3


class SlowInputs:
    """An input source that takes `delay_s` (a dripping server, a scan-padded JPEG)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def read(self, uri: str) -> bytes:
        import time

        time.sleep(self.delay_s)
        return encode(scene())


def test_time_limit_counts_from_pickup_so_a_slow_input_fails_timeout(harness) -> None:
    make, submit, store, storage = harness
    calls: list[int] = []

    def counting(*args: Any) -> PipelineResult:
        calls.append(1)
        return succeed(*args)

    runner = make(counting, JobKind.CAPTION)
    runner.settings = Settings(redis_url="redis://unused", storage_url=runner.settings.storage_url,
                               time_limits_s={"caption": 0.3, "segment": 1, "generate": 1})
    runner.inputs = SlowInputs(0.6)
    job_id, message = submit(JobKind.CAPTION, {"image": "https://images.example.com/drip.png"})
    runner.run(JobKind.CAPTION, job_id, message)
    record = store.get(job_id)
    assert calls == []  # the model never started
    assert record.status is JobStatus.FAILED and record.error["code"] == "timeout"
    assert "0.3 s" in record.error["message"]


def test_redis_outage_inside_the_model_call_is_waited_out_never_model_error(harness, monkeypatch) -> None:
    make, submit, store, _ = harness
    failures = {"set_progress": 2, "cancel_requested": 2}

    def flaky(name: str) -> Any:
        real = getattr(store, name)

        def call(*args: Any) -> Any:
            if failures[name]:
                failures[name] -= 1
                raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")
            return real(*args)
        return call

    for name in failures:
        monkeypatch.setattr(store, name, flaky(name))

    def reports(request: Any, image: Any, progress: Any) -> PipelineResult:
        # The job's own thread writes the progress and reads the cancel flag while the model runs:
        # the model runs on through the outage, never waiting for it.
        progress(0.5)
        deadline = time.monotonic() + 10
        while (failures["set_progress"] or failures["cancel_requested"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        progress(0.6)
        time.sleep(0.3)  # a write of 0.6 (0.5 was written once Redis answered), then cancel reads
        return succeed(request, image, progress)

    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})
    make(reports).run(JobKind.GENERATE, job_id, message)
    record = store.get(job_id)
    assert failures == {"set_progress": 0, "cancel_requested": 0}
    assert record.status is JobStatus.SUCCEEDED, record.error


class FlakyEvents:
    """Queues webhook events; the first fails as if Redis were away, the second for another reason."""

    def __init__(self) -> None:
        from kombu.exceptions import OperationalError

        self.failures: list[Exception] = [OperationalError("Error 111 connecting"), RuntimeError("broken")]
        self.published: list[str] = []

    def publish(self, record: Any, event: Any) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.published.append(event.value)

    def publish_final(self, record: Any) -> None:
        self.published.append(record.status.value)


def test_failing_webhook_events_never_fail_the_job(harness) -> None:
    make, _, store, _ = harness
    request = parse_request(JobKind.GENERATE, {"prompt": "a fox"})
    record, _ = store.create(JobKind.GENERATE, request_to_record(request),
                             webhook={"url": "https://example.com/hook", "events": ["job.progress"]})
    runner = make(succeed)
    runner.events = events = FlakyEvents()
    runner.run(JobKind.GENERATE, record.id, request_to_message(request))
    assert store.get(record.id).status is JobStatus.SUCCEEDED
    assert events.failures == [] and events.published[-1] == "succeeded"


def test_runner_in_this_process_has_no_exiting_watchdog(harness) -> None:
    make, _, _, _ = harness
    assert make(succeed).watchdog is None


def test_job_clock_pauses_while_the_job_waits_for_the_model() -> None:
    from worker.time_limits import JobClock

    now = [0.0]
    clock = JobClock(10, now=lambda: now[0])
    now[0] = 4.0
    clock.pause()
    now[0] = 100.0  # behind other jobs of this worker
    assert clock.overdue_s() < 0
    clock.resume()
    now[0] = 105.0
    assert clock.overdue_s() == pytest.approx(-1.0)
    now[0] = 107.0
    with pytest.raises(Exception, match="time limit of 10 s"):
        clock.check()


def test_watchdog_fails_a_stuck_job_then_ends_the_process(harness) -> None:
    import time

    from worker.time_limits import JobClock, Watchdog

    _, submit, store, storage = harness
    job_id, _ = submit(JobKind.GENERATE, {"prompt": "a fox"})
    exits: list[int] = []
    watchdog = Watchdog(store, exit=exits.append)  # a recording exit: this process stays
    now = [0.0]
    watchdog.watch(job_id, JobClock(1, now=lambda: now[0]))
    now[0] = 7.0  # past 1 s x 1.1 + 5 s
    deadline = time.monotonic() + 10
    while not exits and time.monotonic() < deadline:
        time.sleep(0.1)
    watchdog.release(job_id)
    assert exits and exits[0] == Watchdog.exit_code
    record = store.get(job_id)
    assert record.status is JobStatus.FAILED and record.error["code"] == "timeout"
    # The process exits before it could write result.json: a worker's result writer does.
    from worker.results import ResultWriter
    assert ResultWriter(store, storage, storage_retry_s=0).write() == [job_id]
    stored = json.loads((Path(storage.root) / "jobs" / job_id / "result.json").read_bytes())
    assert stored["status"] == "failed" and stored["error"]["code"] == "timeout"


def test_a_refused_final_transition_leaves_result_json_to_say_what_the_record_says(harness) -> None:
    from worker.results import ResultWriter

    make, submit, store, storage = harness
    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})

    def ended_meanwhile(request: Any, image: Any, progress: Any) -> PipelineResult:
        result = succeed(request, image, progress)
        # As a watchdog (or an operator) would, while the model ran: the worker's success is refused.
        store.transition(job_id, JobStatus.FAILED, error={"code": "timeout", "message": "too long"})
        return result

    make(ended_meanwhile).run(JobKind.GENERATE, job_id, message)
    result_json = storage.root / "jobs" / job_id / "result.json"
    assert json.loads(result_json.read_bytes())["status"] == "succeeded"  # written before the transition
    assert ResultWriter(store, storage, storage_retry_s=0).write() == [job_id]
    assert json.loads(result_json.read_bytes())["status"] == "failed"


def test_a_result_json_the_worker_could_not_write_is_left_to_the_result_writer(harness) -> None:
    from worker.results import ResultWriter

    make, submit, store, storage = harness
    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})
    (storage.root / "jobs").mkdir(parents=True, exist_ok=True)
    (storage.root / "jobs" / job_id).write_text("a file where the job's folder should be")  # every write fails
    make(succeed).run(JobKind.GENERATE, job_id, message)
    assert store.get(job_id).error["code"] == "storage_error"
    assert store.redis.zrange(store.unwritten_key, 0, -1) == [job_id.encode()]  # noted by its transition
    (storage.root / "jobs" / job_id).unlink()  # the store is back
    assert ResultWriter(store, storage, storage_retry_s=0).write() == [job_id]
    assert json.loads((storage.root / "jobs" / job_id / "result.json").read_bytes())["status"] == "failed"


def test_a_success_failed_by_its_result_json_ends_when_the_write_gave_up(harness, monkeypatch) -> None:
    from datetime import datetime, timezone

    from tasks.errors import StorageError
    from tasks.record import parse_time
    from worker import runtime

    make, submit, store, storage = harness
    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})
    gave_up: list[datetime] = []

    def unreachable(storage: Any, record: Any) -> None:
        time.sleep(0.3)  # the storage retry budget, spent
        gave_up.append(datetime.now(timezone.utc))
        raise StorageError("upload of result.json failed: storage unreachable")

    monkeypatch.setattr(runtime, "publish_record", unreachable)
    make(succeed).run(JobKind.GENERATE, job_id, message)
    record = store.get(job_id)
    assert record.status is JobStatus.FAILED and record.error["code"] == "storage_error"
    assert not list((storage.root / "jobs" / job_id).glob("output-*"))  # uploaded, then discarded
    ended = parse_time(record.completed_at)
    assert ended >= gave_up[0].replace(microsecond=gave_up[0].microsecond // 1000 * 1000), (ended, gave_up)
    assert record.metrics["total_ms"] == pytest.approx((ended - parse_time(record.created_at)).total_seconds() * 1000, abs=1)


def test_waiting_for_storage_is_off_the_clock(harness) -> None:
    """A storage outage is waited out (VISIONQ_STORAGE_RETRY_S), not ended as a timeout."""
    make, submit, store, storage = harness
    runner = make(succeed, JobKind.CAPTION)
    runner.settings = Settings(redis_url="redis://unused", storage_url=runner.settings.storage_url,
                               time_limits_s={"caption": 0.3, "segment": 1, "generate": 1})
    runner.inputs = SlowInputs(0.6)
    ref = storage.put("inputs/ok.png", encode(scene()), "image/png")
    job_id, message = submit(JobKind.CAPTION, {"image": ref.uri})
    runner.run(JobKind.CAPTION, job_id, message)
    assert store.get(job_id).status is JobStatus.SUCCEEDED


def test_a_cancel_after_the_models_last_checkpoint_wins_the_final_transition(harness) -> None:
    make, submit, store, storage = harness
    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})

    def canceled_at_the_end(request: Any, image: Any, progress: Any) -> PipelineResult:
        result = succeed(request, image, progress)  # its checkpoint at 1.0 has passed
        store.request_cancel(job_id)
        return result

    make(canceled_at_the_end).run(JobKind.GENERATE, job_id, message)
    record = store.get(job_id)
    assert record.status is JobStatus.CANCELED and record.output is None and record.error["code"] == "canceled"
    result = json.loads((storage.root / "jobs" / job_id / "result.json").read_text())
    assert result["status"] == "canceled" and result["output"] is None  # storage says what the record says
    # The outputs were uploaded before the cancel won: "partial outputs were discarded" (a soak
    # trial found them left in the bucket, pointed to by nothing).
    assert [p.name for p in (storage.root / "jobs" / job_id).iterdir()] == ["result.json"]


def test_the_final_transition_acknowledges_the_message_and_kombus_ack_skips_redis(harness) -> None:
    from kombu.transport import redis as kombu_redis

    from tasks.store import Delivery
    from worker.broker import QoS, acknowledged

    make, submit, store, _ = harness
    job_id, message = submit(JobKind.GENERATE, {"prompt": "a fox"})
    delivery = Delivery("tag-7", f"{store.prefix}:unacked_index", f"{store.prefix}:unacked")
    store.redis.zadd(delivery.index_key, {delivery.tag: 1.0})
    store.redis.hset(delivery.hash_key, delivery.tag, "the message")
    make(succeed).run(JobKind.GENERATE, job_id, message, delivery=delivery)
    assert store.get(job_id).status is JobStatus.SUCCEEDED
    assert not store.redis.hexists(delivery.hash_key, delivery.tag)
    assert store.redis.zscore(delivery.index_key, delivery.tag) is None

    from kombu import Connection

    from worker.broker import TRANSPORT

    url = store.redis.connection_pool.connection_kwargs
    with Connection(f"redis://{url['host']}:{url['port']}/0", transport=TRANSPORT,
                    transport_options={"global_keyprefix": f"{store.prefix}:"}) as connection:
        qos = connection.channel().qos
        assert isinstance(qos, QoS)
        calls: list[str] = []
        original = kombu_redis.QoS.ack
        try:
            kombu_redis.QoS.ack = lambda self, tag: calls.append(tag)  # what would reach Redis
            for tag in (delivery.tag, "other"):
                qos._delivered[tag] = object()
            qos.ack(delivery.tag)
            assert calls == [] and delivery.tag in qos._dirty  # kombu's books: flushed on its next read
            qos.ack("other")
            assert calls == ["other"]  # acknowledged by nobody else: kombu's own ack
        finally:
            kombu_redis.QoS.ack = original
    assert not acknowledged.take(delivery.tag)
