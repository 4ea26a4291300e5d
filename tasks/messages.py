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
import uuid
from typing import Any

from tasks.kinds import Priority, priority_list_key
from tasks.models import model_queue
from tasks.record import JobRecord

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


def job_enqueue(record: JobRecord, request_message: dict[str, Any], prefix: str) -> tuple[str, str]:
    """(the Redis list, the serialized message) that queue `record`'s job, for `JobStore.create`'s
    `enqueue`: on the queue of its model (tasks.models.model_queue), at its priority, under the
    deployment's key prefix (kombu's `global_keyprefix`, tasks/app.py)."""
    kind = record.kind
    queue = model_queue(kind.value, record.model)
    priority = Priority(record.priority)
    kwargs = {"job_id": record.id, "request": request_message}
    return priority_list_key(queue, priority, prefix), task_message(kind.task_name, record.id, kwargs, queue, priority)
