"""Loading and warming up the pipelines a worker serves, once, at start."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from tasks.errors import ModelError
from tasks.kinds import JobKind
from tasks.models import CATALOGUE, ROLE_MODELS, model_entry
from tasks.settings import Settings
from worker.pipelines.base import ModelSpec, Pipeline

log = logging.getLogger("visionq.worker")

_loads = 0  # models loaded by this process, counted where they load (the heartbeat's model_loads)


def model_loads() -> int:
    return _loads


def add_loads(count: int) -> None:
    """Loads made on this worker's behalf by its model process (worker/model_process.py)."""
    global _loads
    _loads += count


def _count_load() -> None:
    from worker.loading import loading_shapes_only

    global _loads
    if not loading_shapes_only():  # a copy without weights (worker/model_process.py) is no load
        _loads += 1


def load_served(settings: Settings, names: list[str], device: str) -> dict[str, Pipeline]:
    """Every model of `names` ("kind/name", tasks.models) loaded on `device` and warmed up with one
    real inference, keyed by name. Whether they fit is `check_memory`'s question, asked first."""
    from worker.loading import pick_dtype

    dtype = pick_dtype(device)
    pipelines: dict[str, Pipeline] = {}
    for name in names:
        started = time.perf_counter()
        pipelines[name] = load_served_pipeline(name, settings, device, dtype)
        loaded = time.perf_counter()
        pipelines[name].warm_up()
        log.info(
            "%s: loaded %s in %.2f s, warmed up in %.2f s", name, pipelines[name].model_label,
            loaded - started, time.perf_counter() - loaded,
        )
    return pipelines


def role_view_of(name: str) -> str | None:
    """The default model whose weights also serve model `name` (see `with_role_views`), if any."""
    return ROLE_MODELS["segment"] if name == ROLE_MODELS["semantic"] else None


def with_role_views(pipelines: dict[str, Pipeline]) -> dict[str, Pipeline]:
    """`pipelines`, plus the models a loaded default holds without being loaded by name: segment's
    default holds the semantic model (`segment/segformer`, tasks.models.ROLE_MODELS), so the worker
    also serves the jobs that name it, on that model's own queue, from the same weights."""
    semantic = ROLE_MODELS["semantic"]
    default = pipelines.get(role_view_of(semantic))
    if semantic in pipelines or getattr(default, "semantic", None) is None:
        return pipelines
    return {**pipelines, semantic: default.semantic_only()}


def load_pipelines(settings: Settings, kinds: list[JobKind], device: str) -> dict[JobKind, Pipeline]:
    """The default models of `kinds`, checked against the memory budget, loaded and warmed up,
    by kind (what the benchmarks serve)."""
    names = default_names(kinds)
    check_memory(settings, names, device)
    return {JobKind(name.split("/", 1)[0]): pipeline for name, pipeline in load_served(settings, names, device).items()}


def default_names(kinds: list[JobKind]) -> list[str]:
    """What a worker serves without --serve: the default model of each of `kinds`."""
    return [ROLE_MODELS[kind.value] for kind in kinds]


def parse_served(text: str, settings: Settings) -> list[str]:
    """`--serve caption/blip,caption/vit-gpt2`: names the settings can load; ValueError naming the unknown."""
    known = {entry.full_name for entry in CATALOGUE} | set(settings.named_models)
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part not in known:
            raise ValueError(f"--serve {part!r} is not a model; known: {', '.join(sorted(known))}")
        if part not in names:
            names.append(part)
    if not names:
        raise ValueError("--serve names no model")
    return names


def check_memory(settings: Settings, names: list[str], device: str) -> dict[str, int]:
    """Model name -> weights bytes of what `names` load, from the safetensors headers (what
    `visionq workers` shows); ModelError, before any loading, if together they exceed the
    worker's budget (none on the CPU without VISIONQ_MEMORY_BUDGET_MB). A model that cannot
    be sized is left out, with a warning: loading it says what is wrong."""
    from worker.loading import pick_dtype
    from worker.model_memory import check_fits, memory_budget, weights_bytes

    budget, budget_name = memory_budget(device, settings.gpu_memory_fraction, settings.memory_budget_mb)
    float_bytes = pick_dtype(device).itemsize
    estimates = {}
    for name in names:
        try:
            estimates[name] = sum(weights_bytes(spec, float_bytes) for spec in served_specs(name, settings))
        except ModelError as exc:
            log.warning("%s: not sized before loading: %s", name, exc.message)
    check_fits(estimates, budget, budget_name)
    return estimates


def served_specs(name: str, settings: Settings) -> list[ModelSpec]:
    """The weights model `name` loads: a kind default's from the per-role settings (segment's
    default holds its semantic model too), another's from VISIONQ_MODELS or --models DIR, else
    the catalogue's Hugging Face id(s)."""
    role = next((role for role, default in ROLE_MODELS.items() if default == name), None)
    if role is not None:
        return [_spec(settings, r) for r in (("segment", "semantic") if role == "segment" else (role,))]
    if name in settings.named_models:
        ref = settings.named_models[name]
        return [ModelSpec(ref.model_id, ref.revision)]
    entry = model_entry(name)
    return [ModelSpec(entry.hf_id)] + ([ModelSpec(entry.second_id)] if entry.second_id else [])


def load_served_pipeline(name: str, settings: Settings, device: str, dtype: object) -> Pipeline:
    """The pipeline of model `name` as `served_specs` finds its weights; not warmed up."""
    kind = JobKind(name.split("/", 1)[0])
    if ROLE_MODELS.get(kind.value) == name:
        return load_default_pipeline(kind, settings, device, dtype)
    specs = served_specs(name, settings)
    if len(specs) == 2:
        from worker.pipelines.detect_segment import DetectSegmentPipeline

        _count_load()
        return DetectSegmentPipeline.load(specs[0], specs[1], device, dtype)
    return load_pipeline(kind, specs[0], device, dtype)


def _spec(settings: Settings, role: str) -> ModelSpec:
    model_id, revision = settings.model_for(role)
    return ModelSpec(model_id, revision)


def load_default_pipeline(kind: JobKind, settings: Settings, device: str, dtype: object) -> Pipeline:
    """The kind's default pipeline, from the models the settings name per role; not warmed up."""
    if kind is JobKind.SEGMENT:
        from worker.pipelines.segment import SegmentPipeline

        _count_load()
        # Segment's default serves labels (CLIPSeg) and no labels (the semantic model) alike.
        return SegmentPipeline.load(_spec(settings, "segment"), _spec(settings, "semantic"), device, dtype)
    return load_pipeline(kind, _spec(settings, kind.value), device, dtype)


def load_pipeline(kind: JobKind, spec: ModelSpec, device: str, dtype: object) -> Pipeline:
    """The pipeline of `kind` for one model, whatever its family (read from its config), not warmed up.

    A worker may hold several of a kind, keyed by the model's name (tasks.models).
    """
    _count_load()
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
