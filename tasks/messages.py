"""Celery's own task message (protocol 2), built directly: what `send_task` puts in Redis.

The producer writes a job's record and its message in one Lua script (tasks/store.py),
so it needs the message as bytes rather than a `send_task` call. The envelope below is
exactly what kombu's Redis transport LPUSHes (`Channel._put`): a JSON object whose body
is the base64 of `[args, kwargs, embed]`, Celery's headers (task, id, argsrepr, ...)
and kombu's properties (delivery_tag, priority, body_encoding, delivery_info). Any
Celery worker parses it unchanged (tests/tasks/test_messages.py checks with kombu's
own decoder and a real worker). Building it costs a few microseconds; `send_task`
spent most of a submit in message building and `saferepr`.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery.utils.time import utcoffset

from tasks.kinds import Priority, priority_list_key
from tasks.models import model_queue
from tasks.record import JobRecord
from tasks.redis_connect import is_sentinel, parse_sentinel_url
from tasks.store import Enqueue

# Celery writes these null callbacks with every message; a consumer expects the key set.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_REPR_MAX_CHARS = 1024  # Celery's kwargsrepr is at most this long (saferepr's maxsize)
# Like Celery's `app.thread_oid`: which producer sent it. No reply ever comes (no result backend).
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
_REPLY_TO = str(uuid.uuid4())


def task_message(task_name: str, task_id: str, kwargs: dict[str, Any], queue: str, priority: Priority) -> str:
    """The serialized message of task `task_name` with `kwargs`, routed to `queue`."""
    body = json.dumps([[], kwargs, _EMBED]).encode()
    headers = {
        "lang": "py", "task": task_name, "id": task_id, "shadow": None, "eta": None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
        "root_id": task_id, "parent_id": None, "argsrepr": "()",
        # Only shown by monitoring tools; a plain repr, cut like Celery cuts its saferepr.
        "kwargsrepr": repr(kwargs)[:_REPR_MAX_CHARS], "origin": _ORIGIN, "ignore_result": None,
        "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
    }
    properties = {
        "correlation_id": task_id, "reply_to": _REPLY_TO, "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": priority.level, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
    }
    return json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
        "content-type": "application/json", "headers": headers, "properties": properties,
    })


def job_enqueue(
    record: JobRecord, request_message: dict[str, Any], prefix: str, sent_event_db: int | None = None,
) -> Enqueue:
    """The message that queues `record`'s job, for `JobStore.create`'s `enqueue`: on the queue of
    its model (tasks.models.model_queue), at its priority, under the deployment's key prefix
    (kombu's `global_keyprefix`, tasks/app.py). `sent_event_db`: the Redis database number, when
    task events are on: Celery's task-sent event is then published in the same script."""
    kind = record.kind
    queue = model_queue(kind.value, record.model)
    priority = Priority(record.priority)
    kwargs = {"job_id": record.id, "request": request_message}
    message = task_message(kind.task_name, record.id, kwargs, queue, priority)
    if sent_event_db is None:
        return Enqueue(priority_list_key(queue, priority, prefix), message)
    channel, event = sent_event(kind.task_name, record.id, kwargs, queue, prefix, sent_event_db)
    return Enqueue(priority_list_key(queue, priority, prefix), message, channel, event)


def sent_event(
    task_name: str, task_id: str, kwargs: dict[str, Any], queue: str, prefix: str, db: int,
) -> tuple[str, str]:
    """(channel, message) of Celery's task-sent event as `send_task` publishes it with task events
    on: a kombu message on the `celeryev` fanout exchange, which kombu's Redis transport PUBLISHes
    on `/<db>.celeryev/task.sent` under the global key prefix (Flower and `celery events` read it)."""
    body = {
        **task_event("task-sent", task_id, _ORIGIN), "root_id": task_id, "parent_id": None, "name": task_name,
        "args": "()", "kwargs": repr(kwargs)[:_REPR_MAX_CHARS], "retries": 0, "eta": None, "expires": None,
        "queue": queue, "exchange": "", "routing_key": queue,
    }
    return events_message([body], "task.sent", prefix, db, _ORIGIN)


def task_event(event_type: str, task_id: str, hostname: str, **fields: Any) -> dict[str, Any]:
    """The body of one Celery task event (`task-sent`, `task-revoked`, ...) of `hostname`."""
    # This host's offset, as Celery's dispatcher sends it: receivers correct the timestamp by it.
    return {"hostname": hostname, "utcoffset": utcoffset(), "pid": os.getpid(), "clock": 0, "uuid": task_id,
            "timestamp": time.time(), "type": event_type, **fields}


def events_message(events: list[dict[str, Any]], routing_key: str, prefix: str, db: int,
                   hostname: str) -> tuple[str, str]:
    """(channel, message) that publishes `events` as Celery's event dispatcher does: one event on its
    own routing key (`task.sent`), several as one `task.multi` batch (a list body, which every
    event receiver reads). Under the global key prefix, on database `db`'s `celeryev` exchange."""
    body = events[0] if len(events) == 1 else events
    message = json.dumps({
        "body": base64.b64encode(json.dumps(body).encode()).decode(), "content-encoding": "utf-8",
        "content-type": "application/json", "headers": {"hostname": hostname},
        "properties": {"delivery_mode": 1, "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
                       "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())},
    })
    return f"{prefix}:/{db}.celeryev/{routing_key}", message


def redis_db(redis_url: str) -> int:
    """The database number of a redis:// URL (its path, or ?db=; 0 by default), or of a
    sentinel:// one (its path), as kombu reads it."""
    if is_sentinel(redis_url):
        return parse_sentinel_url(redis_url).db
    parts = urlsplit(redis_url)
    query = parse_qs(parts.query)
    if "db" in query:
        return int(query["db"][-1])
    path = parts.path.strip("/")
    return int(path) if path.isdigit() else 0
