"""The result writer: result.json for the jobs that ended without a worker's final transition.

A worker writes a job's result.json itself when it ends the job. A job canceled or expired
while queued (`Client.cancel`, the gateway, `visionq purge`, `celery control revoke`, the
expirer) and a job failed by a worker's watchdog (which then exits) have no such worker: the
script that ends them notes them in `JobStore.unwritten_key`, in the same step, and every GPU
worker runs this chore, which writes their result.json from the record. So does a worker whose
final transition was refused (the job had ended otherwise): the file it wrote is rewritten.

Each round claims the notes that are due by moving them a lease ahead (one script), so writers
on several workers never take the same note; a note is removed only once its file is written
(or its record is gone), and only if it is still the claim it was (a note made again meanwhile
stays), so a storage outage or a writer that dies delays the file and loses nothing: the note
comes due again when its lease ends. The lease outlasts a storage call's whole retry budget
(VISIONQ_STORAGE_RETRY_S), and a round ends halfway through its lease.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from tasks.errors import StorageError, VisionqError
from tasks.record import JobRecord
from tasks.storage import Storage
from tasks.store import JobStore, run_pipelined
from worker.chores import Chore
from worker.outputs import publish_record

log = logging.getLogger("visionq.results")

INTERVAL_S = 1.0
PER_ROUND = 500  # notes claimed at a time
WRITERS = 8  # result.json files written at once
ROUND_S = 10.0  # a round goes on claiming while whole batches are due, this long at most
LEASE_BEYOND_RETRY_S = 60  # the lease: the storage retry budget and this

# KEYS[1]: the results to write. ARGV: how many, lease seconds. The notes due now (Redis's clock),
# the latest first (a cancel made now is not written after a purge's 100,000), each moved a lease
# ahead; returns {the lease's end, their ids}.
_CLAIM = """
local now = tonumber(redis.call('TIME')[1])
local lease_end = now + tonumber(ARGV[2])
local due = redis.call('ZREVRANGEBYSCORE', KEYS[1], now, '-inf', 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], lease_end, id) end
table.insert(due, 1, tostring(lease_end))
return due
"""
# KEYS[1]: the results to write. ARGV: a job id, the end of the lease it was claimed with. Removes
# the note only if it is still that claim: one made again meanwhile (a refused transition's, due
# now) or claimed again by another writer after the lease ran out stays.
_DONE = """
if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1])) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
"""


class ResultWriter(Chore):
    name = "result-writer"

    def __init__(self, store: JobStore, storage: Storage, storage_retry_s: float,
                 interval_s: float = INTERVAL_S, on_written: Callable[[list[JobRecord]], None] | None = None) -> None:
        """`storage_retry_s`: how long one storage call may wait out an outage (VISIONQ_STORAGE_RETRY_S);
        `on_written`: called with each batch's records once their files are written (Celery's view
        of them, worker/observe.py `TaskEndings`)."""
        super().__init__(store, interval_s)
        self.storage = storage
        self.on_written = on_written
        self.lease_s = int(storage_retry_s) + LEASE_BEYOND_RETRY_S
        self._claim = store.redis.register_script(_CLAIM)
        self._done = store.redis.register_script(_DONE)

    def run_once(self) -> list[str]:
        """Batches while a whole one was due, for up to ROUND_S: a purge's notes drain at the
        storage's pace, not PER_ROUND a second."""
        started, written = time.monotonic(), []
        while True:
            batch, claimed = self._write_batch()
            written += batch
            if claimed < PER_ROUND or time.monotonic() - started > ROUND_S:
                return written

    def write(self) -> list[str]:
        """Write the result.json of one batch of the notes due; returns the ids written."""
        return self._write_batch()[0]

    def _write_batch(self) -> tuple[list[str], int]:
        started = time.monotonic()
        lease_end, *claimed = self._claim(keys=[self.store.unwritten_key], args=[PER_ROUND, self.lease_s])
        ids = [raw_id.decode() for raw_id in claimed]
        records = self.store.get_many(ids)
        done = [job_id for job_id in ids if job_id not in records]  # expired, deleted or unreadable: nothing to write
        todo = []
        for record in records.values():
            if not record.status.is_final:  # never noted so: whoever ends it writes its file
                log.warning("job %s is %s, not final; no result.json yet", record.id, record.status.value)
                done.append(record.id)
            else:
                todo.append(record)
        written = self._publish_all(todo, started)
        done += written
        run_pipelined(self._done, [([self.store.unwritten_key], [job_id, lease_end]) for job_id in done])
        if self.on_written is not None and written:
            self.on_written([records[job_id] for job_id in written])
        return written, len(ids)

    def _publish_all(self, records: list[JobRecord], started: float) -> list[str]:
        """Each record's result.json, WRITERS at a time (on S3 a file is a round trip of tens of
        ms: one after another, a purge's 100,000 took over half an hour at 20 ms a PUT); the ids
        written. After a storage error the store is away: the rest come due again after their
        lease, as do those not begun within half of it. Daemon threads: a worker that exits never
        waits on a write."""
        pending, written = iter(records), []
        lock, away = threading.Lock(), threading.Event()

        def publish_pending() -> None:
            while not away.is_set() and time.monotonic() - started <= self.lease_s / 2:
                with lock:
                    record = next(pending, None)
                if record is None:
                    return
                try:
                    publish_record(self.storage, record)
                except StorageError as exc:
                    log.warning("result.json of job %s not written yet: %s", record.id, exc.message)
                    away.set()
                    return
                except VisionqError as exc:
                    log.warning("result.json of job %s not written (again in %d s): %s", record.id, self.lease_s,
                                exc.message)
                    continue
                except Exception:  # noqa: BLE001 - a bug of ours: said here, the note kept, the round goes on
                    log.exception("result.json of job %s not written (again in %d s)", record.id, self.lease_s)
                    continue
                written.append(record.id)

        threads: list[threading.Thread] = []
        try:
            for n in range(min(WRITERS, len(records)) - 1):
                thread = threading.Thread(target=publish_pending, name=f"result-writer-{n}", daemon=True)
                thread.start()  # may raise ("can't start new thread"): those started are joined below
                threads.append(thread)
            publish_pending()  # this thread is one of them
        finally:
            for thread in threads:
                thread.join()
        return written
