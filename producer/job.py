"""`Job`: a handle on one submitted job, and the small `JobSource` interface it reads through.

A `Job` never sees the `Client`: it asks a `JobSource` for its record. The Redis
job store is one source (producer/redis_source.py); the HTTP gateway's client
is another, so `Job` behaves the same whichever way the jobs travel.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Protocol

from tasks.models import default_model
from tasks.record import JobRecord
from tasks.store import NotFinalYet

log = logging.getLogger("visionq")

# How long a job may sit queued before `wait` checks whether any worker serves its kind.
NO_WORKER_CHECK_AFTER_S = 5.0


class JobSource(Protocol):
    """Where a `Job` reads and changes its record."""

    @property
    def address(self) -> str:
        """Where the jobs live, for messages (a Redis URL without its password, or the gateway's URL)."""
        ...

    def get(self, job_id: str) -> JobRecord:
        """The current record; raises JobNotFound for an unknown id."""
        ...

    def cancel(self, job_id: str) -> JobRecord:
        """Cancel (see `Client.cancel`) and return the record after."""
        ...

    def wait(
        self, job_id: str, timeout_s: float | None, on_change: Callable[[JobRecord], None] | None = None,
        seen: JobRecord | None = None,
    ) -> JobRecord:
        """Block until the job is final; TimeoutError after `timeout_s` (None: no limit). `seen`: the
        record as last read, if any (the job exists: an outage is waited out from the start)."""
        ...

    def serving_kinds(self) -> set[str]:
        """The job kinds some live worker consumes now."""
        ...


class Job:
    def __init__(self, source: JobSource, record: JobRecord) -> None:
        self._source = source
        self._record = record

    @property
    def id(self) -> str:
        return self._record.id

    @property
    def kind(self) -> str:
        return self._record.kind.value

    @property
    def status(self) -> str:
        return self._record.status.value

    @property
    def progress(self) -> float:
        return self._record.progress

    @property
    def output(self) -> dict[str, Any] | None:
        return self._record.output

    @property
    def error(self) -> dict[str, str] | None:
        return self._record.error

    @property
    def is_final(self) -> bool:
        return self._record.is_final

    def refresh(self) -> Job:
        self._record = self._source.get(self.id)
        return self

    def wait(self, timeout: float | None = None, on_change: Callable[[Job], None] | None = None) -> Job:
        """Block until the job is final and return it (refreshed).

        Woken by the job's events, not a sleep loop. Raises TimeoutError when it is
        not final within `timeout` seconds (None: wait forever). The job itself keeps
        running after a timeout. A job still queued after a few seconds with no live
        worker for its kind is logged once (the `visionq` logger, stderr by default),
        and the wait goes on: a worker may be starting.
        """
        last_state: tuple[Any, ...] | None = None

        def changed(record: JobRecord) -> None:
            nonlocal last_state
            self._record = record
            # A source may hand the same state twice (a wake-up with nothing new, a second phase's
            # first read): `on_change` hears of changes only (a redelivery, running again, is one).
            state = (record.status, record.progress, record.cancel_requested, record.attempt)
            if on_change is not None and state != last_state:
                last_state = state
                on_change(self)

        deadline = None if timeout is None else time.monotonic() + timeout
        first = NO_WORKER_CHECK_AFTER_S if timeout is None else min(timeout, NO_WORKER_CHECK_AFTER_S)
        try:
            # A Job holds the record of a read or a submit that succeeded: each phase may ride out
            # a Redis outage from its start, also one in progress when the first phase ends.
            self._record = self._source.wait(self.id, first, on_change=changed, seen=self._record)
            return self
        except TimeoutError:
            if deadline is not None and time.monotonic() >= deadline:
                raise
        self.say_if_no_worker()
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            self._record = self._source.wait(self.id, remaining, on_change=changed, seen=self._record)
        except NotFinalYet as exc:
            raise exc.after(timeout) from None
        except TimeoutError:  # a source that says no more
            raise NotFinalYet(self.id, str(self.status), timeout) from None
        return self

    def cancel(self) -> Job:
        self._record = self._source.cancel(self.id)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self._record.to_dict()

    def say_if_no_worker(self, waiting: bool = True) -> None:
        """Log a warning (the `visionq` logger) if the job is queued and no live worker serves its
        kind, or its model when it names one; `waiting`: said from a wait (else from a submit)."""
        if self.status != "queued":
            return
        try:
            serving = self._source.serving_kinds()
        except Exception:  # noqa: BLE001 - only a hint; the wait itself reports real failures
            return
        # A job that names its model (every new one does) needs a worker that loaded that model.
        model = self._record.model
        wanted = self.kind if model is None else f"{self.kind}/{model}"
        if wanted not in serving:
            shown = self.kind if model is None or model == default_model(self.kind) else wanted
            log.warning("no live worker serves %s: is `visionq worker` running against %s? (%s)", shown,
                        self._source.address, "still waiting" if waiting else "it stays queued until one starts")

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.kind} {self.status}>"
