"""Celery's revoke cancels the job: `celery control revoke ID`, `celery control terminate
SIGNAL ID`, `app.control.revoke(ID, terminate=True)` and Flower's buttons.

Each cancels the job as `visionq cancel` does, queued or running: every worker that
receives the broadcast (GPU workers and the delivery worker) writes the cancel to the
job store, a check-and-set, so the first write wins and the others change nothing. A
running job stops at its next checkpoint; no thread is ever killed (a worker's threads
share its models). Celery's own bookkeeping still runs: its revoked set makes a worker
drop the message if it arrives later, and Flower shows the task REVOKED.
"""
from __future__ import annotations

import logging
from typing import Any

from kombu.utils.functional import maybe_list

from tasks.deliveries import EventPublisher
from tasks.errors import VisionqError
from tasks.expiry import QueueEnds
from tasks.record import check_job_id
from tasks.store import JobStore

log = logging.getLogger("visionq.worker")


def install_revoke(store: JobStore, events: EventPublisher | None) -> None:
    """Wrap Celery's `revoke` and `terminate` remote-control commands so that they cancel the jobs.

    `celery control revoke ID`, `celery control terminate SIGNAL ID`, `app.control.revoke(ID,
    terminate=True)` and Flower's revoke/terminate buttons all arrive as one of these two."""
    from celery.worker.control import Panel

    celery_revoke = Panel.data["revoke"]
    if getattr(celery_revoke, "cancels_jobs", False):
        return

    def revoke(state: Any, task_id: Any, terminate: bool = False, signal: Any = None, **kwargs: Any) -> Any:
        for job_id in maybe_list(task_id) or []:
            cancel_job(store, events, job_id)
        if terminate:
            log.info("terminate of %s: jobs are canceled cooperatively "
                     "(a running one stops at its next checkpoint)", task_id)
        # Celery's own bookkeeping (its revoked set drops the message if it arrives here
        # later); never its terminate: it would kill a thread that holds a model.
        return celery_revoke(state, task_id, terminate=False, signal=signal, **kwargs)

    def terminate(state: Any, signal: Any, task_id: Any, **kwargs: Any) -> Any:
        return revoke(state, task_id, terminate=True, signal=signal, **kwargs)

    revoke.cancels_jobs = True  # type: ignore[attr-defined]
    Panel.data["revoke"] = revoke
    Panel.data["terminate"] = terminate


def cancel_job(store: JobStore, events: EventPublisher | None, job_id: Any) -> None:
    try:
        status, canceled_now = store.request_cancel(check_job_id(job_id))
    except VisionqError:
        return  # not a job of this deployment (or expired): Celery's revoke alone
    except Exception:  # noqa: BLE001 - remote control must answer even when Redis does not
        log.exception("revoke of %s: could not write the cancel", job_id)
        return
    log.info("job %s: revoked through Celery; now %s", job_id, status.value)
    if canceled_now:
        record = store.get(job_id)
        if events is not None:
            events.publish_final(record)  # a queued job never reaches a worker: its final event
        QueueEnds(store).take_message_of(record)  # out of the queue depth
