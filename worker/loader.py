"""Loading and warming up the pipelines a worker serves, once, at start."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from tasks.errors import ModelError
from tasks.kinds import JobKind
from tasks.models import model_entry
from tasks.settings import Settings
from worker.pipelines.base import ModelSpec, Pipeline

log = logging.getLogger("visionq.worker")

_loads = 0  # models loaded by this process, counted where they load (the heartbeat's model_loads)


def model_loads() -> int:
    return _loads


def load_pipelines(settings: Settings, kinds: list[JobKind], device: str) -> dict[JobKind, Pipeline]:
    """Every pipeline loaded on `device` and warmed up with one real inference."""
    from worker.loading import pick_dtype

    dtype = pick_dtype(device)
    check_memory(settings, kinds, device)
    pipelines: dict[JobKind, Pipeline] = {}
    for kind in kinds:
        started = time.perf_counter()
        pipelines[kind] = load_default_pipeline(kind, settings, device, dtype)
        loaded = time.perf_counter()
        pipelines[kind].warm_up()
        log.info(
            "%s: loaded %s in %.2f s, warmed up in %.2f s", kind.value, pipelines[kind].model_label,
            loaded - started, time.perf_counter() - loaded,
        )
    return pipelines


def check_memory(settings: Settings, kinds: list[JobKind], device: str) -> dict[str, int]:
    """Model label -> weights bytes of what `kinds` load, from the safetensors headers; ModelError,
    before any loading, if together they exceed the worker's budget. No budget (the CPU without
    VISIONQ_MEMORY_BUDGET_MB): nothing to check, nothing read."""
    from worker.loading import pick_dtype
    from worker.model_memory import check_fits, memory_budget, weights_bytes

    budget, budget_name = memory_budget(device, settings.gpu_memory_fraction, settings.memory_budget_mb)
    if budget is None:
        return {}
    float_bytes = pick_dtype(device).itemsize
    roles = [role for kind in kinds for role in ((kind.value, "semantic") if kind is JobKind.SEGMENT else (kind.value,))]
    estimates = {}
    for role in roles:
        spec = _spec(settings, role)
        try:
            estimates[spec.label] = weights_bytes(spec, float_bytes)
        except ModelError as exc:
            # Unsized is not refused: loading it says what is wrong (missing, offline, pickles).
            log.warning("%s: not sized before loading: %s", spec.label, exc.message)
    check_fits(estimates, budget, budget_name)
    return estimates


def _spec(settings: Settings, role: str) -> ModelSpec:
    model_id, revision = settings.model_for(role)
    return ModelSpec(model_id, revision)


def load_default_pipeline(kind: JobKind, settings: Settings, device: str, dtype: object) -> Pipeline:
    """The kind's default pipeline, from the models the settings name per role; not warmed up."""
    if kind is JobKind.SEGMENT:
        from worker.pipelines.segment import SegmentPipeline

        global _loads
        _loads += 1
        # Segment's default serves labels (CLIPSeg) and no labels (the semantic model) alike.
        return SegmentPipeline.load(_spec(settings, "segment"), _spec(settings, "semantic"), device, dtype)
    return load_pipeline(kind, _spec(settings, kind.value), device, dtype)


def load_pipeline(kind: JobKind, spec: ModelSpec, device: str, dtype: object) -> Pipeline:
    """The pipeline of `kind` for one model, whatever its family (read from its config), not warmed up.

    A worker may hold several of a kind, keyed by the model's name (tasks.models).
    """
    global _loads
    _loads += 1
    if kind is JobKind.CAPTION:
        from worker.pipelines.caption import CaptionPipeline

        return CaptionPipeline.load(spec, device, dtype)
    if kind is JobKind.SEGMENT:
        from worker.pipelines.detect_segment import DetectSegmentPipeline, is_detect_segment_folder
        from worker.pipelines.segment import SegmentPipeline

        if is_detect_segment_folder(spec):
            return DetectSegmentPipeline.load_folder(spec, device, dtype)
        return SegmentPipeline.load_one(spec, device, dtype)
    from worker.pipelines.generate import GeneratePipeline

    return GeneratePipeline.load(spec, device, dtype)


def load_named_pipeline(name: str, device: str, dtype: object, models_dir: str | None = None) -> Pipeline:
    """The pipeline of a catalogue model (``kind/name``, tasks.models): from its folder in
    `models_dir` when given, else from its Hugging Face id(s). Not warmed up."""
    entry = model_entry(name)
    kind = JobKind(entry.kind)
    if models_dir is not None:
        return load_pipeline(kind, ModelSpec(str(Path(models_dir) / entry.folder)), device, dtype)
    if entry.second_id is not None:
        from worker.pipelines.detect_segment import DetectSegmentPipeline

        return DetectSegmentPipeline.load(ModelSpec(entry.hf_id), ModelSpec(entry.second_id), device, dtype)
    return load_pipeline(kind, ModelSpec(entry.hf_id), device, dtype)
