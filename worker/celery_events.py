"""Celery's task events (what Flower and `celery events` show), published in batches.

Celery buffers a worker's task events (task-received, -started, -succeeded ...) and asks
its event loop to flush them at once, from whichever thread sent one: a Redis PUBLISH,
and a wake-up of the loop, for nearly every event, three or more per job (about a third
of a busy worker's sampled CPU with a 0 ms model). Here the first event of a quiet spell
schedules one flush EVENT_FLUSH_S later, so one PUBLISH carries every event of that
window (Celery's own `task.multi` batch, which Flower and every event receiver read), and
an idle worker schedules nothing. A monitor sees an event at most EVENT_FLUSH_S late; a
full buffer (Celery's limit, 24 events) is still published at once by the thread that
filled it, and the buffer is flushed at shutdown.
"""
from __future__ import annotations

import logging

from celery.worker.consumer import Consumer

log = logging.getLogger("visionq.worker")

EVENT_FLUSH_S = 0.05


class BatchedEventsConsumer(Consumer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._flush_due = False  # a flush is scheduled; set from any thread, cleared by the loop's

    def on_send_event_buffered(self) -> None:
        """Celery's per-event flush request: the first event of an interval schedules one flush
        for the whole interval (an idle worker schedules nothing)."""
        if self.hub is not None and not self._flush_due:
            self._flush_due = True
            self.hub.call_soon(self._schedule_flush)  # thread-safe; the timer is the loop's own

    def _schedule_flush(self) -> None:
        self.hub.call_later(EVENT_FLUSH_S, self._flush_buffered_events)

    def _flush_buffered_events(self) -> None:
        self._flush_due = False  # before flushing: an event sent meanwhile schedules the next one
        try:
            self._flush_events()
        except Exception as exc:  # noqa: BLE001 - Redis away: Celery keeps them for the next flush
            log.debug("task events not flushed yet: %s", exc)

    def shutdown(self) -> None:
        self._flush_buffered_events()
        super().shutdown()
