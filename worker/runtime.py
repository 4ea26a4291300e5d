"""The body of every job: the one place a job moves through its lifecycle.

fetch input -> decode -> run the pipeline -> encode + upload -> record. Every
failure becomes an error code on this job's record and nothing else: the worker
process, its models and other jobs are untouched.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Callable, Iterator

from tasks.errors import (
    InternalError, InvalidInput, JobCanceled, JobNotFound, JobTimeout, VisionqError,
)
from tasks.deliveries import EventPublisher
from tasks.kinds import JobKind, Priority
from tasks.record import JobRecord, check_job_id, ms_between, utc_now
from tasks.schemas import parse_request
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
        pipelines: dict[JobKind, Pipeline],
        worker_name: str,
        events: EventPublisher | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.storage = storage
        self.inputs = inputs
        self.pipelines = pipelines
        self.worker_name = worker_name
        self.events = events
        self.jobs_done = 0
        self.watchdog = Watchdog(store)
        self.executor = ModelExecutor(
            {JobKind(k): n for k, n in settings.max_batch.items()}, settings.max_wait_ms, self.watchdog
        )

    def run(self, kind: JobKind, job_id: str, request_data: dict[str, Any]) -> None:
        try:
            # A forged message or record ("../../x") is dropped before anything is written.
            record = self.store.get(check_job_id(job_id))  # from_dict checks the record's id
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
        pipeline = self.pipelines[kind]
        metrics: dict[str, Any] = {"batch_size": 1}
        limit_s = self.settings.time_limit_s(kind)
        self.executor.expect()
        handed_over = False
        try:
            request = parse_request(kind, request_data, self.settings.limits)
            image = None
            image_uri = getattr(request, "image", None)
            if image_uri is not None:
                with _timed(metrics, "input_ms"):
                    image = decode_image(self.inputs.read(image_uri), self.settings.limits)
            progress = _ProgressReporter(self.store, record, self._publish, limit_s)

            def start() -> None:  # on the model thread, right before this job's inference
                self._start(record, pipeline)
                progress.start_clock()
                progress.check_cancel()

            handed_over = True
            result, metrics["batch_size"], metrics["run_ms"] = self.executor.run(
                kind, pipeline, request, image, progress, job_id, limit_s, start,
                Priority(record.priority).level,
            )
            progress.check_cancel()
            with _timed(metrics, "publish_ms"):
                output, publish_timings = publish_outputs(
                    self.storage, job_id, result, self.settings.png_compress_level
                )
            metrics.update(publish_timings)
            if result.model:
                record.model = result.model
            self._finish(record, JobStatus.SUCCEEDED, metrics, output=output)
        except _NotStarted:
            return  # canceled while it waited for the model; already final
        except JobCanceled:
            self._finish(record, JobStatus.CANCELED, metrics,
                         error=JobCanceled(CANCELED_WHILE_RUNNING).to_dict())
        except VisionqError as exc:
            log.info("job %s failed: %s: %s", job_id, exc.code.value, exc.message)
            self._finish(record, JobStatus.FAILED, metrics, error=exc.to_dict())
        except Exception as exc:  # noqa: BLE001 - a bug of ours fails this job, not the worker
            log.exception("job %s failed with an internal error", job_id)
            error = InternalError(f"{type(exc).__name__}: {exc}").to_dict()
            self._finish(record, JobStatus.FAILED, metrics, error=error)
        finally:
            if not handed_over:
                self.executor.cancel_expect()

    def _start(self, record: JobRecord, pipeline: Pipeline) -> None:
        """queued -> running (running -> running on a redelivery), when the model takes it.

        Until then the job counts as queued, so a cancel still stops it outright."""
        started_at = utc_now()
        if not self.store.transition(
            record.id, JobStatus.RUNNING, attempt_increment=1, started_at=started_at,
            worker=self.worker_name, model=pipeline.model_label, progress=0.0,
        ):
            raise _NotStarted(record.id)
        record.status, record.started_at, record.worker = JobStatus.RUNNING, started_at, self.worker_name
        record.model, record.attempt = pipeline.model_label, record.attempt + 1
        self._publish(record, EventType.STARTED)

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
            "metrics": final.metrics, "model": final.model,
        }
        if status is JobStatus.SUCCEEDED:
            fields["progress"] = 1.0
        if not started:
            fields["worker"] = final.worker
        if self.store.transition(record.id, final.status, attempt_increment=0 if started else 1, **fields):
            self._publish(final, None)
        else:
            log.warning("job %s was already final; its %s result is not recorded", record.id, status.value)
        self.jobs_done += 1

    def _publish(self, record: JobRecord, event: EventType | None) -> None:
        """event None: the final event matching the record's status."""
        if self.events is None or not record.webhook:
            return
        if event is None:
            self.events.publish_final(record)
        else:
            self.events.publish(record, event)


class _ProgressReporter:
    """The callback pipelines call with their progress; it doubles as the cancel checkpoint."""

    min_interval_s = 0.1  # progress writes are throttled; cancel is checked on every call

    def __init__(
        self, store: JobStore, record: JobRecord, publish: Callable[[JobRecord, EventType], None],
        limit_s: float,
    ) -> None:
        self.store = store
        self.record = record
        self.publish = publish
        self.limit_s = limit_s
        self.deadline = float("inf")
        self._last_write = 0.0

    def start_clock(self) -> None:
        """The time limit counts from the model's start, not from the queue."""
        self.deadline = time.monotonic() + self.limit_s

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if now - self._last_write >= self.min_interval_s or fraction >= 1.0:
            self._last_write = now
            self.store.set_progress(self.record.id, fraction)
            self.record.progress = round(fraction, 4)
            self.publish(self.record, EventType.PROGRESS)
        self.check_cancel()

    def check_cancel(self) -> None:
        """The checkpoint: canceled by a client, or past the kind's time limit."""
        if self.store.cancel_requested(self.record.id):
            raise JobCanceled(CANCELED_WHILE_RUNNING)
        if time.monotonic() > self.deadline:
            raise JobTimeout(f"the job ran past its time limit of {self.limit_s:g} s")


class _NotStarted(Exception):
    """The job was canceled (or ended) before the model took it."""


class Watchdog:
    """The hard time limit, for a model stuck between two checkpoints.

    Celery's time limits need the prefork pool, which we do not use (see
    worker/process.py). A job still running at its limit x 1.1 + 5 s is recorded as
    `timeout`, then the process exits: its supervisor (or the operator's process
    manager) restarts it with fresh memory, and the job's message, redelivered
    later, finds the job final and is dropped.
    """

    grace_factor = 1.1
    grace_s = 5.0
    exit_code = 75

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._jobs: tuple[list[str], float, float] | None = None
        self._thread = threading.Thread(target=self._loop, name="visionq-watchdog", daemon=True)
        self._thread.start()

    def arm(self, job_ids: list[str], limit_s: float) -> None:
        with self._lock:
            self._jobs = (job_ids, time.monotonic() + limit_s * self.grace_factor + self.grace_s, limit_s)

    def disarm(self) -> None:
        with self._lock:
            self._jobs = None

    def _loop(self) -> None:
        while True:
            time.sleep(0.5)
            with self._lock:
                jobs = self._jobs
            if jobs is not None and time.monotonic() > jobs[1]:
                job_ids, _, limit_s = jobs
                log.error("jobs %s stuck past the time limit of %g s; restarting this worker", job_ids, limit_s)
                error = JobTimeout(f"the job ran past its time limit of {limit_s:g} s; its worker was restarted")
                for job_id in job_ids:
                    self.store.transition(job_id, JobStatus.FAILED, completed_at=utc_now(), error=error.to_dict())
                os._exit(self.exit_code)


@contextmanager
def _timed(metrics: dict[str, Any], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        metrics[name] = round((time.perf_counter() - started) * 1000, 3)
