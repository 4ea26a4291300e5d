"""`visionq webhooks`: the delivery worker. Light: no torch, no models.

A Celery worker on the `visionq.webhooks` queue with many threads (deliveries
are network waits), plus a scheduler thread that moves due retries from Redis
back onto the queue. GPU workers only enqueue events, so a receiver that hangs
costs this process a thread for the attempt's timeout and nothing else.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

import redis

from tasks.app import make_celery
from tasks.deliveries import DeliveryStore
from tasks.events import DELIVER_TASK, enqueue_delivery
from tasks.kinds import WEBHOOKS_QUEUE
from tasks.record import utc_now
from tasks.settings import Settings
from tasks.signing import signature_headers
from worker.outbound import PostResult, post
from tasks.ssrf import AllowList, UrlRefused
from tasks.store import JobStore
from tasks.webhooks import is_retryable, parse_schedule, retry_delay_s
from worker.heartbeat import Heartbeat

log = logging.getLogger("visionq.webhooks")

SCHEDULER_INTERVAL_S = 0.25


class Deliverer:
    """Makes one attempt of a delivery and decides what comes next."""

    def __init__(self, settings: Settings, deliveries: DeliveryStore, store: JobStore) -> None:
        self.settings = settings
        self.deliveries = deliveries
        self.store = store
        self.schedule = parse_schedule(settings.webhook_schedule)
        self.allow = AllowList.parse(settings.webhook_allow)

    def attempt(self, delivery_id: str) -> None:
        delivery = self.deliveries.get(delivery_id)
        if delivery is None or delivery["status"] != "pending":
            return  # expired, or already delivered/dead (a duplicate message)
        secret = self.deliveries.job_secret(delivery["job_id"]) or self.settings.webhook_secret
        retryable = True
        if not secret:
            result, retryable = PostResult(None, "no webhook secret configured (VISIONQ_WEBHOOK_SECRET)", None, 0.0), False
        else:
            headers = signature_headers(secret, delivery["id"], delivery["body"])
            try:
                result = post(delivery["url"], delivery["body"], headers,
                              timeout_s=self.settings.webhook_timeout_s, allow=self.allow)
            except UrlRefused as exc:  # checked again at delivery: DNS may have changed
                result, retryable = PostResult(None, exc.message, None, 0.0), False
        attempt = {"at": utc_now(), "status": result.status, "error": result.error, "latency_ms": result.latency_ms}
        self.deliveries.record_attempt(delivery, attempt, self.store.job_key(delivery["job_id"]))
        if result.status is not None and 200 <= result.status < 300:
            self.deliveries.mark_delivered(delivery_id)
            return
        if retryable and is_retryable(result.status):
            delay = retry_delay_s(self.schedule, len(delivery["attempts"]), result.retry_after_s)
            if delay is not None:
                self.deliveries.schedule(delivery_id, delay)
                return
            reason = f"gave up after {len(delivery['attempts'])} attempts: {result.error}"
        else:
            reason = f"not retried: {result.error}"
        log.warning("webhook %s to %s is dead: %s", delivery_id, delivery["url"], reason)
        self.deliveries.mark_dead(delivery_id, reason)


class RetryScheduler(threading.Thread):
    """Moves due retries from the Redis sorted set onto the queue."""

    def __init__(self, deliveries: DeliveryStore, celery: Any) -> None:
        super().__init__(name="visionq-webhook-scheduler", daemon=True)
        self.deliveries = deliveries
        self.celery = celery
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(SCHEDULER_INTERVAL_S):
            try:
                for delivery_id in self.deliveries.claim_due():
                    enqueue_delivery(self.celery, delivery_id)
            except redis.RedisError:
                log.warning("Redis unavailable; retries wait", exc_info=True)


def run_webhook_worker(settings: Settings, concurrency: int, loglevel: str = "INFO") -> None:
    client = redis.Redis.from_url(settings.redis_url)
    deliveries = DeliveryStore(client, prefix=settings.redis_prefix, ttl_s=settings.job_ttl_s)
    deliverer = Deliverer(settings, deliveries, JobStore(client, ttl_s=settings.job_ttl_s, prefix=settings.redis_prefix))
    app = make_celery(settings)
    app.task(name=DELIVER_TASK, acks_late=True, ignore_result=True)(deliverer.attempt)
    scheduler = RetryScheduler(deliveries, app)
    scheduler.start()
    name = f"visionq-webhooks-{os.getpid()}@{socket.gethostname()}"
    heartbeat = Heartbeat(client, settings.redis_prefix, name, {"kinds": ["webhooks"], "device": None})
    heartbeat.start()
    heartbeat.follow_celery()
    try:
        app.worker_main([
            "worker", "--queues", WEBHOOKS_QUEUE, "--pool", "threads", "--concurrency", str(concurrency),
            "--hostname", name, "--loglevel", loglevel, "--without-gossip", "--without-mingle",
        ])
    finally:
        scheduler.stopped.set()
        heartbeat.stop()
