"""The body of every job: the one place a job moves through its lifecycle.

fetch input -> decode -> run the pipeline -> encode + upload -> record. Every
failure becomes an error code on this job's record and nothing else: the worker
process, its models and other jobs are untouched.
"""
from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator, TypeVar

import redis
from kombu.exceptions import OperationalError

from tasks.errors import (
    InternalError, InvalidInput, JobCanceled, JobNotFound, VisionqError, WorkerLost,
)
from tasks.deliveries import EventPublisher
from tasks.kinds import JobKind, Priority
from tasks.models import default_model
from tasks.record import JobRecord, check_job_id, ms_between, utc_now
from tasks.schemas import check_image_work, parse_request
from tasks.settings import Settings
from tasks.status import JobStatus
from tasks.storage import Storage
from tasks.store import JobStore
from tasks.webhooks import EventType
from worker.batching import ModelExecutor
from worker.images import decode_image
from worker.inputs import InputReader
from worker.outputs import publish_outputs, publish_record
from worker.pipelines.base import Pipeline
from worker.time_limits import JobClock, Watchdog

log = logging.getLogger("visionq.worker")
T = TypeVar("T")

CANCELED_WHILE_RUNNING = "canceled while running; partial outputs were discarded"


class JobRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        store: JobStore,
        storage: Storage,
        inputs: InputReader,
        pipelines: dict[str, Pipeline],
        worker_name: str,
        events: EventPublisher | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        """`pipelines`: by model name, "kind/name" (tasks.models); each job runs its record's model.
        `watchdog`: the hard time limit, which ends the process; worker processes
        pass one, tests running jobs in their own process do not."""
        self.settings = settings
        self.store = store
        self.storage = storage
        self.inputs = inputs
        self.pipelines = pipelines
        self.worker_name = worker_name
        self.events = events
        self.jobs_done = 0
        self.watchdog = watchdog
        # Called with each record this runner made final (worker/observe.py: metrics, logs, Celery's view).
        self.on_final: list[Callable[[JobRecord], None]] = []
        self.executor = ModelExecutor({JobKind(k): n for k, n in settings.max_batch.items()}, settings.max_wait_ms)

    def run(self, kind: JobKind, job_id: str, request_data: dict[str, Any]) -> None:
        clock = JobClock(self.settings.time_limit_s(kind))  # from pickup: fetch and decode count
        if self.watchdog is not None:
            self.watchdog.watch(job_id, clock)
        try:
            self._run(kind, job_id, request_data, clock)
        finally:
            if self.watchdog is not None:
                self.watchdog.release(job_id)

    def _run(self, kind: JobKind, job_id: str, request_data: dict[str, Any], clock: JobClock) -> None:
        try:
            # A forged message or record ("../../x") is dropped before anything is written.
            record = until_redis_answers(lambda: self.store.get(check_job_id(job_id)))  # from_dict checks the id
            if record.id != job_id:
                raise InvalidInput(f"the record of job {job_id} carries another id, {record.id!r}")
        except JobNotFound:
            log.warning("job %s has no record (expired or deleted); dropping its message", job_id)
            return
        except InvalidInput as exc:
            log.warning("dropping a forged message or record: %s", exc.message)
            return
        if record.is_final:
            # A redelivery of a job that already ended (or was canceled while queued).
            log.info("job %s is already %s; not running it again", job_id, record.status.value)
            return
        metrics: dict[str, Any] = {"batch_size": 1}
        if record.status is JobStatus.RUNNING and record.attempt >= self.settings.max_attempts:
            # Every run so far ended with its worker gone: the job is the likely cause.
            error = WorkerLost(
                f"job {job_id} lost its worker on each of its {record.attempt} attempts "
                f"(VISIONQ_MAX_ATTEMPTS is {self.settings.max_attempts}); not running it again"
            )
            log.error("%s", error.message)
            self._finish(record, JobStatus.FAILED, metrics, error=error.to_dict())
            return
        pipeline = self.pipelines.get(served_name(kind, record.model))
        if pipeline is None:
            # Only on a queue this worker consumes by mistake: its model's own queue is elsewhere.
            error = InternalError(f"worker {self.worker_name} does not serve {served_name(kind, record.model)}; "
                                  f"it serves {', '.join(sorted(self.pipelines))}")
            self._finish(record, JobStatus.FAILED, metrics, error=error.to_dict())
            return
        self.executor.expect()
        handed_over = False
        try:
            request = parse_request(kind, request_data, self.settings.limits)
            image = None
            image_uri = getattr(request, "image", None)
            if image_uri is not None:
                with _timed(metrics, "input_ms"):
                    image = decode_image(self._read_input(image_uri, clock), self.settings.limits)
                check_image_work(request, image.size, self.settings.limits)
            clock.check()
            progress = _ProgressReporter(self.store, record, self._publish, clock)

            def start() -> None:  # on the model thread, right before this job's inference
                clock.resume()
                progress.cancel_requested = self._start(record, pipeline)
                progress.check_cancel(read=False)  # the running transition read the cancel flag

            handed_over = True
            clock.pause()  # waiting behind this worker's other jobs is not this job's time
            result, metrics["batch_size"], metrics["run_ms"] = self.executor.run(
                kind, pipeline, request, image, progress, job_id, clock.limit_s, start,
                Priority(record.priority).level,
            )
            # The model is done, and its checkpoint at 1.0 (worker/batching.py) checked for a cancel.
            clock.pause()  # storing its outputs waits on storage, not on the job
            with _timed(metrics, "publish_ms"):
                output, publish_timings = publish_outputs(
                    self.storage, job_id, result, self.settings.png_compress_level
                )
            metrics.update(publish_timings)
            if result.model:
                record.model_id = result.model
            self._finish(record, JobStatus.SUCCEEDED, metrics, output=output)
        except _NotStarted:
            return  # canceled while it waited for the model; already final
        except JobCanceled:
            self._finish(record, JobStatus.CANCELED, metrics,
                         error=JobCanceled(CANCELED_WHILE_RUNNING).to_dict())
        except VisionqError as exc:
            log.debug("job %s failed: %s: %s", job_id, exc.code.value, exc.message)  # its final line says it
            self._finish(record, JobStatus.FAILED, metrics, error=exc.to_dict())
        except Exception as exc:  # noqa: BLE001 - a bug of ours fails this job, not the worker
            log.exception("job %s failed with an internal error", job_id)
            error = InternalError(f"{type(exc).__name__}: {exc}").to_dict()
            self._finish(record, JobStatus.FAILED, metrics, error=error)
        finally:
            if not handed_over:
                self.executor.cancel_expect()

    def _read_input(self, uri: str, clock: JobClock) -> bytes:
        """Our own storage's outages are waited out, off the clock; a URL's fetch is on it."""
        if uri.startswith(("s3://", "file://")):
            with clock.paused():
                return self.inputs.read(uri)
        return self.inputs.read(uri)

    def _start(self, record: JobRecord, pipeline: Pipeline) -> bool:
        """queued -> running (running -> running on a redelivery), when the model takes it;
        returns whether a cancel is requested (a redelivered job flagged while it ran).

        Until then the job counts as queued, so a cancel still stops it outright."""
        started_at = utc_now()
        outcome = until_redis_answers(lambda: self.store.advance(
            record.id, JobStatus.RUNNING, attempt_increment=1, started_at=started_at,
            worker=self.worker_name, model_id=pipeline.model_label, progress=0.0,
        ))
        if not outcome.applied:
            raise _NotStarted(record.id)
        record.status, record.started_at, record.worker = JobStatus.RUNNING, started_at, self.worker_name
        record.model_id, record.attempt = pipeline.model_label, record.attempt + 1
        self._publish(record, EventType.STARTED)
        return outcome.cancel_requested

    def _finish(
        self, record: JobRecord, status: JobStatus, metrics: dict[str, Any],
        output: dict[str, Any] | None = None, error: dict[str, str] | None = None,
    ) -> None:
        completed_at = utc_now()
        metrics["queue_ms"] = ms_between(record.created_at, record.started_at)
        metrics["total_ms"] = ms_between(record.created_at, completed_at)
        final = replace(
            record, status=status, completed_at=completed_at, output=output, error=error,
            metrics=metrics, progress=1.0 if status is JobStatus.SUCCEEDED else record.progress,
        )
        started = record.status is not JobStatus.QUEUED  # else it failed before the model took it
        if not started:
            final.worker, final.attempt = self.worker_name, record.attempt + 1
        try:
            publish_record(self.storage, final)
        except VisionqError as exc:
            if status is JobStatus.SUCCEEDED:  # without result.json the outputs are not complete
                final = replace(final, status=JobStatus.FAILED, output=None, error=exc.to_dict())
            else:
                log.warning("job %s: result.json not written: %s", record.id, exc.message)
        fields = {
            "completed_at": final.completed_at, "output": final.output, "error": final.error,
            "metrics": final.metrics, "model_id": final.model_id,
        }
        if status is JobStatus.SUCCEEDED:
            fields["progress"] = 1.0
        if not started:
            fields["worker"] = final.worker
        if until_redis_answers(
            lambda: self.store.transition(record.id, final.status, attempt_increment=0 if started else 1, **fields)
        ):
            self._publish(final, None)
            for callback in self.on_final:
                callback(final)
        else:
            log.warning("job %s was already final; its %s result is not recorded", record.id, status.value)
        self.jobs_done += 1

    def _publish(self, record: JobRecord, event: EventType | None) -> None:
        """event None: the final event matching the record's status.

        Waits for Redis if it is away; any other failure to queue an event is
        logged and never fails the job."""
        if self.events is None or not record.webhook:
            return
        events = self.events
        try:
            if event is None:
                until_redis_answers(lambda: events.publish_final(record))
            else:
                until_redis_answers(lambda: events.publish(record, event))
        except Exception:  # noqa: BLE001 - a webhook event never fails its job
            log.exception("job %s: could not queue its %s event", record.id, event.value if event else "final")


def served_name(kind: JobKind, model: str | None) -> str:
    """The "kind/name" a job of `kind` for model `model` (None: the default, as in older records) runs."""
    return f"{kind.value}/{model or default_model(kind.value)}"


class _ProgressReporter:
    """The callback pipelines call with their progress; it doubles as the cancel checkpoint."""

    min_interval_s = 0.1  # progress writes are throttled; cancel is checked on every call

    def __init__(
        self, store: JobStore, record: JobRecord, publish: Callable[[JobRecord, EventType], None],
        clock: JobClock,
    ) -> None:
        self.store = store
        self.record = record
        self.publish = publish
        self.clock = clock
        self.cancel_requested = False  # as last read from Redis
        self._last_write = 0.0
        self._done_checked = False

    def __call__(self, fraction: float) -> None:
        """Inside the model call: a Redis outage here waits (until_redis_answers) rather
        than raise, so it never becomes the model's error."""
        if fraction >= 1.0:
            # Done: the final transition records progress 1.0, so only the checkpoint reads Redis,
            # once (the pipeline and the model thread may both report the end).
            self.record.progress = 1.0
            self.publish(self.record, EventType.PROGRESS)
            self.check_cancel(read=not self._done_checked)
            self._done_checked = True
            return
        now = time.monotonic()
        if now - self._last_write >= self.min_interval_s:
            self._last_write = now
            # The write returns the cancel flag: one round trip for both.
            self.cancel_requested = until_redis_answers(lambda: self.store.set_progress(self.record.id, fraction))
            self.record.progress = round(fraction, 4)
            self.publish(self.record, EventType.PROGRESS)
            self.check_cancel(read=False)
        else:
            self.check_cancel()

    def check_cancel(self, read: bool = True) -> None:
        """The checkpoint: canceled by a client, or past the kind's time limit. `read`: ask
        Redis for the cancel flag (else the one a transition or progress write just returned)."""
        if read:
            self.cancel_requested = until_redis_answers(lambda: self.store.cancel_requested(self.record.id))
        if self.cancel_requested:
            raise JobCanceled(CANCELED_WHILE_RUNNING)
        self.clock.check()


class _NotStarted(Exception):
    """The job was canceled (or ended) before the model took it."""


# Redis restarting, failing over or briefly unreachable. kombu's OperationalError is
# what a publish (a webhook event) raises for the same.
REDIS_OUTAGE = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OperationalError)


def until_redis_answers(call: Callable[[], T], max_delay_s: float = 5.0) -> T:
    """`call()`, retried in place with backoff while Redis is away.

    A Redis failure is never the job's error and never a reason to give up its
    message: the job simply waits. The wait is bounded by the job's clock: a worker
    still waiting at the hard time limit is ended by its watchdog, and the message,
    unacknowledged in Redis, is delivered again."""
    delay = 0.1
    while True:
        try:
            return call()
        except REDIS_OUTAGE as exc:
            log.warning("Redis unavailable (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, max_delay_s)


@contextmanager
def _timed(metrics: dict[str, Any], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        metrics[name] = round((time.perf_counter() - started) * 1000, 3)
