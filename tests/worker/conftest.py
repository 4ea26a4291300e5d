"""Pipelines loaded once per session from the tiny models, on the CPU, through their real `load`."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.pipelines.base import ModelSpec
from worker.pipelines.caption import CaptionPipeline
from worker.pipelines.generate import GeneratePipeline
from worker.pipelines.segment import SegmentPipeline
from tasks.models import models_of
from tasks.settings import MODEL_DIR_NAMES


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    # Two threads on this shared 2-core machine gave no speed-up, only latency spikes.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_specs(tiny_models: Path) -> dict[str, ModelSpec]:
    """Role -> ModelSpec of the tiny model folders (tiny_models is built once, in tests/conftest.py)."""
    return {role: ModelSpec(str(tiny_models / name)) for role, name in MODEL_DIR_NAMES.items()}


@pytest.fixture(scope="session")
def segment_pipeline(tiny_specs: dict[str, ModelSpec]) -> SegmentPipeline:
    pipeline = SegmentPipeline.load(tiny_specs["segment"], tiny_specs["semantic"], "cpu", torch.float32)
    pipeline.warm_up()
    return pipeline


@pytest.fixture(scope="session")
def generate_pipeline(tiny_specs: dict[str, ModelSpec]) -> GeneratePipeline:
    pipeline = GeneratePipeline.load(tiny_specs["generate"], "cpu", torch.float32)
    pipeline.warm_up()
    return pipeline


@pytest.fixture(scope="session")
def captioners(tiny_models: Path) -> dict[str, CaptionPipeline]:
    """Model name -> caption pipeline of every caption family, loaded by name like a worker would."""
    pipelines = {}
    for entry in models_of("caption"):
        pipelines[entry.full_name] = CaptionPipeline.load(ModelSpec(str(tiny_models / entry.folder)), "cpu",
                                                          torch.float32)
        pipelines[entry.full_name].warm_up()
    return pipelines
