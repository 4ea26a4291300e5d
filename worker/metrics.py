"""A worker's Prometheus metrics: what it did (jobs, durations, batches) and what it holds now.

Served on `visionq worker --metrics-port PORT` (off by default; in a `--gpus` /
`--replicas` fleet each child serves base port + its index). Counters and
histograms are per process, so summing them over workers is right; the
fleet-wide gauges (queue depth, oldest queued job, workers by state) come from
the gateway's /metrics, read from Redis, so they are never counted twice.
Names follow Prometheus conventions: base units (`_seconds`, `_bytes`), `_total`
for counters. Reference: docs/observability.md.
"""
from __future__ import annotations

import sys
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tasks.models import default_model
from tasks.record import JobRecord
from worker.device import gpu_memory

WORKER_STATES = ("loading", "ready", "busy", "draining")

# Seconds: from a few ms (a cached caption) to an hour in the queue.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

# The job record's metrics (milliseconds) -> the histogram of each, in seconds.
_DURATIONS = {
    "queue_ms": ("visionq_job_queue_seconds", "Time from submit until a worker started the job"),
    "run_ms": ("visionq_job_run_seconds", "Model time of the batch the job ran in"),
    "encode_ms": ("visionq_job_encode_seconds", "Time encoding the job's output images"),
    "upload_ms": ("visionq_job_upload_seconds", "Time uploading the job's output files"),
}


class WorkerMetrics:
    def __init__(self, state: Callable[[], str]) -> None:
        """`state()`: this worker's state now (its heartbeat's: loading, ready, busy, draining)."""
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "visionq_jobs", "Jobs this worker ended, by kind, model, final status and error code (none on success)",
            ["kind", "model", "status", "error_code"], registry=self.registry,
        )
        self.durations = {
            field: Histogram(name, doc, ["kind"], buckets=DURATION_BUCKETS_S, registry=self.registry)
            for field, (name, doc) in _DURATIONS.items()
        }
        self.batch_size = Histogram(
            "visionq_job_batch_size", "Size of the batch each job ran in (jobs per forward pass)",
            ["kind"], buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.model_load = Gauge(
            "visionq_model_load_seconds", "Time this worker took to load and warm up its models",
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "visionq_jobs_in_progress", "Jobs this worker holds now (reserved or running), by kind and model",
            ["kind", "model"], registry=self.registry,
        )
        self.registry.register(_LiveCollector(state))

    def observe_final(self, record: JobRecord) -> None:
        """One job this worker ended (ran, or expired)."""
        code = (record.error or {}).get("code", "none")
        kind = record.kind.value
        # The model's name within the kind (blip, vit-gpt2); older records name none: the default.
        model = record.model or default_model(kind)
        self.jobs.labels(kind, model, record.status.value, code).inc()
        for field, histogram in self.durations.items():
            value = record.metrics.get(field)
            if value is not None:
                histogram.labels(kind).observe(float(value) / 1000)
        if record.started_at is not None and record.metrics.get("batch_size"):
            self.batch_size.labels(kind).observe(float(record.metrics["batch_size"]))

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on a daemon thread; exits naming the address when it is taken."""
        try:
            start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:  # a usage error, as a bad port is (exit 2, docs/cli.md)
            print(f"visionq worker: cannot serve metrics on {host}:{port} (--metrics-port): {exc.strerror}",
                  file=sys.stderr)
            raise SystemExit(2) from None


class _LiveCollector(Collector):
    """Read at scrape time: the worker's state and its GPU memory."""

    def __init__(self, state: Callable[[], str]) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        current = self.state()
        states = GaugeMetricFamily("visionq_worker_state", "1 for this worker's current state", labels=["state"])
        for state in sorted(set(WORKER_STATES) | {current}):
            states.add_metric([state], 1.0 if state == current else 0.0)
        yield states
        used = GaugeMetricFamily(
            "visionq_gpu_memory_used_bytes", "GPU memory held by this worker's tensors", labels=["device"],
        )
        reserved = GaugeMetricFamily(
            "visionq_gpu_memory_reserved_bytes", "GPU memory this worker's allocator reserved (tensors + cache)",
            labels=["device"],
        )
        for device, allocated, cached in gpu_memory():
            used.add_metric([device], allocated)
            reserved.add_metric([device], cached)
        yield used
        yield reserved


