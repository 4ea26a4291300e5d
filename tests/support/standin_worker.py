"""A worker process for the tests: the real runtime, a stand-in model.

    python -m tests.support.standin_worker --cost-ms 300 --runs-file runs.txt --gates DIR

Serves generate jobs through `worker.process.serve` exactly as `visionq worker`
does (heartbeat, Celery consumer, leases, sweeper, watchdog, storage), with a
model that takes `--cost-ms` in five progress steps and returns one small PNG.
Every finished run appends the job's prompt to `--runs-file`, so a test can count
jobs whose model ran to the end more than once; every run that begins appends
`began:PROMPT` (a job the model took, however far it got). A job whose prompt is `gate:NAME`
runs until the file `--gates`/NAME exists (reporting progress, so it can be
canceled meanwhile): a test decides when it ends instead of relying on a model
being slow on this machine.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Hashable

from PIL import Image

STEPS = 5


class StandInGenerate:
    model_label = "stand-in generate"

    def __init__(self, cost_s: float, runs_file: Path | None, gates: Path | None = None) -> None:
        self.cost_s = cost_s
        self.runs_file = runs_file
        self.gates = gates
        self.image = Image.new("RGB", (16, 16), (40, 120, 200))

    def warm_up(self) -> None:
        pass

    def batch_key(self, request: Any) -> Hashable | None:
        return None

    def run_batch(self, requests: list[Any], images: list[Any], progress: Any) -> list[Any]:
        from worker.pipelines.base import FileSlot, PipelineResult

        prompt = requests[0].prompt
        self._log_run(f"began:{prompt}")
        if prompt.startswith("gate:") and self.gates is not None:
            gate = self.gates / prompt.removeprefix("gate:")
            while not gate.exists():
                time.sleep(0.05)
                progress(0.5)  # the cancel checkpoint
        for step in range(STEPS):
            time.sleep(self.cost_s / STEPS)
            progress((step + 1) / (STEPS + 1))
        self._log_run(prompt)
        return [PipelineResult(output={"images": [FileSlot("output-0.png")], "seed": 1},
                               images={"output-0.png": self.image})]


    def _log_run(self, line: str) -> None:
        if self.runs_file is not None:
            with open(self.runs_file, "a") as runs:  # one short line per write: appends do not interleave
                runs.write(f"{line}\n")


def _break_consumer() -> None:
    """The consumer loop's first read raises what kombu raised; later reads (the
    channel's close) work, so Celery stops as it did then."""
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._brpop_read

    def broken_once(self: Any, **options: Any) -> Any:
        kombu_redis.Channel._brpop_read = original
        raise AttributeError("'NoneType' object has no attribute 'hostname'")

    kombu_redis.Channel._brpop_read = broken_once


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.standin_worker")
    parser.add_argument("--cost-ms", type=float, default=200.0)
    parser.add_argument("--runs-file", type=Path)
    parser.add_argument("--gates", type=Path, help="folder whose files release `gate:NAME` jobs")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--break-consumer", action="store_true",
                        help="fail inside kombu's consumer loop as its Redis transport did on a Redis restart")
    args = parser.parse_args(argv)
    if args.break_consumer:
        _break_consumer()

    import logging

    from tasks.kinds import JobKind
    from tasks.models import ROLE_MODELS
    from tasks.settings import Settings
    from worker.process import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pipelines = {ROLE_MODELS[JobKind.GENERATE.value]: StandInGenerate(args.cost_ms / 1000, args.runs_file, args.gates)}
    serve(Settings.from_env(), lambda: pipelines, f"standin-{os.getpid()}@{socket.gethostname()}", "cpu",
          args.loglevel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
