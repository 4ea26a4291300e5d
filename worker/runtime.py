"""The body of every job: the one place a job moves through its lifecycle.

fetch input -> decode -> run the pipeline -> encode + upload -> record. Every
failure becomes an error code on this job's record and nothing else: the worker
process, its models and other jobs are untouched.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator

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
from tasks.store import Delivery, JobStore
from tasks.webhooks import EventType
from worker.batching import BATCHES_IN_FLIGHT, ModelExecutor
from worker.broker import acknowledged
from worker.images import decode_image
from worker.inputs import InputReader
from worker.outage import until_redis_answers
from worker.outputs import discard_outputs, publish_outputs, publish_record
from worker.pipelines.base import Pipeline, input_side, preprocess
from worker.time_limits import JobClock, Watchdog

log = logging.getLogger("visionq.worker")

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
        self.executor = ModelExecutor({JobKind(k): n for k, n in settings.max_batch.items()}, settings.max_wait_ms,
                                      threads=BATCHES_IN_FLIGHT if settings.model_process else 1)

    def run(
        self, kind: JobKind, job_id: str, request_data: dict[str, Any], *, model: str | None = None,
        priority: int | None = None, delivery: Delivery | None = None, redelivered: bool = False,
    ) -> None:
        """Run one job of its message. `model`: the model its queue carries (None: the kind's
        default); `priority`: its kombu level, for the order within this worker; `delivery`:
        its message in kombu's unacked bookkeeping, acknowledged with the final status;
        `redelivered`: kombu gave the message back after a worker lost it (the job is then marked
        running before the model takes it, not while: worker/batching.py)."""
        clock = JobClock(self.settings.time_limit_s(kind))  # from pickup: fetch and decode count
        if self.watchdog is not None:
            self.watchdog.watch(job_id, clock)
        try:
            self._run(kind, job_id, request_data, clock, model, priority, delivery, redelivered)
        finally:
            if self.watchdog is not None:
                self.watchdog.release(job_id)

    def _run(
        self, kind: JobKind, job_id: str, request_data: dict[str, Any], clock: JobClock, model: str | None,
        priority: int | None, delivery: Delivery | None, redelivered: bool,
    ) -> None:
        """The record is not read up front: the running transition returns it (one round trip),
        and only a job that fails before the model reads it (worker/runtime.py `_before_start`)."""
        try:
            check_job_id(job_id)  # a forged message ("../../x") is dropped before anything is written
        except InvalidInput as exc:
            log.warning("dropping a forged message or record: %s", exc.message)
            return
        name = served_name(kind, model)
        pipeline = self.pipelines.get(name)
        if pipeline is None:
            # Only on a queue this worker consumes by mistake: its model's own queue is elsewhere.
            self._fail_before_start(job_id, InternalError(
                f"worker {self.worker_name} does not serve {name}; it serves {', '.join(sorted(self.pipelines))}"
            ), delivery)
            return
        self.executor.expect()
        handed_over = False
        metrics: dict[str, Any] = {"batch_size": 1}
        progress = _ProgressReporter(self.store, job_id, self._publish, clock)
        try:
            request = parse_request(kind, request_data, self.settings.limits)
            image = None
            image_uri = getattr(request, "image", None)
            if image_uri is not None:
                with _timed(metrics, "input_ms"):  # fetch, decode and the pipeline's own per-job preprocessing
                    image = decode_image(self._read_input(image_uri, clock), self.settings.limits, input_side(pipeline))
                    check_image_work(request, image.size, self.settings.limits)
                    model_input = preprocess(pipeline, request, image)  # here, not on the model thread
            else:
                model_input = preprocess(pipeline, request, image)
            clock.check()

            def start(taken_at: str) -> None:  # once the model thread takes the job (worker/batching.py)
                clock.resume()
                progress.record, progress.cancel_requested = self._start(job_id, pipeline, name, taken_at)
                progress.check_cancel()  # the running transition read the cancel flag

            handed_over = True
            clock.pause()  # waiting behind this worker's other jobs is not this job's time
            result, metrics["batch_size"], metrics["run_ms"] = self.executor.run(
                kind, pipeline, request, model_input, progress, job_id, clock.limit_s,
                start, Priority.NORMAL.level if priority is None else priority, start_first=redelivered, image=image,
            )
            progress.model_done()
            # The model is done; a cancel requested meanwhile wins in the final transition (_finish).
            clock.pause()  # storing its outputs waits on storage, not on the job
            record = progress.started_record()
            with _timed(metrics, "publish_ms"):
                output, publish_timings = publish_outputs(
                    self.storage, job_id, result, self.settings.png_compress_level
                )
            metrics.update(publish_timings)
            if result.model:
                record.model_id = result.model
            self._finish(record, JobStatus.SUCCEEDED, metrics, output=output, delivery=delivery)
        except _NotStarted as exc:
            if exc.reason:
                log.warning("%s", exc.reason)
            return  # ended before the model took it (canceled, a redelivery of a final job, no record)
        except _Exhausted as exc:
            self._finish(exc.record, JobStatus.FAILED, metrics, error=exc.error.to_dict(), delivery=delivery)
        except JobCanceled:
            self._finish(progress.started_record(), JobStatus.CANCELED, metrics,
                         error=JobCanceled(CANCELED_WHILE_RUNNING).to_dict(), delivery=delivery)
        except VisionqError as exc:
            log.debug("job %s failed: %s: %s", job_id, exc.code.value, exc.message)  # its final line says it
            self._fail(progress, exc, metrics, delivery)
        except Exception as exc:  # noqa: BLE001 - a bug of ours fails this job, not the worker
            log.exception("job %s failed with an internal error", job_id)
            self._fail(progress, InternalError(f"{type(exc).__name__}: {exc}"), metrics, delivery)
        finally:
            if not handed_over:
                self.executor.cancel_expect()

    def _fail(self, progress: _ProgressReporter, error: VisionqError, metrics: dict[str, Any],
              delivery: Delivery | None) -> None:
        if progress.record is not None:
            self._finish(progress.record, JobStatus.FAILED, metrics, error=error.to_dict(), delivery=delivery)
        else:
            self._fail_before_start(progress.job_id, error, delivery, metrics)

    def _fail_before_start(
        self, job_id: str, error: VisionqError, delivery: Delivery | None, metrics: dict[str, Any] | None = None,
    ) -> None:
        """A job that fails before the model took it: its record is read now (the hot path never does)."""
        try:
            record = until_redis_answers(lambda: self.store.get(job_id))
        except JobNotFound:
            log.warning("job %s has no record (expired or deleted); dropping its message", job_id)
            return
        if record.is_final:
            # A redelivery of a job that already ended (or was canceled while queued).
            log.info("job %s is already %s; not running it again", job_id, record.status.value)
            return
        self._finish(record, JobStatus.FAILED, metrics or {"batch_size": 1}, error=error.to_dict(), delivery=delivery)

    def _read_input(self, uri: str, clock: JobClock) -> bytes:
        """Our own storage's outages are waited out, off the clock; a URL's fetch is on it."""
        if uri.startswith(("s3://", "file://")):
            with clock.paused():
                return self.inputs.read(uri)
        return self.inputs.read(uri)

    def _start(self, job_id: str, pipeline: Pipeline, name: str, started_at: str) -> tuple[JobRecord, bool]:
        """queued -> running (running -> running on a redelivery), when the model takes it (at
        `started_at`, its time): the job's record after, and whether a cancel is requested (a
        redelivered job flagged while it ran).

        Until then the job counts as queued, so a cancel still stops it outright. A job that lost
        its worker on each of its VISIONQ_MAX_ATTEMPTS runs does not start again (_Exhausted)."""
        try:
            outcome = until_redis_answers(lambda: self.store.advance(
                job_id, JobStatus.RUNNING, attempt_increment=1, started_at=started_at,
                worker=self.worker_name, model_id=pipeline.model_label, progress=0.0,
                read_back=True, max_attempts=self.settings.max_attempts,
            ))
        except JobNotFound:
            raise _NotStarted(f"job {job_id} has no record (expired or deleted); dropping its message") from None
        except InvalidInput as exc:  # a forged record: nothing is written to it
            raise _NotStarted(f"dropping a forged message or record: {exc.message}") from None
        if outcome.exhausted is not None:
            record = outcome.exhausted
            # Every run so far ended with its worker gone: the job is the likely cause.
            error = WorkerLost(
                f"job {job_id} lost its worker on each of its {record.attempt} attempts "
                f"(VISIONQ_MAX_ATTEMPTS is {self.settings.max_attempts}); not running it again"
            )
            log.error("%s", error.message)
            raise _Exhausted(record, error)
        if not outcome.applied or outcome.record is None:
            raise _NotStarted("")
        record = outcome.record
        if served_name(record.kind, record.model) != name:
            raise InternalError(f"job {job_id} is for {served_name(record.kind, record.model)} but came on "
                                f"the queue of {name}")
        self._publish(record, EventType.STARTED)
        return record, outcome.cancel_requested

    def _finish(
        self, record: JobRecord, status: JobStatus, metrics: dict[str, Any],
        output: dict[str, Any] | None = None, error: dict[str, str] | None = None,
        delivery: Delivery | None = None,
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
        unwritten = False  # result.json left to a worker's result writer (worker/results.py)
        try:
            publish_record(self.storage, final)
        except VisionqError as exc:
            unwritten = True
            if status is JobStatus.SUCCEEDED:  # without result.json the outputs are not complete
                # It ends now, once the write gave up (the storage retry budget later), not when the model did.
                failed_at = utc_now()
                final = replace(final, status=JobStatus.FAILED, output=None, error=exc.to_dict(),
                                completed_at=failed_at,
                                metrics={**metrics, "total_ms": ms_between(record.created_at, failed_at)})
            else:
                log.warning("job %s: result.json not written: %s", record.id, exc.message)
        fields = {
            "completed_at": final.completed_at, "output": final.output, "error": final.error,
            "metrics": final.metrics, "model_id": final.model_id,
        }
        if final.status is JobStatus.SUCCEEDED:
            fields["progress"] = 1.0
        if not started:
            fields["worker"] = final.worker
        # A cancel requested while the model ran or the outputs were stored wins here, in the same
        # round trip (the success's outputs are then not recorded).
        canceled = JobCanceled(CANCELED_WHILE_RUNNING).to_dict() if final.status is JobStatus.SUCCEEDED else None
        try:
            outcome = until_redis_answers(lambda: self.store.advance(
                record.id, final.status, attempt_increment=0 if started else 1, cancel_error=canceled,
                acknowledge=delivery, note_unwritten=unwritten, **fields,
            ))
        except JobNotFound:
            log.warning("job %s: its record is gone (expired or deleted); its result is not recorded", record.id)
            return
        if not outcome.applied:
            log.warning("job %s was already final; its %s result is not recorded", record.id, status.value)
            # Its outputs stay: another run's success may be the record's, under the same names.
            # The result.json written above says otherwise: rewritten from the record.
            until_redis_answers(lambda: self.store.note_unwritten(record.id))
            self.jobs_done += 1
            return
        if delivery is not None:
            acknowledged.add(delivery.tag)  # kombu's ack of it needs no round trip (worker/broker.py)
        if output is not None and outcome.status is not JobStatus.SUCCEEDED:
            # Uploaded for a success the record did not take (a cancel that won, result.json not
            # written): nothing points to them. Final is final, so no other run's success does either.
            discard_outputs(self.storage, record.id, output)
        if outcome.status is JobStatus.CANCELED and final.status is not JobStatus.CANCELED:
            final = replace(final, status=JobStatus.CANCELED, output=None, error=canceled, progress=record.progress)
            try:
                publish_record(self.storage, final)  # result.json says what the record says
            except VisionqError as exc:
                log.warning("job %s: result.json not rewritten yet: %s", record.id, exc.message)
                until_redis_answers(lambda: self.store.note_unwritten(record.id))
        self._publish(final, None)
        for callback in self.on_final:
            callback(final)
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
    """The callback pipelines call with their progress; it doubles as the cancel checkpoint.

    The model never waits on Redis: a checkpoint (`__call__`, on the model thread) only notes the
    progress and checks the cancel flag and the clock as this job's own thread last saw them.
    That thread, idle while the model runs the job, `attend`s it: every `interval_s` it writes the
    progress when it moved (the write returns the cancel flag) or else reads the flag. A cancel
    stops the model at its first checkpoint after that read: within `interval_s` of the request.
    Before, the model thread itself made these round trips (a write, then a read per denoising
    step): time the device waits on a GPU, and a Redis outage held the model mid-job."""

    interval_s = 0.1

    def __init__(
        self, store: JobStore, job_id: str, publish: Callable[[JobRecord, EventType], None], clock: JobClock,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.publish = publish
        self.clock = clock
        self.record: JobRecord | None = None  # once started: the record the running transition returned
        self.cancel_requested = False  # as last read from Redis
        self._fraction = 0.0  # the model's latest progress
        self._written = 0.0  # the progress last written to the record

    def started_record(self) -> JobRecord:
        if self.record is None:
            raise RuntimeError(f"job {self.job_id} ended before it started")  # a bug: the executor starts it
        return self.record

    def __call__(self, fraction: float) -> None:
        """On the model thread: no I/O."""
        self.started_record()
        self.check_cancel()
        self._fraction = min(fraction, 1.0)

    def check_cancel(self) -> None:
        """The checkpoint: canceled by a client (as last read), or past the kind's time limit."""
        if self.cancel_requested:
            raise JobCanceled(CANCELED_WHILE_RUNNING)
        self.clock.check()

    def attend(self, done: Future) -> None:
        """On the job's own thread, from its start until the model is `done` with it. A Redis
        outage here is waited out (until_redis_answers): the model runs on meanwhile."""
        woken = threading.Event()
        done.add_done_callback(lambda _: woken.set())
        while not woken.wait(self.interval_s):
            self._sync()

    def model_done(self) -> None:
        """On the job's own thread, once the model ran it to its last checkpoint: progress 1.0
        (the final transition records it and checks for a cancel)."""
        record = self.started_record()
        record.progress = 1.0
        self.publish(record, EventType.PROGRESS)

    def _sync(self) -> None:
        fraction, record = self._fraction, self.started_record()
        if self._written < fraction < 1.0:
            # The write returns the cancel flag: one round trip for both.
            canceled = until_redis_answers(lambda: self.store.set_progress(self.job_id, fraction))
            self._written = record.progress = round(fraction, 4)
            self.publish(record, EventType.PROGRESS)
        else:
            canceled = until_redis_answers(lambda: self.store.cancel_requested(self.job_id))
        self.cancel_requested = self.cancel_requested or canceled


class _NotStarted(Exception):
    """The job was canceled (or ended, or its record is gone) before the model took it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Exhausted(Exception):
    """The job lost its worker on each of its allowed attempts: it fails instead of starting."""

    def __init__(self, record: JobRecord, error: WorkerLost) -> None:
        super().__init__(error.message)
        self.record = record
        self.error = error


@contextmanager
def _timed(metrics: dict[str, Any], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        metrics[name] = round((time.perf_counter() - started) * 1000, 3)
