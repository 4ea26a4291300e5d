"""Turning job changes into webhook deliveries, on whichever side the change happens.

Workers publish started/progress/final events, the SDK publishes the cancel of a
queued job. Publishing only stores the delivery and enqueues it on the
`visionq.webhooks` queue: the HTTP call happens in the delivery worker, so a slow
receiver never holds a GPU. A failure here is logged, never raised: a webhook
problem must not fail the job.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from tasks.deliveries import DeliveryStore
from tasks.kinds import WEBHOOKS_QUEUE
from tasks.record import JobRecord, utc_now
from tasks.store import JobStore
from tasks.webhooks import FINAL_EVENT, EventType, event_body

log = logging.getLogger("visionq.events")

DELIVER_TASK = "visionq.webhooks.deliver"
PROGRESS_INTERVAL_S = 1.0  # at most one job.progress per second per job


class EventPublisher:
    def __init__(self, store: JobStore, deliveries: DeliveryStore, celery: Any) -> None:
        self.store = store
        self.deliveries = deliveries
        self.celery = celery
        self._last_progress: dict[str, float] = {}

    def publish(self, record: JobRecord, event: EventType) -> None:
        webhook = record.webhook
        if not webhook or event.value not in webhook["events"]:
            return
        if event is EventType.PROGRESS and not self._progress_due(record.id):
            return
        try:
            sequence = self.store.next_event_sequence(record.id)
            delivery_id = f"msg_{record.id}_{sequence}"
            data = record.to_dict()
            data.pop("webhook_attempts", None)
            body = event_body(event, utc_now(), sequence, data)
            if self.deliveries.create(delivery_id, record.id, event.value, webhook["url"], body):
                enqueue_delivery(self.celery, delivery_id)
        except Exception:  # noqa: BLE001 - see the module docstring
            log.exception("could not publish %s for job %s", event.value, record.id)
        if event.value in FINAL_EVENT.values():
            self._last_progress.pop(record.id, None)

    def publish_final(self, record: JobRecord) -> None:
        self.publish(record, FINAL_EVENT[record.status.value])

    def _progress_due(self, job_id: str) -> bool:
        now = time.monotonic()
        if now - self._last_progress.get(job_id, 0.0) < PROGRESS_INTERVAL_S:
            return False
        self._last_progress[job_id] = now
        return True


def enqueue_delivery(celery: Any, delivery_id: str) -> None:
    """One attempt of this delivery, for the delivery worker to make."""
    celery.send_task(DELIVER_TASK, kwargs={"delivery_id": delivery_id}, queue=WEBHOOKS_QUEUE)
