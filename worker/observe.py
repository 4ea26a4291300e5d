"""What a worker tells the outside about its jobs, in one layer around the runner.

- Celery's view matches the job's: a job that ended `failed` is a Celery task
  failure whose exception carries its error code and message; one that ended
  `canceled` is reported `REVOKED` (Flower, `celery events`). The record stays
  the truth: this only chooses how the task ends once the record is final.
  A job that ended with no task of ours to report it (canceled or expired while queued,
  failed by a watchdog) is told to Celery by the result writer that writes its result.json
  (`TaskEndings`), as the worker that wrote it.
- `celery control revoke ID` cancels the job as `visionq cancel` does (worker/revoke.py).
- Prometheus metrics (worker/metrics.py) and one log line per final job.
- The expirer (worker/expiry.py): jobs of every kind past their start deadline.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import redis
from celery.exceptions import Ignore

from tasks.deliveries import EventPublisher
from tasks.errors import VisionqError
from tasks.kinds import JobKind
from tasks.messages import events_message, redis_db, task_event
from tasks.models import default_model
from tasks.record import JobRecord, check_job_id
from tasks.status import JobStatus
from tasks.store import JobStore
from worker.expiry import Expirer
from worker.metrics import WorkerMetrics
from worker.revoke import install_revoke

log = logging.getLogger("visionq.worker")
T = TypeVar("T")


class JobFailed(Exception):
    """How Celery sees a job that ended `failed` (Flower's FAILURE shows this text).

    Its args are exactly its parameters: Celery pickles a task's exception, and one it cannot
    rebuild becomes an UnpickleableExceptionWrapper, which the task's `throws` no longer matches
    (an ERROR line and a traceback for every failed job)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Observer:
    def __init__(self, state: Callable[[], str], metrics_address: tuple[str, int] | None = None) -> None:
        """`state()`: the worker's heartbeat state; `metrics_address`: (host, port) to serve /metrics on."""
        self.metrics = None
        if metrics_address is not None:
            self.metrics = WorkerMetrics(state)
            self.metrics.serve(*metrics_address)
        self._finals: dict[str, JobRecord] = {}  # ended by this worker, until its task reports to Celery
        self._lock = threading.Lock()
        self.store: JobStore | None = None

    def timed_load(self, load: Callable[[], T]) -> T:
        started = time.monotonic()
        loaded = load()
        if self.metrics is not None:
            self.metrics.model_load.set(time.monotonic() - started)
        return loaded

    def attach(self, store: JobStore, events: EventPublisher | None, on_final: list[Callable[[JobRecord], None]]) -> None:
        """Follow the runner's final jobs (`on_final`), take revokes, start the expirer."""
        self.store = store
        on_final.append(self.job_ended)
        install_revoke(store, events)

        def expired(record: JobRecord) -> None:
            if events is not None:
                events.publish_final(record)
            self.account(record)

        Expirer(store, expired).start()

    def job_ended(self, record: JobRecord) -> None:
        with self._lock:
            self._finals[record.id] = record
        self.account(record)

    def account(self, record: JobRecord) -> None:
        """Metrics and the log line of one job this worker ended."""
        if self.metrics is not None:
            self.metrics.observe_final(record)
        log_final(record)

    @contextmanager
    def in_progress(self, kind: JobKind, queue: str | None) -> Iterator[None]:
        """A job of `kind` held while the block runs; `queue`: the queue its message came
        from, which names its model (tasks.models.model_queue)."""
        if self.metrics is None:
            yield
            return
        gauge = self.metrics.in_progress.labels(kind.value, model_of_queue(kind, queue))
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def report_to_celery(self, task: Any, job_id: str) -> None:
        """End the Celery task as the job ended: raises JobFailed, or Ignore after a revoked event."""
        with self._lock:
            record = self._finals.pop(job_id, None)
        if record is None and self.store is not None:
            try:  # ended elsewhere (canceled while queued, expired, a duplicate delivery)
                record = self.store.get(check_job_id(job_id))
            except VisionqError:
                return  # a forged or expired message: nothing to report
        if record is None or not record.is_final:
            return
        if record.status is JobStatus.FAILED:
            error = record.error or {}
            raise JobFailed(error.get("code", "internal"), error.get("message", ""))
        if record.status is JobStatus.CANCELED:
            # Celery has no "canceled": REVOKED is what its tools show for it. Ignore acknowledges
            # the message without a success or failure event that would replace that state.
            task.send_event("task-revoked", terminated=False, signum=None, expired=False)
            raise Ignore()


class TaskEndings:
    """Celery task events for jobs that ended with no task of ours reporting them: what the
    task would have sent (task-revoked for `canceled`, task-failed with `JobFailed` for `failed`),
    published as worker `hostname`, so Flower and `celery events` leave PENDING (or STARTED, for a
    job failed by a watchdog whose worker exited). A job whose message a worker still meets later
    is reported once more then, in the same state."""

    def __init__(self, client: redis.Redis, prefix: str, redis_url: str, hostname: str) -> None:
        self.client, self.prefix, self.hostname = client, prefix, hostname
        self.db = redis_db(redis_url)

    def announce(self, records: list[JobRecord]) -> None:
        events = [event for record in records if (event := self._event_of(record)) is not None]
        if not events:
            return
        routing_key = events[0]["type"].replace("-", ".") if len(events) == 1 else "task.multi"
        channel, message = events_message(events, routing_key, self.prefix, self.db, self.hostname)
        try:
            self.client.publish(channel, message)
        except redis.RedisError as exc:  # a monitor's view only: the records are right
            log.warning("Celery events of %d ended jobs not sent: %s", len(events), exc)

    def _event_of(self, record: JobRecord) -> dict[str, Any] | None:
        if record.status is JobStatus.CANCELED:
            return task_event("task-revoked", record.id, self.hostname, terminated=False, signum=None, expired=False)
        if record.status is JobStatus.FAILED:
            told = record.error or {}
            error = JobFailed(told.get("code", "internal"), told.get("message", ""))
            return task_event("task-failed", record.id, self.hostname, exception=repr(error), traceback=str(error))
        return None


def model_of_queue(kind: JobKind, queue: str | None) -> str:
    """The model name a `kind` queue carries jobs for: its default on the kind's own queue."""
    if queue is not None and queue.startswith(f"{kind.queue}."):
        return queue.removeprefix(f"{kind.queue}.")
    return default_model(kind.value)


def log_final(record: JobRecord) -> None:
    error = record.error or {}
    fields: dict[str, Any] = {
        "job_id": record.id, "kind": record.kind.value, "status": record.status.value,
        "error_code": error.get("code"), "attempt": record.attempt, "worker": record.worker,
    }
    for name in ("queue_ms", "run_ms", "encode_ms", "upload_ms", "total_ms", "batch_size"):
        value = record.metrics.get(name)
        if value is not None:
            fields[name] = round(value, 3) if isinstance(value, float) else value  # no 36.477000000000004
    durations = " ".join(f"{k}={v}" for k, v in fields.items() if k.endswith("_ms") or k == "batch_size")
    code = f" {fields['error_code']}" if fields["error_code"] else ""
    log.info("job %s %s %s%s %s", record.id, record.kind.value, record.status.value, code, durations, extra=fields)
