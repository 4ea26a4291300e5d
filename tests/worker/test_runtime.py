"""The job lifecycle in JobRunner, with stand-in pipelines that each fail in one way.

Real Redis and real local storage; only the model is replaced.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from tasks.errors import InvalidInput
from tasks.kinds import JobKind
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

    def __init__(self, behaviour: Any) -> None:
        self.behaviour = behaviour

    def warm_up(self) -> None:
        pass

    def run(self, request: Any, image: Any, progress: Any) -> PipelineResult:
        return self.behaviour(request, image, progress)


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

    def make(behaviour: Any, kind: JobKind = JobKind.GENERATE) -> JobRunner:
        return JobRunner(
            settings=settings, store=store, storage=storage,
            inputs=InputReader(storage, settings.limits, AllowList()),
            pipelines={kind: StandIn(behaviour)}, worker_name="w-test",
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
    assert record.worker == "w-test" and record.model == "stand-in" and record.attempt == 1
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
    runner.pipelines[JobKind.GENERATE] = StandIn(succeed)
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
    runner.run(JobKind.GENERATE, job_id, message)  # the same message again
    assert len(calls) == 1
    assert store.get(job_id).output == first.output


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
        progress(0.6)  # the checkpoint raises JobCanceled
        raise AssertionError("not reached")

    make(cancel_midway).run(JobKind.GENERATE, job_id, message)
    record = store.get(job_id)
    assert record.status is JobStatus.CANCELED and record.output is None
    assert record.error["code"] == "canceled"
    assert not list((storage.root / "jobs" / job_id).glob("output-*"))


def test_missing_record_drops_the_message(harness) -> None:
    make, _, _, _ = harness
    make(raise_(AssertionError("must not run"))).run(JobKind.GENERATE, "gone", {"prompt": "x"})


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
