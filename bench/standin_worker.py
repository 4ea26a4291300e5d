"""A worker process serving the benchmark's own pipelines through the real runtime.

    python -m bench.standin_worker --cost-ms 20
    python -m bench.standin_worker --load-per-task caption,segment --models DIR

Configured from the environment like `visionq worker` (VISIONQ_REDIS_URL, ...);
`worker.process.serve` does the rest exactly as for real models: heartbeat,
Celery consumer, runtime, storage.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

from tasks.kinds import parse_kinds
from tasks.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.standin_worker")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--cost-ms", type=float, help="serve segment jobs with a stand-in model of this fixed cost")
    model.add_argument("--load-per-task", metavar="KINDS", help="serve KINDS, loading the model inside every task")
    parser.add_argument("--models", help="models folder (with --load-per-task)")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)

    from tasks.kinds import JobKind
    from tasks.models import ROLE_MODELS
    from worker.pipelines.base import Pipeline
    from worker.process import serve

    settings = Settings.from_env()
    if args.cost_ms is not None:
        from bench.pipelines import STANDIN_KIND, FixedCostPipeline

        pipelines: dict[JobKind, Pipeline] = {STANDIN_KIND: FixedCostPipeline(args.cost_ms)}
        label = f"standin{args.cost_ms:g}ms"
    else:
        import torch

        from bench.pipelines import LoadPerTaskPipeline

        if args.models:
            settings = settings.with_models_dir(args.models)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)  # as run_worker does for real workers
        pipelines = {kind: LoadPerTaskPipeline(kind, settings, "cpu") for kind in parse_kinds(args.load_per_task)}
        label = "loadpertask"

    def load() -> dict[str, Pipeline]:  # each kind's default model's name
        return {ROLE_MODELS[kind.value]: pipeline for kind, pipeline in pipelines.items()}

    serve(settings, load, f"bench-{label}-{os.getpid()}@{socket.gethostname()}", "cpu", args.loglevel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
