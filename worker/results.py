"""The result writer: result.json for the jobs that ended without a worker's final transition.

A worker writes a job's result.json itself when it ends the job. A job canceled or expired
while queued (`Client.cancel`, the gateway, `visionq purge`, `celery control revoke`, the
expirer) and a job failed by a worker's watchdog (which then exits) have no such worker: the
script that ends them notes them in `JobStore.unwritten_key`, in the same step, and every GPU
worker runs this chore, which writes their result.json from the record. So does a worker whose
final transition was refused (the job had ended otherwise): the file it wrote is rewritten.

Each round claims the notes that are due by moving them a lease ahead (one script), so writers
on several workers never take the same note; a note is removed only once its file is written
(or its record is gone), so a storage outage or a writer that dies delays the file and loses
nothing: the note comes due again when its lease ends.
"""
from __future__ import annotations

import logging

from tasks.errors import JobNotFound, StorageError, VisionqError
from tasks.storage import Storage
from tasks.store import JobStore
from worker.chores import Chore
from worker.outputs import publish_record

log = logging.getLogger("visionq.results")

INTERVAL_S = 1.0
PER_ROUND = 200  # a purge of thousands is written over several rounds
LEASE_S = 60  # a claimed note not written by then (its writer died, storage is away) comes due again

# KEYS[1]: the results to write. ARGV: how many, lease seconds. The notes due now (Redis's clock),
# each moved a lease ahead; returns their ids.
_CLAIM = """
local now = tonumber(redis.call('TIME')[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id) end
return due
"""


class ResultWriter(Chore):
    name = "result-writer"

    def __init__(self, store: JobStore, storage: Storage, interval_s: float = INTERVAL_S) -> None:
        super().__init__(store, interval_s)
        self.storage = storage
        self._claim = store.redis.register_script(_CLAIM)

    def run_once(self) -> list[str]:
        return self.write()

    def write(self) -> list[str]:
        """Write the result.json of the notes due; returns the ids written."""
        written = []
        for raw_id in self._claim(keys=[self.store.unwritten_key], args=[PER_ROUND, LEASE_S]):
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
            if not record.status.is_final:  # never noted so: whoever ends it writes its file
                log.warning("job %s is %s, not final; no result.json yet", job_id, record.status.value)
                self.store.redis.zrem(self.store.unwritten_key, job_id)
                continue
            try:
                publish_record(self.storage, record)
            except StorageError as exc:
                log.warning("result.json of job %s not written yet: %s", job_id, exc.message)
                break  # the store is away: this round's other notes come due again after their lease
            except VisionqError as exc:
                log.warning("result.json of job %s not written (retried in %d s): %s", job_id, LEASE_S, exc.message)
                continue
            self.store.redis.zrem(self.store.unwritten_key, job_id)
            written.append(job_id)
        return written
