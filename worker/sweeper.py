"""The sweeper: publishes again the message of a queued job that Redis no longer holds.

kombu's Redis transport takes a message with BRPOP and only then records it in
its unacked hash; a worker killed between the two loses the message, and its job
would stay `queued` forever. The job store is the source of truth: every worker
runs this sweeper, which looks at jobs queued for longer than
VISIONQ_SWEEP_GRACE_S, searches kombu's unacked hash and every queue list for
their message (their own list first, a chunk at a time from its tail, where the
oldest wait: Redis is never held for a whole list), and publishes the message again
for those found nowhere (twice, a second apart, so a live worker's hand-over of a few
milliseconds is not mistaken for a loss). This is safe because a job's status
only moves by check-and-set: a second copy of a message finds the job running or
final and does nothing harmful. A republish is not an attempt (only a run that
starts counts toward VISIONQ_MAX_ATTEMPTS).
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable


from tasks.errors import JobNotFound
from tasks.expiry import past_start_deadline
from tasks.kinds import JobKind, Priority, priority_list_key
from tasks.models import model_queue
from tasks.queues import ChunkReader
from tasks.served_models import queue_lists
from tasks.status import JobStatus
from tasks.store import JobStore
from worker.chores import Chore

log = logging.getLogger("visionq.sweeper")

# The ids among ARGV whose message is in kombu's unacked hash KEYS[1] (as long as workers x prefetch).
_FOUND_UNACKED = """
local wanted, found = {}, {}
for i = 1, #ARGV do wanted[ARGV[i]] = true end
for _, raw in ipairs(redis.call('HVALS', KEYS[1])) do
  local id = string.match(raw, '"id": ?"([^"]+)"')
  if id and wanted[id] then wanted[id] = nil; table.insert(found, id) end
end
return found
"""
SCAN_CHUNK = 200  # messages per script: one carrying its image inline can be MBs
# Consecutive chunks overlap by this many messages: the ones workers pop from the tail between two
# chunks shift the rest toward it, and without the overlap as many would be read by neither.
SCAN_OVERLAP = 50
assert 0 <= SCAN_OVERLAP < SCAN_CHUNK  # else a list would be read from its tail forever


def unacked_key(prefix: str) -> str:
    """kombu's hash of messages taken by a worker and not yet acknowledged (under our prefix)."""
    return f"{prefix}:unacked"


class Sweeper(Chore):
    name = "sweeper"
    confirm_s = 1.0  # a message must be missing twice, this far apart

    def __init__(
        self, store: JobStore, publish: Callable[[JobKind, str, dict[str, Any], Priority, str | None], None],
        grace_s: float, *, sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(store, max(1.0, grace_s / 3))
        self.publish = publish
        self.grace_s = grace_s
        self.sleep = sleep
        self._ids_in_chunk = ChunkReader(store.redis)
        self._found_unacked = store.redis.register_script(_FOUND_UNACKED)

    def run_once(self) -> list[str]:
        return self.sweep()

    def sweep(self) -> list[str]:
        """Publish again the messages of queued jobs found nowhere; returns their ids."""
        candidates = self.store.queued_since(time.time() - self.grace_s)
        if not candidates:
            return []
        absent = self._find_absent(candidates)
        self.store.mark_queued_seen([i for i in candidates if i not in absent])
        if not absent:
            return []
        self.sleep(self.confirm_s)
        republished = []
        for job_id in self._find_absent(absent):
            try:
                record = self.store.get(job_id)
            except JobNotFound:
                self.store.forget_queued([job_id])
                continue
            if record.status is not JobStatus.QUEUED:
                self.store.forget_queued([job_id])
                continue
            if past_start_deadline(record):
                continue  # the expirer ends it `expired` (worker/expiry.py); republishing would only feed a dead job
            message = self.store.queued_message(record)
            log.warning("job %s is queued but its message is nowhere in Redis; publishing it again", job_id)
            self.publish(record.kind, job_id, message, Priority(record.priority), record.model)
            self.store.mark_queued_seen([job_id])
            republished.append(job_id)
        return republished

    def _find_absent(self, job_ids: list[str]) -> set[str]:
        prefix = self.store.prefix
        # Where each job's message should wait (its model's queue, its priority's list) is searched
        # first; then every other list a message may be on, in case it was published elsewhere.
        expected: list[str] = []
        with self.store.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self.store.job_key(job_id), "kind", "model", "priority")
            for kind, model, priority in pipe.execute():
                if kind is not None:
                    queue = model_queue(json.loads(kind), None if model is None else json.loads(model))
                    level = Priority.NORMAL if priority is None else Priority(json.loads(priority))
                    expected.append(priority_list_key(queue, level, prefix))
                    if model is not None:  # a job for another model than its kind's default waits on its own queue
                        expected += queue_lists(JobKind(json.loads(kind)), json.loads(model), prefix)
        others = sorted({key for kind in JobKind for key in queue_lists(kind, None, prefix)})
        absent = set(job_ids)
        # The lists first, kombu's unacked hash last: a message moves from the first to the second
        # (a worker takes it), never back while its worker lives, so one moving meanwhile is still seen.
        for key in dict.fromkeys([*expected, *others]):
            offset = 0
            while absent:
                read, ids = self._ids_in_chunk(key, offset, SCAN_CHUNK, among=absent)
                absent -= set(ids)
                if read < SCAN_CHUNK:
                    break  # read up to the head
                offset += SCAN_CHUNK - SCAN_OVERLAP
        if absent:
            absent -= {i.decode() for i in self._found_unacked(keys=[unacked_key(prefix)], args=list(absent))}
        return absent


def celery_publisher(app: Any) -> Callable[[JobKind, str, dict[str, Any], Priority, str | None], None]:
    """Publish a job's message exactly as the producer does (worker's Celery app): on the
    queue of the job's own model, so only workers that loaded it take it again."""
    def publish(kind: JobKind, job_id: str, request: dict[str, Any], priority: Priority, model: str | None = None) -> None:
        app.send_task(
            kind.task_name, kwargs={"job_id": job_id, "request": request},
            queue=model_queue(kind.value, model), task_id=job_id, priority=priority.level,
        )
    return publish
