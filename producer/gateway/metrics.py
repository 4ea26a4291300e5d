"""The gateway's `/metrics`: the fleet as Redis sees it, read at scrape time.

Only gauges of shared state (queue depths, the oldest queued job's age, live
workers by state), so several gateway replicas scraped together never double-count;
per-job counters and histograms come from the workers themselves.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterator

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tasks.heartbeats import ROLES, list_workers, worker_role
from tasks.kinds import Priority
from tasks.queues import oldest_queued_age_s, queue_depths

WORKER_STATES = ("loading", "ready", "busy", "draining")


class FleetCollector(Collector):
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "visionq_queue_depth", "Jobs waiting in a queue", labels=["kind", "model", "priority"],
        )
        for kind, per_kind in queue_depths(self.client, self.prefix).items():
            for model, per_priority in per_kind["models"].items():  # one queue per model (issue 13)
                for priority in Priority:
                    depth.add_metric([kind, model, priority.value], per_priority[priority.value])
        yield depth
        oldest = GaugeMetricFamily(
            "visionq_queue_oldest_age_seconds", "How long the oldest queued job of a kind has waited", labels=["kind"],
        )
        for kind, age in oldest_queued_age_s(self.client, self.prefix).items():
            oldest.add_metric([kind], age)
        yield oldest
        workers = GaugeMetricFamily(
            "visionq_workers", "Live workers by state and role (model: serves jobs; webhooks: delivers events)",
            labels=["state", "role"],
        )
        counts = Counter((w.get("state", "unknown"), worker_role(w)) for w in list_workers(self.client, self.prefix))
        for state in sorted(set(WORKER_STATES) | {state for state, _ in counts}):
            for role in ROLES:
                workers.add_metric([state, role], counts.get((state, role), 0))
        yield workers


def render_metrics(client: redis.Redis, prefix: str) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(client, prefix))
    return generate_latest(registry)
