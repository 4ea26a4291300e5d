"""Job records in Redis: one hash per job, every status change atomic.

Each field of the hash holds JSON. Status changes run as one Lua script that
checks the current status against `tasks.status.TRANSITIONS`, so two workers (a
redelivery) or a worker and a cancel can race and the loser is simply refused:
a final status is never overwritten. Every change is also published on the
job's event channel, which is what `Job.wait()` listens to instead of polling.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import MISSING, dataclass
from typing import Any

import redis

from tasks.errors import InvalidInput, JobNotFound
from tasks.kinds import JobKind
from tasks.record import JobRecord, new_job_id, utc_now
from tasks.served_models import CATALOGUE_NAMES, declare_submitted
from tasks.status import FINAL_STATUSES, JobStatus, allowed_sources

log = logging.getLogger("visionq.store")

# KEYS: the job hash, the queued index, the start deadlines, the unpublished final events, [kombu's
# unacked index and hash, with a delivery tag]. ARGV: new status, allowed current statuses (space
# separated), ttl seconds, event channel, attempt increment, job id, the error to end with when a
# cancel was requested (JSON; '': a cancel does not change this transition), the delivery tag to
# acknowledge along ('': none), '1' to return the record after, the most attempts a job that was
# running may have to be started again ('': no limit), '1' to note the job among the results to
# write (the last KEYS: `JobStore.unwritten_key`; for one whose worker exits before it writes
# result.json), then field/value pairs (JSON).
# Returns {outcome, current status, '1' if a cancel is requested, the record's fields (flat) or {}}:
# the worker's cancel check and record read ride on the transitions it makes anyway. When a
# requested cancel wins, the job ends `canceled` with that error and none of the output, error or
# progress given. Acknowledging here removes the message from kombu's unacked bookkeeping in the
# same step that makes the job final (worker/broker.py then skips kombu's own ack round trip), and
# a job with a webhook is noted among the unpublished final events (`JobStore.unpublished_key`).
# A second run of the same call (sent again after its answer was lost: by worker/runtime.py's
# `until_redis_answers`, or by a redis-py Retry) finds the job where the first left it, with the
# `started_at` (to running) or `completed_at` (to a final status) it sets, and its `worker` and
# `metrics` when given, and answers as the first did without acting again: a redelivery's
# running -> running would count an attempt more, and a final transition would read as refused.
_TRANSITION = """
local raw, flag, stored_id, webhook = unpack(redis.call('HMGET', KEYS[1], 'status', 'cancel_requested', 'id', 'webhook'))
if not raw then return {'missing', '', '', {}} end
local cancel = flag == 'true' and '1' or ''
local current = cjson.decode(raw)
-- A record whose id is not its key's was written by hand (forged): never touch it.
if not stored_id or cjson.decode(stored_id) ~= ARGV[6] then return {'forged', current, '', {}} end
if current == ARGV[1] or (current == 'canceled' and ARGV[7] ~= '') then
  local mark = ARGV[1] == 'running' and 'started_at' or 'completed_at'
  local marked, same = false, true
  for i = 12, #ARGV, 2 do
    if ARGV[i] == mark or ARGV[i] == 'worker' or ARGV[i] == 'metrics' then
      marked = marked or ARGV[i] == mark
      same = same and redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1]
    end
  end
  if marked and same then
    local record = {}
    if ARGV[9] == '1' then record = redis.call('HGETALL', KEYS[1]) end
    return {current == ARGV[1] and 'ok' or 'canceled', current, cancel, record}
  end
end
local allowed = false
for s in string.gmatch(ARGV[2], '%S+') do
  if s == current then allowed = true end
end
if not allowed then return {'refused', current, cancel, {}} end
if ARGV[10] ~= '' and current == 'running' then
  local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
  if attempt >= tonumber(ARGV[10]) then return {'exhausted', current, cancel, redis.call('HGETALL', KEYS[1])} end
end
local new = ARGV[1]
if ARGV[7] ~= '' and cancel == '1' then
  new = 'canceled'
  local kept = {'error', ARGV[7]}
  for i = 12, #ARGV, 2 do
    if ARGV[i] ~= 'output' and ARGV[i] ~= 'error' and ARGV[i] ~= 'progress' then
      table.insert(kept, ARGV[i]); table.insert(kept, ARGV[i + 1])
    end
  end
  redis.call('HSET', KEYS[1], 'status', cjson.encode(new), unpack(kept))
else
  -- One HSET for the status and every field: Redis's cost is per command.
  redis.call('HSET', KEYS[1], 'status', cjson.encode(new), unpack(ARGV, 12))
end
if current == 'queued' and new ~= 'queued' then
  redis.call('ZREM', KEYS[2], ARGV[6])
  redis.call('ZREM', KEYS[3], ARGV[6])
  redis.call('HDEL', KEYS[1], 'message')
end
if tonumber(ARGV[5]) > 0 then redis.call('HINCRBY', KEYS[1], 'attempt', ARGV[5]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], new)
if ARGV[8] ~= '' then
  redis.call('ZREM', KEYS[5], ARGV[8])
  redis.call('HDEL', KEYS[6], ARGV[8])
end
if (new == 'succeeded' or new == 'failed' or new == 'canceled') and webhook and webhook ~= 'null' then
  redis.call('ZADD', KEYS[4], redis.call('TIME')[1], ARGV[6])
end
if ARGV[11] == '1' then redis.call('ZADD', KEYS[#KEYS], 0, ARGV[6]) end
local record = {}
if ARGV[9] == '1' then record = redis.call('HGETALL', KEYS[1]) end
if new ~= ARGV[1] then return {'canceled', current, cancel, record} end
return {'ok', current, cancel, record}
"""

# A new job: its record, its place in the queued index (and the start deadlines) and its
# Celery message, all or nothing. KEYS: job hash, queued index, start deadlines, [the queue
# list when a message is given], [the idempotency key when one is given]. ARGV: job id, ttl s,
# now, start deadline or '', the message or '', 1 if an idempotency key is given, the channel and
# message of Celery's task-sent event ('' ''), the record's field/value pairs joined by \x1f
# (one argument, not fifty: redis-py's packing of each argument was a third of a bulk submit's
# CPU; JSON escapes every control character, so \x1f never occurs in a value), then the record's
# first TTL in seconds (past its start deadline: see RECORD_OUTLIVES_DEADLINE_S).
# Returns {1, id}, or {0, the id holding the idempotency key}.
# Safe to run twice, a defence: our clients send a command once (tasks/redis_connect.py), but a
# client built elsewhere with a redis-py Retry sends it again when the connection fails before
# its reply, and a second run would queue a second message and set a job that meanwhile ran back
# to `queued`. Ids are new for every submit, so a record already under this one was written by
# this same call.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, ARGV[1]} end
if ARGV[6] == '1' then
  local existing = redis.call('GET', KEYS[#KEYS])
  if existing then return {0, existing} end
end
-- The message first: a script that errors keeps what it wrote before, so the one write
-- that can fail (a queue key of the wrong type) comes before every other.
if ARGV[5] ~= '' then redis.call('LPUSH', KEYS[4], ARGV[5]) end
if ARGV[6] == '1' then redis.call('SET', KEYS[#KEYS], ARGV[1], 'EX', ARGV[2]) end
local fields = {}
for part in string.gmatch(ARGV[9], '[^\\31]+') do table.insert(fields, part) end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('EXPIRE', KEYS[1], ARGV[10])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1]) end
if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[7], ARGV[8]) end
return {1, ARGV[1]}
"""

# Progress only moves while the job runs; a late write never touches a final job.
# Returns whether a cancel is requested (1/0): the write doubles as the cancel checkpoint.
_PROGRESS = """
local raw, flag = unpack(redis.call('HMGET', KEYS[1], 'status', 'cancel_requested'))
if raw == cjson.encode('running') then
  redis.call('HSET', KEYS[1], 'progress', ARGV[1])
  redis.call('PUBLISH', ARGV[2], 'progress')
end
if flag == 'true' then return 1 end
return 0
"""

# A queued job is canceled on the spot (it will never run); a running one is
# flagged and the worker stops at its next checkpoint; a final one is left alone.
# KEYS: the job hash, the queued index, the start deadlines, the unpublished final events, the
# results to write (a job canceled here gets its result.json from a worker: worker/results.py).
_CANCEL = """
local raw, webhook = unpack(redis.call('HMGET', KEYS[1], 'status', 'webhook'))
if not raw then return 'missing' end
local current = cjson.decode(raw)
if current == 'queued' then
  redis.call('HSET', KEYS[1], 'status', cjson.encode('canceled'), 'completed_at', ARGV[1], 'error', ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('ZREM', KEYS[3], ARGV[4])
  redis.call('HDEL', KEYS[1], 'message')
  redis.call('PUBLISH', ARGV[3], 'canceled')
  local now = redis.call('TIME')[1]
  if webhook and webhook ~= 'null' then redis.call('ZADD', KEYS[4], now, ARGV[4]) end
  redis.call('ZADD', KEYS[5], now, ARGV[4])
  return 'canceled now'
end
if current == 'running' then
  redis.call('HSET', KEYS[1], 'cancel_requested', 'true')
  redis.call('PUBLISH', ARGV[3], 'cancel_requested')
end
return current
"""


# A queued job's record lives at least this long past its start deadline, so that an expirer finds
# it there and ends it `expired` (its event, its message taken out of the queue): with the deadline
# at the TTL (a short VISIONQ_JOB_TTL_S cuts the queue timeout to it) the record vanished with no
# final status and its message stayed queued. Its end sets the usual TTL again.
RECORD_OUTLIVES_DEADLINE_S = 60


class NotFinalYet(TimeoutError):
    """A wait that ended before its job did: the job's status when last read, and whether its
    source (Redis, the gateway) was unreachable at the end, so that status may be old."""

    def __init__(self, job_id: str, status: str, timeout_s: float | None, unreachable: bool = False) -> None:
        self.job_id, self.status, self.timeout_s, self.unreachable = job_id, status, timeout_s, unreachable
        if unreachable:
            text = (f"job {job_id} is not final after {timeout_s} s as far as known: Redis has not answered "
                    f"since it was last seen {status}")
        else:
            text = f"job {job_id} is still {status} after {timeout_s} s"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:  # rebuilt from its parameters (pickled across processes)
        return NotFinalYet, (self.job_id, self.status, self.timeout_s, self.unreachable)

    def after(self, timeout_s: float | None) -> NotFinalYet:
        """The same, told for a wait of `timeout_s` in all (one of whose phases this ended)."""
        return NotFinalYet(self.job_id, self.status, timeout_s, self.unreachable)


@dataclass(frozen=True)
class Enqueue:
    """A job's Celery message (tasks/messages.py) and the Redis list it goes on; with task events
    on, also Celery's task-sent event and the channel it is published on."""

    list_key: str
    message: str
    event_channel: str = ""
    event: str = ""


@dataclass(frozen=True)
class NewJob:
    """A job about to be stored: its queued record, and its request as the message carries it
    when that differs from the record's (kept for the sweeper, `JobStore.queued_message`)."""

    record: JobRecord
    queued_message: dict[str, Any] | None


def same_submit(held: JobRecord, new: JobRecord) -> bool:
    """Whether `new`, refused because its idempotency key is held, asks for the job that holds it:
    the same kind, input, priority, webhook and model. Otherwise the caller is told (a conflict),
    never handed an unrelated job."""
    return (held.kind, held.input, held.priority, held.webhook, held.model) == \
        (new.kind, new.input, new.priority, new.webhook, new.model)


@dataclass(frozen=True)
class Transition:
    applied: bool  # False: refused (the job was in a status the table does not move from)
    status: JobStatus  # where an applied transition left the job (canceled when a cancel won)
    cancel_requested: bool
    record: JobRecord | None = None  # after the change, when asked for (read_back)
    exhausted: JobRecord | None = None  # refused for max_attempts: the record as it is


@dataclass(frozen=True)
class Delivery:
    """A queue message in kombu's unacked bookkeeping: its delivery tag, the sorted set and hash."""

    tag: str
    index_key: str
    hash_key: str


class JobStore:
    def __init__(self, client: redis.Redis, *, ttl_s: int, prefix: str = "visionq") -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._transition = client.register_script(_TRANSITION)
        self._progress = client.register_script(_PROGRESS)
        self._cancel = client.register_script(_CANCEL)
        self._create = client.register_script(_CREATE)
        # Jobs whose wait has said Redis is unavailable, until it answers again: a wait made of
        # several calls (Job.wait's two phases) says it once per outage.
        self._waits_told_away: set[str] = set()
        self._declared_models: set[str] = set()  # "kind/name"s registered by create_many

    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events_channel(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    @property
    def queued_key(self) -> str:
        """Sorted set of queued job ids, scored by when their message was last known to exist."""
        return f"{self.prefix}:queued"

    @property
    def deadlines_key(self) -> str:
        """Sorted set of queued job ids scored by their start deadline (tasks/expiry.py)."""
        return f"{self.prefix}:deadlines"

    @property
    def unpublished_key(self) -> str:
        """Sorted set of the jobs with a webhook whose final event is not queued yet, scored by when
        they ended. Every script that ends a job adds it there, in the same step; queueing the event
        takes it out (tasks/deliveries.py). What a process that died in between left behind is
        published by the delivery worker after VISIONQ_SWEEP_GRACE_S."""
        return f"{self.prefix}:webhooks:unpublished"

    @property
    def unwritten_key(self) -> str:
        """Sorted set of the final jobs whose result.json is still to be written from their record
        by a worker's result writer (worker/results.py), scored by when it is due (Redis's clock; 0:
        now). The script that ends a job without a worker's final transition (canceled or expired
        while queued, failed by a watchdog that then exits) adds it in the same step."""
        return f"{self.prefix}:results:unwritten"

    def note_unwritten(self, job_id: str) -> None:
        """Ask for `job_id`'s result.json to be written again from its record (a worker whose final
        transition was refused: the file it wrote may say otherwise)."""
        self.redis.zadd(self.unwritten_key, {job_id: 0})

    def _idempotency_key(self, key: str, tenant: str | None = None) -> str:
        # A gateway tenant's keys live apart: two tenants may pick the same key.
        return f"{self.prefix}:idem:{key}" if tenant is None else f"{self.prefix}:tenant:{tenant}:idem:{key}"

    def create(
        self, kind: JobKind, input_record: dict[str, Any], idempotency_key: str | None = None,
        webhook: dict[str, Any] | None = None, priority: str = "normal",
        message: dict[str, Any] | None = None, tenant: str | None = None,
        queue_timeout_s: float | None = None, model: str | None = None,
        enqueue: Enqueue | None = None,
    ) -> tuple[JobRecord, bool]:
        """Store a new queued job. With an idempotency key already used within the
        TTL, returns the existing job and False instead (nothing new is stored, nothing queued).

        `message` is the request as the queue message carries it, kept while the job
        is queued when it differs from `input_record` (inline image data), so that
        the sweeper can publish a lost message again (`queued_message`).
        `queue_timeout_s`: past it, unstarted, the job fails `expired` (tasks/expiry.py).
        `model`: the model's name within the kind (tasks/served_models.py); None: the default.
        `enqueue`: the Celery message (tasks/messages.py), pushed in the same script as the
        record: one round trip, and never a record without its message or the reverse."""
        new = self.new_job(kind, input_record, idempotency_key, webhook, priority, message, tenant,
                           queue_timeout_s, model)
        return self.create_many([(new, enqueue)])[0]

    def new_job(
        self, kind: JobKind, input_record: dict[str, Any], idempotency_key: str | None = None,
        webhook: dict[str, Any] | None = None, priority: str = "normal",
        message: dict[str, Any] | None = None, tenant: str | None = None,
        queue_timeout_s: float | None = None, model: str | None = None,
    ) -> NewJob:
        """A job not stored yet (see `create` for the arguments); its id is known, so its message can name it."""
        record = JobRecord(
            id=new_job_id(), kind=kind, status=JobStatus.QUEUED, created_at=utc_now(),
            input=input_record, idempotency_key=idempotency_key, webhook=webhook, priority=priority,
            tenant=tenant, queue_timeout_s=queue_timeout_s, model=model,
        )
        queued_message = None if message is None or message == input_record else message
        return NewJob(record, queued_message)

    def create_many(
        self, jobs: list[tuple[NewJob, Enqueue | None]], *, per_job_errors: bool = False,
    ) -> list[Any]:
        """Store (and enqueue) every job in one pipelined round trip, each atomically by itself;
        per job (its record, True) or (the record of the job holding its idempotency key, False).
        A job Redis refused (out of memory, ...) raises its error once all were sent, or with
        `per_job_errors` stands in its place as that `redis.ResponseError`: the others are stored."""
        undeclared = {f"{new.record.kind.value}/{new.record.model}" for new, _ in jobs
                      if new.record.model is not None} - CATALOGUE_NAMES - self._declared_models
        if undeclared:  # once a process per name, before its first job waits
            declare_submitted(self.redis, self.prefix, undeclared)
            self._declared_models |= undeclared
        now = time.time()
        calls = [self._create_call(new, enqueue, now) for new, enqueue in jobs]
        if len(calls) == 1:  # EVALSHA alone: redis-py's pipeline would ask SCRIPT EXISTS first
            try:
                outcomes = [self._create(keys=calls[0][0], args=calls[0][1])]
            except redis.ResponseError as exc:
                if not per_job_errors:
                    raise
                outcomes = [exc]
        else:
            outcomes = run_pipelined(self._create, calls, raise_on_error=not per_job_errors)
        results: list[Any] = []
        for (new, _enqueue), outcome in zip(jobs, outcomes):
            if isinstance(outcome, redis.RedisError):
                results.append(outcome)
                continue
            created, job_id = outcome
            if created:
                results.append((new.record, True))
            else:  # an idempotent repeat: rare, so a second read is fine
                results.append((self.get(job_id.decode()), False))
        return results

    def _create_call(self, new: NewJob, enqueue: Enqueue | None, now: float) -> tuple[list[str], list[Any]]:
        record = new.record
        fields = _encode(_stored_fields(record))
        if new.queued_message is not None:
            fields["message"] = json.dumps(new.queued_message)
        enqueue = enqueue or Enqueue("", "")
        queue_list, payload = enqueue.list_key, enqueue.message
        deadline = "" if record.queue_timeout_s is None else now + record.queue_timeout_s
        keys = [self.job_key(record.id), self.queued_key, self.deadlines_key]
        if queue_list:
            keys.append(queue_list)
        if record.idempotency_key is not None:
            keys.append(self._idempotency_key(record.idempotency_key, record.tenant))
        joined = _FIELD_SEPARATOR.join(part for pair in fields.items() for part in pair)
        record_ttl_s = self.ttl_s
        if record.queue_timeout_s is not None:
            record_ttl_s = max(record_ttl_s, math.ceil(record.queue_timeout_s) + RECORD_OUTLIVES_DEADLINE_S)
        args: list[Any] = [record.id, self.ttl_s, now, deadline, payload, int(record.idempotency_key is not None),
                           enqueue.event_channel, enqueue.event, joined, record_ttl_s]
        return keys, args

    def get(self, job_id: str) -> JobRecord:
        record = record_from_fields(self.redis.hmget(self.job_key(job_id), RECORD_FIELDS))
        if record is None:
            raise JobNotFound.for_id(job_id)
        return record

    def get_many(self, job_ids: list[str]) -> dict[str, JobRecord]:
        """The records of those of `job_ids` that exist and can be read, by id, in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(self.job_key(job_id), RECORD_FIELDS)
            rows = pipe.execute()
        found = {}
        for job_id, values in zip(job_ids, rows):
            try:
                record = record_from_fields(values)
            except Exception as exc:  # noqa: BLE001 - a record nobody can read counts as gone here
                log.warning("job %s: its record cannot be read: %s", job_id, exc)
                continue
            if record is not None:
                found[job_id] = record
        return found

    def queued_message(self, record: JobRecord) -> dict[str, Any]:
        """The request of a queued job as its queue message carries it."""
        raw = self.redis.hget(self.job_key(record.id), "message")
        return dict(record.input) if raw is None else json.loads(raw)

    def queued_since(self, cutoff: float, limit: int = 500) -> list[str]:
        """Queued jobs whose message was last known to exist before `cutoff` (epoch seconds)."""
        ids = self.redis.zrangebyscore(self.queued_key, "-inf", cutoff, start=0, num=limit)
        return [i.decode() for i in ids]

    def mark_queued_seen(self, job_ids: list[str]) -> None:
        """Their messages were found (or published again) now."""
        if job_ids:
            self.redis.zadd(self.queued_key, {i: time.time() for i in job_ids}, xx=True)

    def forget_queued(self, job_ids: list[str]) -> None:
        """Ids whose records are gone (expired) or no longer queued."""
        if job_ids:
            self.redis.zrem(self.queued_key, *job_ids)

    def transition(
        self, job_id: str, new: JobStatus, *, attempt_increment: int = 0, **fields: Any
    ) -> bool:
        """Move the job to `new` with `fields` if the transition table allows it.

        Returns False when refused (e.g. the job is already final); raises
        JobNotFound when the record is gone.
        """
        return self.advance(job_id, new, attempt_increment=attempt_increment, **fields).applied

    def advance(
        self, job_id: str, new: JobStatus, *, attempt_increment: int = 0,
        cancel_error: dict[str, str] | None = None, acknowledge: Delivery | None = None,
        read_back: bool = False, max_attempts: int | None = None, note_unwritten: bool = False, **fields: Any,
    ) -> Transition:
        """`transition`, with what the worker's hot path folds into it (one round trip for all):
        whether a cancel is requested; `cancel_error`: when one is, the job ends `canceled` with
        this error instead of `new` (its output, error and progress fields are not recorded);
        `acknowledge`: remove this message from kombu's unacked bookkeeping, if applied;
        `read_back`: the record after the change; `max_attempts`: a job that was running (its
        worker died) and already started that often is not moved, and comes back as `exhausted`;
        `note_unwritten`: if applied, the job's result.json is left to a worker's result writer
        (worker/results.py), in the same step."""
        sources = " ".join(s.value for s in allowed_sources(new))
        args: list[Any] = [
            new.value, sources, self.ttl_s, self.events_channel(job_id), attempt_increment, job_id,
            "" if cancel_error is None else json.dumps(cancel_error),
            "" if acknowledge is None else acknowledge.tag, "1" if read_back else "",
            "" if max_attempts is None else max_attempts, "1" if note_unwritten else "",
        ]
        for name, value in fields.items():
            args += [name, json.dumps(value)]
        keys = [self.job_key(job_id), self.queued_key, self.deadlines_key, self.unpublished_key]
        if acknowledge is not None:
            keys += [acknowledge.index_key, acknowledge.hash_key]
        if note_unwritten:
            keys.append(self.unwritten_key)
        outcome, _current, cancel, flat = self._transition(keys=keys, args=args)
        if outcome == b"missing":
            raise JobNotFound.for_id(job_id)
        if outcome == b"forged":
            raise InvalidInput(f"the record stored under job {job_id} carries another id")
        record = _record_from_hash(dict(zip(flat[::2], flat[1::2]))) if flat else None
        if outcome == b"exhausted":
            return Transition(False, new, cancel == b"1", exhausted=record)
        status = JobStatus.CANCELED if outcome == b"canceled" else new
        return Transition(outcome in (b"ok", b"canceled"), status, cancel == b"1", record)

    def set_progress(self, job_id: str, progress: float) -> bool:
        """Record the progress of a running job; returns whether a cancel is requested."""
        value = json.dumps(round(min(max(progress, 0.0), 1.0), 4))
        return bool(self._progress(keys=[self.job_key(job_id)], args=[value, self.events_channel(job_id)]))

    def request_cancel(self, job_id: str) -> tuple[JobStatus, bool]:
        """Cancel a queued job now, or flag a running one.

        Returns the status after, and whether this call canceled the job."""
        error = json.dumps({"code": "canceled", "message": "canceled before it started"})
        result = self._cancel(
            keys=[self.job_key(job_id), self.queued_key, self.deadlines_key, self.unpublished_key, self.unwritten_key],
            args=[json.dumps(utc_now()), error, self.events_channel(job_id), job_id],
        )
        if result == b"missing":
            raise JobNotFound.for_id(job_id)
        if result == b"canceled now":
            return JobStatus.CANCELED, True
        return JobStatus(result.decode()), False

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(self.job_key(job_id), "cancel_requested") == b"true"

    def wait_for_final(
        self, job_id: str, timeout_s: float | None, *, on_change: Any = None, poll_s: float = 2.0,
        seen: JobRecord | None = None,
    ) -> JobRecord:
        """Block until the job is final. Woken by its event channel; polls every
        `poll_s` as well, so a dropped pub/sub connection only slows it down. Once the job has
        been read (here, or before: `seen`), Redis going away (a restart, a failover) is waited
        out: the job goes on, and so does the wait; a first read that fails (a wrong address)
        raises at once, and so does a refused password (no outage: a configuration to fix)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        last: JobRecord | None = seen
        unreachable = False  # the last read failed: `last` may be old
        try:
            try:
                pubsub.subscribe(self.events_channel(job_id))
            except redis.RedisError:
                pubsub = None
            while True:
                try:
                    record = self.get(job_id)  # after subscribing: no event can slip between
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    if last is None or isinstance(exc, redis.AuthenticationError):
                        raise
                    unreachable = True
                    if job_id not in self._waits_told_away:  # once an outage
                        log.warning("waiting for job %s: Redis unavailable (%s); waiting on", job_id, exc)
                        self._waits_told_away.add(job_id)
                else:
                    last, unreachable = record, False
                    self._waits_told_away.discard(job_id)
                    if on_change is not None:
                        on_change(record)
                    if record.status in FINAL_STATUSES:
                        return record
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise NotFinalYet(job_id, last.status.value, timeout_s, unreachable)
                wait_s = poll_s if remaining is None else min(poll_s, remaining)
                pubsub = _wait_for_event(pubsub, wait_s)
        finally:
            if pubsub is not None:
                pubsub.close()


def run_pipelined(
    script: Any, calls: list[tuple[list[str], list[Any]]], *, raise_on_error: bool = True,
) -> list[Any]:
    """A registered Lua `script` (redis-py's Script) called once per (keys, args) in one pipelined round
    trip, each call atomic by itself; its answers in order. The first error is raised after all ran,
    or with `raise_on_error=False` each call's error is its answer (the others' answers kept).
    redis-py's own pipelining of a Script asks SCRIPT EXISTS first, a round trip more: this sends
    EVALSHA and loads the script only when Redis forgot it (a restart), for a second pass."""
    client = script.registered_client
    outcomes: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for _ in range(2):
        with client.pipeline(transaction=False) as pipe:
            for i in todo:
                keys, args = calls[i]
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            answers = pipe.execute(raise_on_error=False)
        for i, answer in zip(todo, answers):
            outcomes[i] = answer
        todo = [i for i in todo if isinstance(outcomes[i], redis.exceptions.NoScriptError)]
        if not todo:
            break
        client.script_load(script.script)
    for answer in outcomes if raise_on_error else ():
        if isinstance(answer, Exception):
            raise answer
    return outcomes


def _wait_for_event(pubsub: Any, wait_s: float) -> Any:
    if pubsub is None:
        time.sleep(wait_s)
        return None
    try:
        pubsub.get_message(timeout=wait_s)
        return pubsub
    except redis.RedisError:
        pubsub.close()
        return None


def _record_from_hash(raw: dict[bytes, Any]) -> JobRecord:
    """A job hash as the store writes it (JSON per field), without the queued message."""
    return JobRecord.from_dict({k.decode(): json.loads(v) for k, v in raw.items() if k != b"message"})


# What a record read asks for (`HMGET key *RECORD_FIELDS`): every field of the record, never the
# queued message beside them (a request with its image inline: up to MBs, 500 of them in a purge's
# pipeline). A field at its default is not stored, and reads back as missing.
RECORD_FIELDS = tuple(JobRecord.__dataclass_fields__)


def record_from_fields(values: list[Any]) -> JobRecord | None:
    """The record from HMGET's answer for RECORD_FIELDS; None when the job hash does not exist."""
    present = {name: json.loads(value) for name, value in zip(RECORD_FIELDS, values) if value is not None}
    return JobRecord.from_dict(present) if present else None


_FIELD_SEPARATOR = "\x1f"
_DEFAULTS = {
    name: f.default_factory() if f.default_factory is not MISSING else f.default
    for name, f in JobRecord.__dataclass_fields__.items() if f.default is not MISSING or f.default_factory is not MISSING
}


def _stored_fields(record: JobRecord) -> dict[str, Any]:
    """The fields a new record stores: those that differ from their defaults. Every reader goes
    through `JobRecord.from_dict`, which fills the rest in; Redis's cost is per byte parsed, and
    a queued record is 7 fields, not 22."""
    return {name: value for name, value in record.to_json_fields().items()
            if name not in _DEFAULTS or value != _DEFAULTS[name]}


def _encode(data: dict[str, Any]) -> dict[str, str]:
    return {name: _json(value) for name, value in data.items()}


def _json(value: Any) -> str:
    """json.dumps(value), with the record's common scalars done directly (a submit encodes ~20)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return _json_string(value)
    if value is True or value is False:
        return "true" if value else "false"
    return json.dumps(value)


_json_string = json.encoder.encode_basestring_ascii  # what json.dumps uses for a str (ensure_ascii)
