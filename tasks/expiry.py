"""Jobs that leave the queue without running: past their start deadline (`expired`) or purged.

A job carries a time-to-start deadline (`queue_timeout_s` from its `created_at`,
indexed in the store's deadlines set). A job still `queued` past it fails with
error code `expired`: every worker runs an expirer (worker/expiry.py) over every
kind, so a kind that no worker serves still ends its jobs. `visionq purge KIND`
cancels a kind's queued jobs. Both end a job only while it is still `queued` (one
Lua check-and-set: a worker that starts it first wins), then take its message out
of the queue lists, so queue depths (the autoscaler's signal) count live jobs only.
"""
from __future__ import annotations

import json
import logging
import math
import time
from typing import Callable, Iterator

import redis

from tasks.errors import InvalidInput, JobCanceled, JobExpired, VisionqError
from tasks.kinds import JobKind, Priority, priority_list_key
from tasks.models import model_queue
from tasks.queues import ChunkReader
from tasks.record import JobRecord, parse_time, utc_now
from tasks.served_models import models_by_kind, queue_lists
from tasks.settings import Settings
from tasks.status import JobStatus
from tasks.store import JobStore, run_pipelined

log = logging.getLogger("visionq.expiry")

# KEYS[1] job hash, KEYS[2] queued index, KEYS[3] deadlines, KEYS[4] unpublished final
# events (JobStore.unpublished_key), KEYS[5] the results to write (JobStore.unwritten_key).
# ARGV: error JSON, completed_at JSON, ttl, event channel, job id. Ends the job
# `failed`/`canceled` (ARGV[6]) only while it is queued; returns 1 if it did. A second run of the
# same call (a client with a redis-py Retry sends it again when the reply is lost: tasks/store.py
# `_CREATE`) finds the job ended with its own error and time, and answers 1 again, so the caller
# still publishes it.
_END_QUEUED = """
local raw, webhook = unpack(redis.call('HMGET', KEYS[1], 'status', 'webhook'))
redis.call('ZREM', KEYS[3], ARGV[5])
if raw ~= cjson.encode('queued') then
  if raw ~= cjson.encode(ARGV[6]) then return 0 end
  local ended_with, ended_at = unpack(redis.call('HMGET', KEYS[1], 'error', 'completed_at'))
  if ended_with == ARGV[1] and ended_at == ARGV[2] then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'status', cjson.encode(ARGV[6]), 'error', ARGV[1], 'completed_at', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('HDEL', KEYS[1], 'message')
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[6])
local now = redis.call('TIME')[1]
if webhook and webhook ~= 'null' then redis.call('ZADD', KEYS[4], now, ARGV[5]) end
redis.call('ZADD', KEYS[5], now, ARGV[5])
return 1
"""

# KEYS[1]: a queue list. ARGV: the chunk's distance from the list's tail (0: it ends at the tail),
# its length, then job ids. Removes the chunk's messages of those jobs; returns how many. Each is
# overwritten in place by a tombstone (no message is one: they are JSON), then the tombstones are
# removed counting from the tail, which stops at the last one: every step walks from the tail, so
# the script holds Redis for the chunk and its distance from the tail, never for the whole list
# (one LRANGE 0 -1 and an LREM from the head per job held Redis ~7 s for 200 jobs in a queue of
# 100,000). A message's first `"id": "` is Celery's task id header, the job id.
_REMOVE_FROM_CHUNK = """
local length = redis.call('LLEN', KEYS[1])
local last = length - 1 - tonumber(ARGV[1])
if last < 0 then return 0 end
local first = math.max(0, last - tonumber(ARGV[2]) + 1)
local doomed = {}
for i = 3, #ARGV do doomed[ARGV[i]] = true end
local marked = 0
for n, raw in ipairs(redis.call('LRANGE', KEYS[1], first - length, last - length)) do
  local id = string.match(raw, '"id": ?"([^"]+)"')
  if id and doomed[id] then
    redis.call('LSET', KEYS[1], first + n - 1 - length, 'visionq:removed')
    marked = marked + 1
  end
end
if marked > 0 then redis.call('LREM', KEYS[1], -marked, 'visionq:removed') end
return marked
"""
SCAN_CHUNK = 200  # messages read at a time: one carrying its image inline can be MBs
# How far into a queue list the expirer looks for the messages of the jobs it ended. A queue is
# first in, first out, so theirs are among the oldest, at the tail; one it does not find there (a
# worker holds it, or the sweeper published it again) stays until a worker takes it and drops it.
EXPIRY_SCAN_LIMIT = 10_000
PURGE_CHUNK = 500  # queued jobs read and ended at a time: three pipelined round trips a chunk


def check_queue_timeout(value: object, kind: JobKind, settings: Settings) -> float:
    """A submit's `queue_timeout_s`, or the kind's default; InvalidInput naming the value and the range.

    At most the record's TTL: a deadline must fall while the record still exists."""
    if value is None:
        return float(min(settings.queue_timeout_s(kind), settings.job_ttl_s))  # a float however it was set
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidInput(f"queue_timeout_s {value!r} must be a number of seconds")
    if not 0 < value <= settings.job_ttl_s:
        shown = int(value) if float(value).is_integer() else value  # as typed: 99999999, not 1e+08
        raise InvalidInput(f"queue_timeout_s {shown} must be above 0 and at most {settings.job_ttl_s} (the job TTL)")
    return float(value)


def start_deadline(record: JobRecord) -> float | None:
    """Epoch seconds by which a worker must start the job; None: no deadline."""
    if record.queue_timeout_s is None:
        return None
    return parse_time(record.created_at).timestamp() + record.queue_timeout_s


def past_start_deadline(record: JobRecord, now: float | None = None) -> bool:
    deadline = start_deadline(record)
    return deadline is not None and (time.time() if now is None else now) >= deadline


def expired_error(record: JobRecord, now: float) -> JobExpired:
    waited_s = now - parse_time(record.created_at).timestamp()
    return JobExpired(
        f"job {record.id} waited {waited_s:.0f} s in the {record.kind.value} queue and no worker started it "
        f"within its queue timeout of {record.queue_timeout_s:g} s (queue_timeout_s, default "
        f"VISIONQ_QUEUE_TIMEOUT_{record.kind.name}_S); is a worker serving {_served(record)} running?"
    )


def _served(record: JobRecord) -> str:
    """What a worker must serve to take the job: its kind, or its model when it named one."""
    return record.kind.value if record.model is None else f"{record.kind.value}/{record.model}"


class QueueEnds:
    """Expire and purge queued jobs in one job store."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self._end = store.redis.register_script(_END_QUEUED)
        self._remove = store.redis.register_script(_REMOVE_FROM_CHUNK)
        self._ids_in_chunk = ChunkReader(store.redis)

    def expire_due(self, now: float | None = None, limit: int = 200) -> list[JobRecord]:
        """Fail `expired` the queued jobs past their deadline; returns the records this call ended."""
        now = time.time() if now is None else now
        due = [i.decode() for i in self.store.redis.zrangebyscore(
            self.store.deadlines_key, "-inf", now, start=0, num=limit)]
        records = self.store.get_many(due)
        gone = [job_id for job_id in due if job_id not in records]  # TTL, or a record nobody can read
        if gone:
            self.store.redis.zrem(self.store.deadlines_key, *gone)
        ended = self._end_queued([(r, expired_error(r, now)) for r in records.values()], JobStatus.FAILED)
        self._remove_messages(ended, EXPIRY_SCAN_LIMIT)
        return ended

    def purge(self, kind: JobKind, reason: str,
              on_progress: Callable[[int], None] | None = None) -> list[JobRecord]:
        """Cancel every queued job of `kind`; returns the records this call ended. `on_progress`:
        called with how many it has ended so far, after each chunk of PURGE_CHUNK."""
        ended: list[JobRecord] = []
        error = JobCanceled(reason)
        for records in self._queued_of(kind):
            ended += self._end_queued([(record, error) for record in records], JobStatus.CANCELED)
            if on_progress is not None:
                on_progress(len(ended))
        self._remove_messages(ended, None)
        return ended

    def drop_dead_messages(self, kind: JobKind) -> int:
        """Take out of `kind`'s queues (every model's) the messages of jobs already final or gone,
        e.g. canceled one by one while queued: a worker would drop them unrun, but until then
        they count in the queue depth an autoscaler reads. Returns how many were removed."""
        removed = 0
        for name in models_by_kind(self.store.redis, self.store.prefix)[kind]:
            for key in queue_lists(kind, name, self.store.prefix):
                removed += self._sweep_list(key, self._dead_among)
        return removed

    def _dead_among(self, ids: list[str]) -> set[str]:
        """Of these jobs, those whose record is final or gone. Only a record still queued or
        running keeps its message: a message and its record are written together (the submit
        script), so a message without one is of a job long gone."""
        with self.store.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self.store.job_key(job_id), "status")
            statuses = pipe.execute()
        return {job_id for job_id, raw in zip(ids, statuses)
                if raw is None or json.loads(raw) not in (JobStatus.QUEUED.value, JobStatus.RUNNING.value)}

    def _sweep_list(self, key: str, doomed_among: Callable[[list[str]], set[str]],
                    scan_limit: int | None = None, wanted: int | None = None) -> int:
        """Remove from the queue list `key` the messages of the jobs `doomed_among` picks from each
        chunk's job ids, reading a chunk at a time from the tail (the oldest first), so Redis is
        never held for the whole list; stops after `wanted` removals or `scan_limit` messages read
        (None: no limit). Returns how many were removed. A message popped from the tail meanwhile
        shifts the rest toward it, past the chunks read: one may be missed, never a wrong one removed."""
        removed = offset = 0
        while (wanted is None or removed < wanted) and (scan_limit is None or offset < scan_limit):
            read, ids = self._ids_in_chunk(key, offset, SCAN_CHUNK)
            ids = [i for i in ids if i]
            picked = doomed_among(ids) if ids else set()
            gone = int(self._remove(keys=[key], args=[offset, SCAN_CHUNK, *picked])) if picked else 0
            removed += gone
            offset += read - gone
            if read < SCAN_CHUNK:
                break  # read up to the head
        return removed

    def _queued_of(self, kind: JobKind) -> Iterator[list[JobRecord]]:
        """The queued jobs of `kind`, PURGE_CHUNK records at a time (their kinds, then their records:
        two pipelined round trips a chunk, beside ZSCAN's)."""
        for chunk in _chunks((i.decode() for i, _ in self.store.redis.zscan_iter(
                self.store.queued_key, count=PURGE_CHUNK)), PURGE_CHUNK):
            with self.store.redis.pipeline(transaction=False) as pipe:
                for job_id in chunk:
                    pipe.hget(self.store.job_key(job_id), "kind")
                kinds = pipe.execute()
            ours = [job_id for job_id, raw in zip(chunk, kinds) if raw is not None and json.loads(raw) == kind.value]
            if ours:
                yield list(self.store.get_many(ours).values())

    def _end_queued(self, doomed: list[tuple[JobRecord, VisionqError]], status: JobStatus) -> list[JobRecord]:
        """End each job `status` with its error if it is still queued, in one round trip; returns
        the records of those it ended (the others a worker started, or were ended otherwise, first)."""
        completed_at = utc_now()
        store = self.store
        calls = [([store.job_key(record.id), store.queued_key, store.deadlines_key, store.unpublished_key,
                   store.unwritten_key],
                  [json.dumps(error.to_dict()), json.dumps(completed_at), store.ttl_s,
                   store.events_channel(record.id), record.id, status.value])
                 for record, error in doomed]
        ended = []
        answers = run_pipelined(self._end, calls, raise_on_error=False) if calls else []
        for (record, error), applied in zip(doomed, answers):
            if isinstance(applied, redis.RedisError):  # that job alone: the others ended are reported
                log.warning("job %s could not be ended %s: %s", record.id, status.value, applied)
            elif applied:
                record.status, record.error, record.completed_at = status, error.to_dict(), completed_at
                ended.append(record)
        return ended

    def take_message_of(self, record: JobRecord) -> bool:
        """A job just canceled while queued: its message out of its list, if it is among the newest
        or the oldest SCAN_CHUNK there (a cancel soon after the submit, or of a job next in line),
        so queue depths stop counting it; returns whether it was. One not found there stays until
        a worker takes it and drops it, or `visionq purge` runs. A failure is logged, never raised:
        the cancel has happened, and the message only counts in a queue depth."""
        key = self._list_of(record)
        try:
            newest = max(0, int(self.store.redis.llen(key)) - SCAN_CHUNK)  # the head's chunk, from the tail
            return any(int(self._remove(keys=[key], args=[offset, SCAN_CHUNK, record.id]))
                       for offset in dict.fromkeys((0, newest)))
        except Exception:  # noqa: BLE001 - see the docstring
            log.warning("job %s: its message was not taken out of its queue", record.id, exc_info=True)
            return False

    def _list_of(self, record: JobRecord) -> str:
        """The list a job's message waits on: its model's queue, its priority's list."""
        return priority_list_key(model_queue(record.kind.value, record.model), Priority(record.priority),
                                 self.store.prefix)

    def _remove_messages(self, records: list[JobRecord], scan_limit: int | None) -> None:
        """Take these ended jobs' messages out of their queue lists. A failure is logged, never
        raised: the jobs are ended already, and their callers still owe them their final event; a
        message left behind is dropped by the worker that takes it."""
        try:
            by_list: dict[str, set[str]] = {}
            for record in records:
                by_list.setdefault(self._list_of(record), set()).add(record.id)
            for key, ids in by_list.items():
                self._sweep_list(key, ids.intersection, scan_limit, wanted=len(ids))
        except Exception:  # noqa: BLE001 - see the docstring
            log.exception("the messages of %d ended jobs were not all taken out of their queues", len(records))


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
