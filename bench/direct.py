"""The physical limit: the same pipeline code on the same input, called in a loop here.

No queue, no records, no storage: decode the image as the worker does
(`worker.images.decode_image`, at the pipeline's input side), run the pipeline,
encode its images as the worker does (`worker.png.encode_png`), and time each step apart, so that
"model only" and "decode + model + encode" baselines come from the same calls.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tasks.kinds import JobKind
from tasks.schemas import JobRequest
from tasks.settings import Settings
from worker.images import decode_image
from worker.png import encode_png
from worker.pipelines.base import Pipeline, input_side, run_one


@dataclass
class DirectRun:
    decode_ms: list[float] = field(default_factory=list)
    run_ms: list[float] = field(default_factory=list)
    encode_ms: list[float] = field(default_factory=list)

    @property
    def jobs(self) -> int:
        return len(self.run_ms)

    @property
    def model_jobs_per_s(self) -> float:
        return self.jobs * 1000 / sum(self.run_ms)

    @property
    def full_jobs_per_s(self) -> float:
        return self.jobs * 1000 / (sum(self.decode_ms) + sum(self.run_ms) + sum(self.encode_ms))


def load_tiny(models_dir: Path, kinds: list[JobKind]) -> dict[JobKind, Pipeline]:
    """The pipelines a worker would load, loaded here with the worker's one thread."""
    import torch

    from worker.loader import load_pipelines

    torch.set_num_threads(1)  # the workers run with VISIONQ_TORCH_THREADS=1
    return load_pipelines(Settings().with_models_dir(models_dir), kinds, "cpu")


def time_direct(pipeline: Pipeline, request: JobRequest, image_bytes: bytes | None, jobs: int) -> DirectRun:
    settings = Settings()  # the worker's defaults: limits, PNG level
    run = DirectRun()
    for _ in range(jobs):
        started = time.perf_counter()
        image = None if image_bytes is None else decode_image(image_bytes, settings.limits, input_side(pipeline))
        decoded = time.perf_counter()
        result = run_one(pipeline, request, image, _ignore_progress)
        ran = time.perf_counter()
        for output in result.images.values():
            encode_png(output, settings.png_compress_level)
        encoded = time.perf_counter()
        run.decode_ms.append((decoded - started) * 1000)
        run.run_ms.append((ran - decoded) * 1000)
        run.encode_ms.append((encoded - ran) * 1000)
    return run


def _ignore_progress(_fraction: float) -> None:
    pass
