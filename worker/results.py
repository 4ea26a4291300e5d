"""The result writer: result.json for the jobs that ended without a worker's final transition.

A worker writes a job's result.json itself when it ends the job. A job canceled or expired
while queued (`Client.cancel`, the gateway, `visionq purge`, `celery control revoke`, the
expirer) and a job ended by a worker's watchdog (which then exits) have no such worker: the
script that ends them notes them in `JobStore.unwritten_key`, in the same step, and every GPU
worker runs this chore, which writes their result.json from the record. A job is taken off
the list only once its file is written (or its record is gone), so a storage outage delays
the file and loses nothing.
"""
from __future__ import annotations

import logging
import time

from tasks.errors import JobNotFound, VisionqError
from tasks.storage import Storage
from tasks.store import JobStore
from worker.chores import Chore
from worker.outputs import publish_record

log = logging.getLogger("visionq.results")

INTERVAL_S = 1.0
PER_ROUND = 200  # a purge of thousands is written over several rounds
NOT_FINAL_AFTER_S = 60.0  # noted before its transition (the watchdog); still not final by then: refused


class ResultWriter(Chore):
    name = "result-writer"

    def __init__(self, store: JobStore, storage: Storage, interval_s: float = INTERVAL_S) -> None:
        super().__init__(store, interval_s)
        self.storage = storage

    def run_once(self) -> list[str]:
        return self.write()

    def write(self) -> list[str]:
        """Write the result.json of the noted jobs; returns the ids written."""
        noted = self.store.redis.zrange(self.store.unwritten_key, 0, PER_ROUND - 1, withscores=True)
        written = []
        for raw_id, noted_at in noted:
            job_id = raw_id.decode()
            try:
                record = self.store.get(job_id)
            except JobNotFound:
                self.store.redis.zrem(self.store.unwritten_key, job_id)  # expired or deleted: nothing to write
                continue
            except VisionqError as exc:  # a record nobody can read: writing it would only fail again
                log.warning("job %s: its record cannot be read (%s); no result.json", job_id, exc.message)
                self.store.redis.zrem(self.store.unwritten_key, job_id)
                continue
            if not record.status.is_final:
                if time.time() - noted_at > NOT_FINAL_AFTER_S:
                    self.store.redis.zrem(self.store.unwritten_key, job_id)  # its ending was refused
                continue
            try:
                publish_record(self.storage, record)
            except VisionqError as exc:
                log.warning("result.json of job %s not written yet: %s", job_id, exc.message)
                break  # the store is away: the rest wait for the next round
            self.store.redis.zrem(self.store.unwritten_key, job_id)
            written.append(job_id)
        return written
