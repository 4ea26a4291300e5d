"""The Celery app both sides share: queues, routing and the delivery guarantees."""
from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery import Celery
from kombu import Queue

from tasks.kinds import PRIORITY_STEPS, WEBHOOKS_QUEUE, JobKind
from tasks.redis_connect import is_sentinel, kombu_sentinel_url, parse_sentinel_url, sentinel_kwargs
from tasks.settings import Settings


def make_celery(settings: Settings, app_class: type[Celery] = Celery) -> Celery:
    sentinel = is_sentinel(settings.redis_url)
    # A Sentinel URL's ?socket_connect_timeout=/socket_timeout= (kombu's URL for it drops its query).
    sentinel_options = parse_sentinel_url(settings.redis_url).options if sentinel else {}
    broker = kombu_sentinel_url(settings.redis_url) if sentinel else settings.redis_url
    app = app_class("visionq", broker=broker, set_as_current=False)
    app.conf.update(
        # JSON only, everywhere: a pickle payload from the queue would be code execution.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # The job store holds results; Celery's result backend would be a second copy.
        task_ignore_result=True,
        # Ack only after the job is recorded, so a worker that dies mid-job leaves the
        # message to be redelivered (after the visibility timeout) instead of lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A worker reserves at most one message per task slot (its --concurrency, which
        # is the kinds' largest max_batch, worker/process.py) and never more than it has
        # free slots: jobs beyond that stay in Redis for other workers to take.
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,
        broker_transport_options={
            # A message unacknowledged this long is delivered again. A live worker
            # renews the messages it holds (worker/leases.py), so this is how long
            # after a worker dies its jobs come back, not a bound on job length.
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu looks for such messages every `interval` x `throttle` seconds
            # (10 x 10 by default: up to 100 s late). Here on every tick, at most 10 s
            # apart: redelivery within the visibility timeout + 10 s.
            "unacked_restore_interval": min(10, max(1, settings.visibility_timeout_s // 2)),
            "unacked_restore_throttle": 1,
            # The lock around that search; a worker killed while holding it would
            # otherwise stall redelivery for kombu's default 5 minutes.
            "unacked_mutex_expire": 10,
            # One Redis list per priority level, popped in this order (see Priority).
            "priority_steps": PRIORITY_STEPS,
            # Queues, unacked sets and bindings all under our prefix: several
            # deployments (or test runs) can share one Redis without taking each other's jobs.
            "global_keyprefix": f"{settings.redis_prefix}:",
            # With a sentinel:// URL (kombu's `sentinel` transport): the primary Sentinel names.
            **({"master_name": settings.redis_sentinel_master} if sentinel else {}),
            **sentinel_options,
            # ... and for the sentinels the URL's timeouts and their own password, as the job store's.
            **({"sentinel_kwargs": asked} if sentinel and (asked := sentinel_kwargs(
                sentinel_options, settings.redis_sentinel_password)) else {}),
        },
        broker_connection_retry_on_startup=True,
        # rediss://: verify the server's certificate, as the job store (redis-py) does.
        broker_use_ssl=broker_ssl_options(settings.redis_url),
        task_queues=[Queue(kind.queue) for kind in JobKind] + [Queue(WEBHOOKS_QUEUE)],
        task_routes={kind.task_name: {"queue": kind.queue} for kind in JobKind},
        worker_hijack_root_logger=False,
        # Task events (sent, received, started, succeeded, failed, revoked) feed Flower and
        # `celery events`: one small PUBLISH each (VISIONQ_TASK_EVENTS=false turns them off).
        worker_send_task_events=settings.task_events,
        task_send_sent_event=settings.task_events,
    )
    return app


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_SSL_QUERY_KEYS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def broker_ssl_options(redis_url: str) -> dict[str, object] | None:
    """kombu's TLS options for a rediss:// broker; None for plain redis://.

    Left alone, kombu connects to rediss:// with CERT_NONE (any certificate, so
    anyone on the path can read and forge jobs). Verification is on unless the URL
    itself says otherwise (``?ssl_cert_reqs=none``), the same rule redis-py applies.
    """
    parts = urlsplit(redis_url)
    if parts.scheme != "rediss":
        return None
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    reqs = query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
    if reqs not in _CERT_REQS:
        raise ValueError(f"ssl_cert_reqs={query['ssl_cert_reqs']!r} in the Redis URL must be none, optional or required")
    options: dict[str, object] = {"ssl_cert_reqs": _CERT_REQS[reqs]}
    options.update({key: query[key] for key in _SSL_QUERY_KEYS if key in query})
    return options


def __getattr__(name: str) -> Any:
    # `tasks.app:app`, what `celery -A tasks.app inspect|status|events|flower` loads: built
    # from the environment on first access (tasks/celery_app.py), never at import.
    if name == "app":
        from tasks.celery_app import operator_app

        return operator_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
