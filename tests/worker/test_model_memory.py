"""Sizing models from their safetensors headers, and refusing a set that exceeds the budget."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from tasks.errors import ModelError
from tasks.kinds import JobKind
from tasks.models import CATALOGUE
from tasks.settings import Settings
from worker.loader import check_memory, default_names, load_pipelines
from worker.model_memory import MIB, check_fits, loaded_files, memory_budget, read_header, weights_bytes
from worker.pipelines.base import ModelSpec


def stored_data_bytes(folder: Path) -> int:
    """What the files hold beyond their headers: the tensors' bytes as stored."""
    total = 0
    for path in loaded_files(folder):
        header_length = struct.unpack("<Q", path.read_bytes()[:8])[0]
        total += path.stat().st_size - 8 - header_length
    return total


@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda entry: entry.full_name)
def test_the_estimate_is_the_weights_bytes(tiny_models: Path, entry) -> None:
    folder = tiny_models / entry.folder
    spec = ModelSpec(str(folder))
    # The tiny models are stored in fp32: loaded in fp32 they take the data as stored, in fp16
    # half of it, but for integer tensors (SegFormer's BatchNorm counters), which stay as they are.
    assert weights_bytes(spec, 4) == stored_data_bytes(folder) > 0
    integers = sum(8 for path in loaded_files(folder) for tensor in read_header(path).values()
                   if tensor["dtype"] == "I64")
    assert integers == 0 or entry.full_name == "segment/segformer"
    assert weights_bytes(spec, 2) == (weights_bytes(spec, 4) - integers) // 2 + integers


def test_the_estimate_matches_the_loaded_model(tiny_models: Path) -> None:
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_models / "caption-vlm", use_safetensors=True)
    unique = {t.data_ptr(): t.numel() * t.element_size() for t in model.state_dict().values()}
    assert weights_bytes(ModelSpec(str(tiny_models / "caption-vlm")), 4) == sum(unique.values())


def test_a_pipeline_folder_counts_its_components_only(tiny_models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "generate"
    shutil.copytree(tiny_models / "generate", folder)
    before = weights_bytes(ModelSpec(str(folder)), 4)
    unet = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    # A single-file checkpoint beside the components and an fp16 variant are not what loading reads.
    save_file(unet, folder / "sd_turbo.safetensors")
    save_file({k: v.half() for k, v in unet.items()}, folder / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    assert weights_bytes(ModelSpec(str(folder)), 4) == before


def test_a_folder_without_safetensors_cannot_be_sized(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no safetensors weights"):
        weights_bytes(ModelSpec(str(tmp_path)), 4)


def test_check_fits_names_every_model_and_the_budget() -> None:
    estimates = {"caption/blip": 3 * MIB, "caption/vlm": 2 * MIB}
    check_fits(estimates, 5 * MIB, "VISIONQ_MEMORY_BUDGET_MB 5")
    check_fits(estimates, None, "no budget")
    with pytest.raises(ModelError) as caught:
        check_fits(estimates, 4 * MIB, "VISIONQ_MEMORY_BUDGET_MB 4")
    message = caught.value.message
    assert "5.0 MiB" in message and "caption/blip 3.0 MiB" in message and "caption/vlm 2.0 MiB" in message
    assert "VISIONQ_MEMORY_BUDGET_MB 4 allows (4.0 MiB)" in message
    with pytest.raises(ModelError) as caught:  # tiny models just over a tiny budget: the figures still differ
        check_fits({"caption/blip": 53_000, "caption/vlm": 52_000}, int(0.1 * MIB), "VISIONQ_MEMORY_BUDGET_MB 0.1")
    assert "need 0.1001 MiB (caption/blip 0.0505 MiB, caption/vlm 0.0496 MiB)" in caught.value.message
    assert "allows (0.1000 MiB)" in caught.value.message


def test_the_cpu_budget_is_the_setting() -> None:
    assert memory_budget("cpu", 0.5, None) == (None, "no VISIONQ_MEMORY_BUDGET_MB")
    assert memory_budget("cpu", None, 12) == (12 * MIB, "VISIONQ_MEMORY_BUDGET_MB 12")


def test_a_worker_refuses_models_that_exceed_its_budget_before_loading(tiny_models: Path) -> None:
    kinds = [JobKind.CAPTION, JobKind.SEGMENT]
    names = default_names(kinds)
    sizes = check_memory(Settings(memory_budget_mb=1000).with_models_dir(tiny_models), names, "cpu")
    assert set(sizes) == {"caption/blip", "segment/clipseg"}  # segment's default holds its semantic model too
    segment_parts = [weights_bytes(ModelSpec(str(tiny_models / folder)), 4)
                     for folder in ("segment-prompted", "segment-semantic")]
    assert sizes["segment/clipseg"] == sum(segment_parts)
    total_mb = sum(sizes.values()) / MIB
    tight = Settings(memory_budget_mb=total_mb * 0.99).with_models_dir(tiny_models)
    with pytest.raises(ModelError, match=r"more than VISIONQ_MEMORY_BUDGET_MB [\d.]+ allows"):
        load_pipelines(tight, kinds, "cpu")
    roomy = Settings(memory_budget_mb=total_mb * 1.01).with_models_dir(tiny_models)
    assert set(load_pipelines(roomy, kinds, "cpu")) == set(kinds)
    # Without a budget nothing is refused, and the sizes are still what `visionq workers` shows.
    assert check_memory(Settings().with_models_dir(tiny_models), names, "cpu") == sizes



@pytest.mark.parametrize("size", [5, 1000], ids=["in-the-length", "in-the-header"])
def test_a_truncated_weights_file_is_named_not_a_traceback(tiny_models: Path, tmp_path: Path, size: int) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes((tiny_models / "caption" / "model.safetensors").read_bytes()[:size])
    with pytest.raises(ModelError, match=f"{weights}: not a readable safetensors file"):
        read_header(weights)
