"""`visionq webhooks`: the delivery worker. Light: no torch, no models.

A Celery worker on the `visionq.webhooks` queue with many threads (deliveries
are network waits), plus a scheduler thread that moves due retries from Redis
back onto the queue. GPU workers only enqueue events, so a receiver that hangs
or drips its answer costs this process one thread until the attempt's deadline
(VISIONQ_WEBHOOK_TIMEOUT_S) and nothing else.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import threading
from typing import Any

import redis
from kombu.exceptions import OperationalError

from tasks.app import make_celery
from tasks.deliveries import DELIVER_TASK, DeliveryStore, EventPublisher, enqueue_delivery
from tasks.heartbeats import DELIVERY_WORKER_KINDS
from tasks.kinds import WEBHOOKS_QUEUE
from tasks.record import utc_now
from tasks.redis_connect import client_for
from tasks.settings import Settings
from tasks.ssrf import UrlRefused
from tasks.store import JobStore
from tasks.webhooks import (
    Attempt, DeliveryStatus, clean_text, is_retryable, mask_url, retry_delay_s,
    secret_key, signature_headers,
)
from worker.control import answer_remote_control, consume
from worker.expiry import Expirer
from worker.heartbeat import Heartbeat
from worker.leases import survive_reconnects
from worker.outage import until_redis_answers
from worker.outbound import PostResult, post
from worker.revoke import install_revoke

log = logging.getLogger("visionq.webhooks")

SCHEDULER_INTERVAL_S = 0.25
UNPUBLISHED_EVERY_TICKS = 4  # a look for unqueued final events once a second


class Deliverer:
    """Makes one attempt of a delivery and decides what comes next."""

    def __init__(self, settings: Settings, deliveries: DeliveryStore, store: JobStore) -> None:
        self.settings = settings
        self.deliveries = deliveries
        self.store = store
        self.schedule = settings.webhook_schedule
        self.allow = settings.webhook_allow
        self._attempts = itertools.count(1)  # next() is atomic: the task threads share it
        self.attempts_made = 0  # the heartbeat's jobs_done: a duplicate message makes none

    def attempt(self, delivery_id: str) -> None:
        """The delivery task. Its Redis calls wait out an outage in place: a task that raised was
        acknowledged by Celery, and its delivery, still pending, had no message left to come back by."""
        delivery = until_redis_answers(lambda: self.deliveries.get(delivery_id))
        if delivery is None or delivery.status is not DeliveryStatus.PENDING:
            return  # expired, or already delivered/dead (a duplicate message)
        result, worth_retrying = self._send(delivery.job_id, delivery.id, delivery.url, delivery.body)
        self.attempts_made = next(self._attempts)
        attempt = Attempt(at=utc_now(), status=result.status, error=result.error, latency_ms=result.latency_ms)
        delivery = until_redis_answers(
            lambda: self.deliveries.record_attempt(delivery, attempt, self.store.job_key(delivery.job_id)))
        if result.status is not None and 200 <= result.status < 300:
            until_redis_answers(lambda: self.deliveries.mark_delivered(delivery_id))
            return
        if worth_retrying and is_retryable(result.status):
            delay = retry_delay_s(self.schedule, len(delivery.attempts), result.retry_after_s)
            if delay is not None:
                until_redis_answers(lambda: self.deliveries.schedule(delivery_id, delay))
                return
            reason = f"gave up after {len(delivery.attempts)} attempts: {result.error}"
        else:
            reason = f"not retried: {result.error}"
        log.warning("webhook %s to %s is dead: %s", delivery_id, mask_url(delivery.url), reason)
        until_redis_answers(lambda: self.deliveries.mark_dead(delivery_id, reason))

    def _send(self, job_id: str, delivery_id: str, url: str, body: bytes) -> tuple[PostResult, bool]:
        """The attempt's outcome, and False when no retry could change it."""
        secret = until_redis_answers(lambda: self.deliveries.job_secret(job_id)) or self.settings.webhook_secret
        if not secret:
            return _refused("no webhook secret configured (VISIONQ_WEBHOOK_SECRET)"), False
        try:
            headers = signature_headers(secret, delivery_id, body)
        except ValueError as exc:  # a weak secret stored before the rule existed
            return _refused(str(exc)), False
        try:
            return post(url, body, headers, timeout_s=self.settings.webhook_timeout_s, allow=self.allow), True
        except UrlRefused as exc:  # checked again at delivery: DNS may have changed
            return _refused(exc.message), exc.retryable


def _refused(error: str) -> PostResult:
    return PostResult(None, clean_text(error), None, 0.0)


class RetryScheduler(threading.Thread):
    """Moves due retries from the Redis sorted set onto the queue, and queues the final events
    that a process which ended a job died before queueing (EventPublisher.publish_unpublished)."""

    def __init__(self, deliveries: DeliveryStore, celery: Any, events: EventPublisher, grace_s: float) -> None:
        """`grace_s`: how long after its job ended a final event still not queued is queued here."""
        super().__init__(name="visionq-webhook-scheduler", daemon=True)
        self.deliveries = deliveries
        self.celery = celery
        self.events = events
        self.grace_s = grace_s
        self.stopped = threading.Event()
        # Claimed (taken off the schedule in Redis) but not queued yet: kept here until they are,
        # should the broker fail between the two. Only this process's end loses them.
        self.claimed: collections.deque[str] = collections.deque()

    def run(self) -> None:
        ticks = 0
        away = False
        while not self.stopped.wait(SCHEDULER_INTERVAL_S):
            try:
                if not self.claimed:
                    self.claimed.extend(self.deliveries.claim_due())
                while self.claimed:
                    enqueue_delivery(self.celery, self.claimed[0])
                    self.claimed.popleft()
                if ticks % UNPUBLISHED_EVERY_TICKS == 0:
                    self.events.publish_unpublished(self.grace_s)
            except (redis.RedisError, OperationalError) as exc:  # the job store's, or the broker's (kombu)
                if not away:  # once an outage: this runs four times a second
                    log.warning("Redis unavailable (%s); webhook retries wait for it", exc)
                away = True
            except Exception:  # noqa: BLE001 - the next round comes: retries must not stop for good
                log.exception("a round of the webhook scheduler failed")
            else:
                if away:
                    log.info("Redis is back; webhook retries go on")
                away = False
            ticks += 1


def run_webhook_worker(settings: Settings, concurrency: int, loglevel: str = "INFO") -> None:
    if settings.webhook_secret:
        secret_key(settings.webhook_secret)  # a weak VISIONQ_WEBHOOK_SECRET stops the start, named
    client = client_for(settings)
    deliveries = DeliveryStore(client, prefix=settings.redis_prefix, ttl_s=settings.job_ttl_s)
    store = JobStore(client, ttl_s=settings.job_ttl_s, prefix=settings.redis_prefix)
    deliverer = Deliverer(settings, deliveries, store)
    app = make_celery(settings)
    app.task(name=DELIVER_TASK, acks_late=True, ignore_result=True)(deliverer.attempt)
    events = EventPublisher(store, deliveries, app)
    scheduler = RetryScheduler(deliveries, app, events, settings.sweep_grace_s)
    scheduler.start()
    # This worker ends expired jobs too: a deployment scaled to zero GPU workers still does.
    Expirer(store, events.publish_final).start()
    install_revoke(store, events)  # a revoke it receives cancels the job too (worker/revoke.py)
    survive_reconnects(client, settings.redis_prefix)  # a Redis restart stopped it, as it did GPU workers
    name = f"visionq-webhooks-{os.getpid()}@{socket.gethostname()}"
    # `celery control add_consumer visionq.caption` (to every node) would have it take GPU jobs'
    # messages and drop them as unregistered tasks; `control shutdown` is a stop as asked.
    answer_remote_control(name, [WEBHOOKS_QUEUE])
    heartbeat = Heartbeat(client, settings.redis_prefix, name, {"kinds": DELIVERY_WORKER_KINDS, "device": None})
    heartbeat.start()
    heartbeat.follow_celery(lambda: {"jobs_done": deliverer.attempts_made})  # read after each task
    try:
        quiet = ["--quiet"] if settings.log_format == "json" else []  # no banner among JSON lines
        consume(app, [
            *quiet, "worker", "--queues", WEBHOOKS_QUEUE, "--pool", "threads", "--concurrency", str(concurrency),
            "--hostname", name, "--loglevel", loglevel, "--without-gossip", "--without-mingle",
        ], name)
    finally:
        scheduler.stopped.set()
        heartbeat.stop()
