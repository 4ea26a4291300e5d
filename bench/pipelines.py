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
from worker.pipelines.base import FileSlot, ModelSpec, Pipeline, PipelineResult, ProgressCallback

# The stand-in answers segment jobs: an image in, a small image out, so the job
# goes through input fetch and decode, encode and upload like a real one.
STANDIN_KIND = JobKind.SEGMENT
STANDIN_OUTPUT_SIDE = 64


class FixedCostPipeline:
    def __init__(self, cost_ms: float) -> None:
        self.cost_s = cost_ms / 1000
        self.model_label = f"stand-in {cost_ms:g} ms"
        self.output = Image.linear_gradient("L").resize((STANDIN_OUTPUT_SIDE, STANDIN_OUTPUT_SIDE)).convert("RGB")

    def warm_up(self) -> None:
        pass

    def run(self, request: Any, image: Image.Image | None, progress: ProgressCallback) -> PipelineResult:
        time.sleep(self.cost_s)
        progress(1.0)
        return PipelineResult(
            output={"segments": [], "overlay": FileSlot("overlay.png")}, images={"overlay.png": self.output}
        )


class LoadPerTaskPipeline:
    """Loads `kind`'s pipeline (the same classes and files as ours) in every run, then runs it."""

    def __init__(self, kind: JobKind, settings: Settings, device: str) -> None:
        self.kind = kind
        self.settings = settings
        self.device = device
        self.model_label = f"{settings.model_for(kind.value)[0]} (loaded per task)"

    def warm_up(self) -> None:
        pass  # nothing is loaded ahead: that is the point

    def run(self, request: Any, image: Image.Image | None, progress: ProgressCallback) -> PipelineResult:
        return self.load().run(request, image, progress)

    def load(self) -> Pipeline:
        from worker.loading import pick_dtype

        dtype = pick_dtype(self.device)
        if self.kind is JobKind.CAPTION:
            from worker.pipelines.caption import CaptionPipeline

            return CaptionPipeline.load(self._spec("caption"), self.device, dtype)
        if self.kind is JobKind.SEGMENT:
            from worker.pipelines.segment import SegmentPipeline

            return SegmentPipeline.load(self._spec("segment"), self._spec("semantic"), self.device, dtype)
        from worker.pipelines.generate import GeneratePipeline

        return GeneratePipeline.load(self._spec("generate"), self.device, dtype)

    def _spec(self, role: str) -> ModelSpec:
        return ModelSpec(*self.settings.model_for(role))
