"""Time limits: each job's clock, and the watchdog that ends a process stuck past one.

A job's clock starts when its task is picked up, so fetching an image URL and
decoding the input count (a server dripping one byte at a time, or a JPEG padded
with thousands of scans, cannot hold a worker outside the limit). It is paused
while the job waits: for the model thread behind other jobs of this worker (their
own clocks count that time), and for storage, whose outages are waited out up to
VISIONQ_STORAGE_RETRY_S (tasks/storage.py) rather than ended as a timeout.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import redis

from tasks.errors import JobTimeout
from tasks.record import utc_now
from tasks.status import JobStatus
from tasks.store import JobStore
from worker.leases import exit_giving_back

log = logging.getLogger("visionq.worker")


class JobClock:
    def __init__(self, limit_s: float, now: Callable[[], float] = time.monotonic) -> None:
        self.limit_s = limit_s
        self._now = now
        self._deadline = now() + limit_s
        self._left: float | None = None  # set while paused

    def pause(self) -> None:
        if self._left is None:
            self._left = self._deadline - self._now()
            self._deadline = float("inf")

    def resume(self) -> None:
        if self._left is not None:
            self._deadline = self._now() + self._left
            self._left = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def overdue_s(self) -> float:
        """Seconds past the limit (negative while within it)."""
        return self._now() - self._deadline

    def check(self) -> None:
        """The soft limit, at every checkpoint."""
        if self.overdue_s() > 0:
            raise JobTimeout(f"the job ran past its time limit of {self.limit_s:g} s")


class Watchdog:
    """The hard time limit, for a job stuck between two checkpoints (in a model
    call, or in a library call while fetching or decoding).

    Celery's time limits need the prefork pool, which we do not use (see
    worker/process.py). A job still in hand at its limit x 1.1 + 5 s is recorded as
    `timeout`, then the process exits: its supervisor (or the operator's process
    manager) restarts it with fresh memory, and the job's message, redelivered
    later, finds the job final and is dropped. Only worker processes arm one: a
    test running jobs in its own process must never be ended by it.
    """

    grace_factor = 0.1
    grace_s = 5.0
    exit_code = 75

    def __init__(self, store: JobStore, exit: Callable[[int], None] = exit_giving_back) -> None:
        """`exit`: ends the process; the default first gives back the messages it holds, as the
        other jobs in hand are cut short too (worker/leases.py)."""
        self.store = store
        self._exit = exit
        self._lock = threading.Lock()
        self._clocks: dict[str, JobClock] = {}
        self._thread = threading.Thread(target=self._loop, name="visionq-watchdog", daemon=True)
        self._thread.start()

    def watch(self, job_id: str, clock: JobClock) -> None:
        with self._lock:
            self._clocks[job_id] = clock

    def release(self, job_id: str) -> None:
        with self._lock:
            self._clocks.pop(job_id, None)

    def _loop(self) -> None:
        while True:
            time.sleep(0.5)
            with self._lock:
                stuck = {
                    job_id: clock for job_id, clock in self._clocks.items()
                    if clock.overdue_s() > clock.limit_s * self.grace_factor + self.grace_s
                }
            if stuck:
                self._end(stuck)

    def _end(self, stuck: dict[str, JobClock]) -> None:
        log.error("jobs %s stuck past their time limit; restarting this worker", sorted(stuck))
        for job_id, clock in stuck.items():
            error = JobTimeout(f"the job ran past its time limit of {clock.limit_s:g} s; its worker was restarted")
            try:
                # This process exits before it could write result.json: a result writer does (worker/results.py).
                self.store.advance(job_id, JobStatus.FAILED, note_unwritten=True, completed_at=utc_now(),
                                   error=error.to_dict())
            except redis.RedisError:
                pass  # Redis is away: the message, still unacknowledged, is delivered again
        self._exit(self.exit_code)
