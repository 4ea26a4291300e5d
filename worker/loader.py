"""Loading and warming up the pipelines a worker serves, once, at start."""
from __future__ import annotations

import logging
import time

from tasks.kinds import JobKind
from tasks.settings import Settings
from worker.pipelines.base import ModelSpec, Pipeline

log = logging.getLogger("visionq.worker")


def load_pipelines(settings: Settings, kinds: list[JobKind], device: str) -> dict[JobKind, Pipeline]:
    """Every pipeline loaded on `device` and warmed up with one real inference."""
    from worker.loading import pick_dtype

    dtype = pick_dtype(device)
    pipelines: dict[JobKind, Pipeline] = {}
    for kind in kinds:
        started = time.perf_counter()
        pipelines[kind] = _load(kind, settings, device, dtype)
        loaded = time.perf_counter()
        pipelines[kind].warm_up()
        log.info(
            "%s: loaded %s in %.2f s, warmed up in %.2f s", kind.value, pipelines[kind].model_label,
            loaded - started, time.perf_counter() - loaded,
        )
    return pipelines


def _spec(settings: Settings, role: str) -> ModelSpec:
    model_id, revision = settings.model_for(role)
    return ModelSpec(model_id, revision)


def _load(kind: JobKind, settings: Settings, device: str, dtype: object) -> Pipeline:
    if kind is JobKind.CAPTION:
        from worker.pipelines.caption import CaptionPipeline

        return CaptionPipeline.load(_spec(settings, "caption"), device, dtype)
    if kind is JobKind.SEGMENT:
        from worker.pipelines.segment import SegmentPipeline

        return SegmentPipeline.load(_spec(settings, "segment"), _spec(settings, "semantic"), device, dtype)
    from worker.pipelines.generate import GeneratePipeline

    return GeneratePipeline.load(_spec(settings, "generate"), device, dtype)
