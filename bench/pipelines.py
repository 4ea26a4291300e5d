"""Pipelines that exist only to be measured, served through the real runtime.

`FixedCostPipeline` is a model of known cost: its run sleeps, as the CPU waits
while a GPU computes, so whatever the service adds shows against a fixed
number. `LoadPerTaskPipeline` is what naive Celery examples do: load the model
inside the task, every time, instead of once per process.
"""
from __future__ import annotations

import time
from typing import Any

from PIL import Image

from tasks.kinds import JobKind
from tasks.settings import Settings
from worker.pipelines.base import FileSlot, Pipeline, PipelineResult, ProgressCallback

# The stand-in answers segment jobs: an image in, a small image out, so the job
# goes through input fetch and decode, encode and upload like a real one.
STANDIN_KIND = JobKind.SEGMENT
STANDIN_OUTPUT_SIDE = 64


class FixedCostPipeline:
    def __init__(self, cost_ms: float) -> None:
        self.cost_s = cost_ms / 1000
        self.model_label = f"stand-in {cost_ms:g} ms"
        self.batches = False  # never batches: two task threads are enough (worker/process.py)
        self.output = Image.linear_gradient("L").resize((STANDIN_OUTPUT_SIDE, STANDIN_OUTPUT_SIDE)).convert("RGB")

    def warm_up(self) -> None:
        pass

    def batch_key(self, request: Any) -> None:
        return None  # a fixed cost per job: batching would hide what is measured

    def run_batch(self, requests: list[Any], images: list[Image.Image | None],
                  progress: ProgressCallback) -> list[PipelineResult]:
        time.sleep(self.cost_s * len(requests))
        return [
            PipelineResult(
                output={"segments": [], "overlay": FileSlot("overlay.png")}, images={"overlay.png": self.output}
            )
            for _ in requests
        ]


class LoadPerTaskPipeline:
    """Loads `kind`'s pipeline (the same classes and files as ours) in every run, then runs it."""

    def __init__(self, kind: JobKind, settings: Settings, device: str) -> None:
        self.kind = kind
        self.settings = settings
        self.device = device
        self.model_label = f"{settings.model_for(kind.value)[0]} (loaded per task)"

    def warm_up(self) -> None:
        pass  # nothing is loaded ahead: that is the point

    def batch_key(self, request: Any) -> None:
        return None  # one load per job is the point

    def run_batch(self, requests: list[Any], images: list[Image.Image | None],
                  progress: ProgressCallback) -> list[PipelineResult]:
        return [self.load().run_batch([request], [image], progress)[0] for request, image in zip(requests, images)]

    def load(self) -> Pipeline:
        from worker.loader import load_default_pipeline
        from worker.loading import pick_dtype

        return load_default_pipeline(self.kind, self.settings, self.device, pick_dtype(self.device))
