"""A bare Celery worker: `tasks.app`'s configuration, a no-op task, nothing of visionq's runtime.

    python -m bench.bare_worker --queue bench.bare --concurrency 2

The baseline of the hotpath scenario: the same app settings as a visionq worker
(JSON, acks_late, prefetch 1, priority lists, key prefix, task events per
VISIONQ_TASK_EVENTS), the same pool (threads), concurrency and flags, kombu's own
Redis transport, and a task that does nothing. Ready once it has written its pid
under `<prefix>:bare-ready` (Celery's worker_ready signal). With `started_key`
the task records when it started (the latency phase only).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

TASK_NAME = "bench.noop"


def ready_key(prefix: str) -> str:
    return f"{prefix}:bare-ready"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_worker")
    parser.add_argument("--queue", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args(argv)

    import redis
    from celery import signals

    from tasks.app import make_celery
    from tasks.settings import Settings

    settings = Settings.from_env()
    app = make_celery(settings)
    client = redis.Redis.from_url(settings.redis_url)

    @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def noop(job_id: str, request: dict, started_key: str | None = None) -> None:
        if started_key is not None:
            client.set(started_key, repr(time.time()), ex=600)

    def announce(**_: object) -> None:
        client.set(ready_key(settings.redis_prefix), os.getpid(), ex=3600)

    signals.worker_ready.connect(announce, weak=False)
    app.worker_main([
        "--quiet", "worker", "--queues", args.queue, "--pool", "threads", "--concurrency", str(args.concurrency),
        "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--hostname", f"bare-{os.getpid()}@bench",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
