"""Loading, segment and generate on the tiny random-weight models, through the same code as real ids
(caption's families: test_caption_families.py).

The models are random, so these tests check structure, sizes, determinism, limits and
failure handling, never what a caption says or where a mask lies.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from tasks.errors import InvalidInput, JobCanceled, ModelError
from tasks.kinds import JobKind
from tasks.models import CATALOGUE
from tasks.schemas import GenerateRequest, SegmentRequest
from tasks.settings import MODEL_DIR_NAMES
from tests.support.images import scene
from worker.loader import load_named_pipeline, load_pipeline
from worker.loading import pick_dtype
from worker.pipelines.base import FileSlot, ModelSpec, no_progress, resized_side, run_one
from worker.pipelines.caption import CaptionPipeline
from worker.pipelines.detect_segment import DetectSegmentPipeline
from worker.pipelines.generate import GeneratePipeline
import worker.pipelines.segment as segment_module
from worker.pipelines.segment import OVERLAY_OPACITY, SegmentPipeline, palette_colour, segment_result
from worker.tiny import MARKER, SEMANTIC_CLASSES, build_tiny_models, is_tiny_dir

REPO = Path(__file__).resolve().parents[2]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


# --- tiny models ---------------------------------------------------------------------------------


def test_tiny_layout_is_the_models_dir_layout(tiny_models: Path) -> None:
    # Settings.with_models_dir reads exactly these folders.
    assert all((tiny_models / name / "config.json").exists() or (tiny_models / name / "model_index.json").exists()
               for name in MODEL_DIR_NAMES.values())
    assert (tiny_models / MARKER).read_text().startswith("Tiny RANDOM-WEIGHT models")
    assert is_tiny_dir(tiny_models) and is_tiny_dir(tiny_models / "caption")
    assert not is_tiny_dir(tiny_models.parent)


def test_build_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = build_tiny_models(tmp_path / "first", seed=0)
    again = build_tiny_models(tmp_path / "again", seed=0)
    other = build_tiny_models(tmp_path / "other", seed=1)
    assert set(first) == {entry.full_name for entry in CATALOGUE}
    for role, folder in first.items():
        files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
        assert files and files == sorted(p.relative_to(again[role]) for p in again[role].rglob("*") if p.is_file())
        for name in files:
            assert (folder / name).read_bytes() == (again[role] / name).read_bytes(), f"{role}/{name}"
        weights = sorted(str(name) for name in files if name.suffix == ".safetensors")
        assert weights, role
        assert any((folder / w).read_bytes() != (other[role] / w).read_bytes() for w in weights), role


def test_build_and_load_need_no_network(tmp_path: Path) -> None:
    """In a fresh process with sockets disabled: build, load every pipeline, warm up."""
    code = f"""
import socket
def refuse(*args, **kwargs):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

import torch
from worker.pipelines.base import ModelSpec
from worker.pipelines.caption import CaptionPipeline
from worker.pipelines.detect_segment import DetectSegmentPipeline
from worker.pipelines.generate import GeneratePipeline
from worker.pipelines.segment import SegmentPipeline
from worker.tiny import build_tiny_models

torch.set_num_threads(1)
paths = {{name: ModelSpec(str(path)) for name, path in build_tiny_models({str(tmp_path)!r}).items()}}
for name in ("caption/blip", "caption/vit-gpt2", "caption/vlm"):
    CaptionPipeline.load(paths[name], "cpu", torch.float32).warm_up()
SegmentPipeline.load(paths["segment/clipseg"], paths["segment/segformer"], "cpu", torch.float32).warm_up()
GeneratePipeline.load(paths["generate/sd"], "cpu", torch.float32).warm_up()
print("ok")
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


# --- loading -------------------------------------------------------------------------------------


def test_pick_dtype() -> None:
    assert pick_dtype("cpu") is torch.float32
    assert pick_dtype("cuda") is torch.float16
    assert pick_dtype("cuda:1") is torch.float16


def test_a_folder_with_only_pickle_weights_is_refused(tiny_models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "caption-bin"
    shutil.copytree(tiny_models / "caption", folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="safetensors only") as caught:
        CaptionPipeline.load(ModelSpec(str(folder)), "cpu", torch.float32)
    assert str(folder) in caught.value.message and "pytorch_model.bin" in caught.value.message


def test_a_folder_without_tokenizer_files_is_refused(tiny_models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "caption-no-tokenizer"
    shutil.copytree(tiny_models / "caption", folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    with pytest.raises(ModelError, match="caption-no-tokenizer"):
        CaptionPipeline.load(ModelSpec(str(folder)), "cpu", torch.float32)


def test_a_tokenizer_that_does_not_match_the_model_is_refused(tiny_models: Path, tmp_path: Path) -> None:
    # What a Stable Diffusion folder without tokenizer files loads as, silently: a few tokens.
    folder = tmp_path / "generate-bad-tokenizer"
    shutil.copytree(tiny_models / "generate", folder)
    shutil.rmtree(folder / "tokenizer")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3}
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77).save_pretrained(folder / "tokenizer")
    with pytest.raises(ModelError, match="has 4 tokens but the model's vocabulary has"):
        GeneratePipeline.load(ModelSpec(str(folder)), "cpu", torch.float32)


# --- segment -------------------------------------------------------------------------------------


def check_masks(result_images: dict[str, Image.Image], segments: list[dict], size: tuple[int, int]) -> None:
    for n, segment in enumerate(segments):
        assert segment["mask"] == FileSlot(f"mask-{n}.png")
        mask = result_images[f"mask-{n}.png"]
        assert mask.mode == "L" and mask.size == size
        values = pixels(mask)
        assert set(np.unique(values)) <= {0, 255}
        assert 0.0 <= segment["area"] <= 1.0
        assert segment["area"] == pytest.approx((values == 255).mean())


def test_segment_with_labels(segment_pipeline: SegmentPipeline) -> None:
    image = scene(96, 64)
    calls: list[float] = []
    labels = ["sun", "a red house", "sky"]
    result = run_one(segment_pipeline, SegmentRequest(image="x", labels=labels, threshold=0.5), image, calls.append)
    segments = result.output["segments"]
    assert [s["label"] for s in segments] == labels
    check_masks(result.images, segments, image.size)
    assert result.output["overlay"] == FileSlot("overlay.png")
    assert set(result.images) == {"mask-0.png", "mask-1.png", "mask-2.png", "overlay.png"}
    assert result.images["overlay.png"].mode == "RGB" and result.images["overlay.png"].size == image.size
    assert result.model == segment_pipeline.prompted_label
    assert calls[-1] == 1.0


def test_segment_one_label(segment_pipeline: SegmentPipeline) -> None:
    image = scene(50, 70)
    result = run_one(segment_pipeline, SegmentRequest(image="x", labels=["sun"]), image, no_progress)
    check_masks(result.images, result.output["segments"], image.size)


def test_segment_threshold_bounds_the_masks(segment_pipeline: SegmentPipeline) -> None:
    # A sigmoid is never below 0 nor above 1: threshold 0 keeps every pixel, 1 none.
    labels = ["sun", "car"]
    everything = run_one(segment_pipeline, SegmentRequest(image="x", labels=labels, threshold=0.0), scene(), no_progress)
    nothing = run_one(segment_pipeline, SegmentRequest(image="x", labels=labels, threshold=1.0), scene(), no_progress)
    assert [s["area"] for s in everything.output["segments"]] == [1.0, 1.0]
    assert [s["area"] for s in nothing.output["segments"]] == [0.0, 0.0]


def test_overlay_tints_masked_pixels_only(segment_pipeline: SegmentPipeline) -> None:
    image = scene(96, 64)
    result = run_one(segment_pipeline, SegmentRequest(image="x", labels=["sun"], threshold=0.5), image, no_progress)
    mask = pixels(result.images["mask-0.png"]) == 255
    assert 0 < mask.mean() < 1, "the tiny model should mask part of the scene at 0.5"
    overlay, original = pixels(result.images["overlay.png"]).astype(int), pixels(image).astype(int)
    assert (overlay[~mask] == original[~mask]).all()
    expected = np.round(original[mask] * 0.5 + np.array(palette_colour(0)) * 0.5)
    assert np.abs(overlay[mask] - expected).max() <= 1


def test_segments_default_also_serves_its_semantic_model_by_name(segment_pipeline: SegmentPipeline) -> None:
    """A worker that loaded segment's default serves `segment/segformer` jobs from the same weights
    (worker/loader.py with_role_views), refusing labels as that model alone does."""
    from tasks.models import ROLE_MODELS
    from worker.loader import with_role_views

    served = with_role_views({ROLE_MODELS["segment"]: segment_pipeline})
    view = served[ROLE_MODELS["semantic"]]
    assert list(served) == [ROLE_MODELS["segment"], ROLE_MODELS["semantic"]]
    assert view.semantic is segment_pipeline.semantic and view.prompted is None  # shared, not loaded again
    assert view.model_label == segment_pipeline.semantic_label
    image = scene()
    alone = run_one(view, SegmentRequest(image="x"), image, no_progress)
    default = run_one(segment_pipeline, SegmentRequest(image="x"), image, no_progress)
    assert [s["label"] for s in alone.output["segments"]] == [s["label"] for s in default.output["segments"]]
    with pytest.raises(InvalidInput, match="takes no labels"):
        run_one(view, SegmentRequest(image="x", labels=["sun"]), image, no_progress)
    assert segment_pipeline.prompted is not None  # the default itself is untouched
    assert with_role_views(served) == served  # served by name already: nothing added


def test_overlay_is_pillows_blend_then_paste_of_each_mask_in_turn() -> None:
    """The lookup-table overlay gives the very pixels of the plain way: each mask in turn, the whole
    picture blended with its colour and pasted through it (overlapping masks included)."""
    rng = np.random.default_rng(3)
    original = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image = Image.fromarray(original)
    masks = [rng.random((37, 53)) < share for share in (0.6, 0.5, 0.3)]  # they overlap
    expected = image.copy()
    for n, mask in enumerate(masks):
        tinted = Image.blend(expected, Image.new("RGB", image.size, palette_colour(n)), OVERLAY_OPACITY)
        expected.paste(tinted, mask=Image.fromarray(mask.astype(np.uint8) * 255))
    overlay = segment_result(image, [(f"l{n}", mask) for n, mask in enumerate(masks)], "m").images["overlay.png"]
    assert overlay.mode == "RGB" and overlay.size == image.size
    assert np.array_equal(pixels(overlay), pixels(expected))
    assert np.array_equal(pixels(image), original)  # drawn on a copy


def test_palette_is_deterministic_and_distinct() -> None:
    colours = [palette_colour(n) for n in range(16)]
    assert len(set(colours)) == 16
    assert colours == [palette_colour(n) for n in range(16)]


@pytest.mark.parametrize("size", [(96, 64), (1100, 60)])  # the second is wider than the work side
def test_segment_semantic_classes(segment_pipeline: SegmentPipeline, size: tuple[int, int]) -> None:
    image = scene(*size)
    result = run_one(segment_pipeline, SegmentRequest(image="x"), image, no_progress)
    segments = result.output["segments"]
    assert segments and {s["label"] for s in segments} <= set(SEMANTIC_CLASSES)
    assert len({s["label"] for s in segments}) == len(segments)
    areas = [s["area"] for s in segments]
    assert areas == sorted(areas, reverse=True)
    assert sum(areas) == pytest.approx(1.0, abs=1e-9)
    check_masks(result.images, segments, image.size)
    cover = sum((pixels(result.images[s["mask"].name]) == 255).astype(int) for s in segments)
    assert (cover == 1).all(), "every pixel belongs to exactly one class"
    assert result.images["overlay.png"].size == image.size
    assert result.model == segment_pipeline.semantic_label


def test_segment_refuses_a_label_longer_than_the_text_encoder_takes(segment_pipeline: SegmentPipeline) -> None:
    too_long = " ".join(["sky"] * segment_pipeline.max_label_tokens)  # plus start and end tokens
    with pytest.raises(InvalidInput, match=r"labels\[1\] has \d+ tokens"):
        run_one(segment_pipeline, SegmentRequest(image="x", labels=["sun", too_long]), scene(), no_progress)


def test_segment_batched_equals_unbatched(segment_pipeline: SegmentPipeline) -> None:
    images = [scene(96, 64, seed=0), scene(70, 50, seed=4)]
    prompted = [SegmentRequest(image="x", labels=["sun"]), SegmentRequest(image="x", labels=["sky", "a red car"])]
    for requests in (prompted, [SegmentRequest(image="x")] * 2):
        alone = [run_one(segment_pipeline, r, i, no_progress) for r, i in zip(requests, images)]
        together = segment_pipeline.run_batch(requests, images, no_progress)
        for one, batched in zip(alone, together):
            assert batched.output == one.output
            assert batched.images.keys() == one.images.keys()
            for name, image in one.images.items():
                assert (pixels(batched.images[name]) == pixels(image)).all(), name


@pytest.mark.parametrize("labels", [["sun", "sky"], None], ids=["prompted", "semantic"])
def test_a_large_photo_is_processed_from_a_copy_at_the_processors_side(
    segment_pipeline: SegmentPipeline, labels: list[str] | None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    image, request = scene(1600, 1200), SegmentRequest(image="x", labels=labels)
    processor = (segment_pipeline.semantic_processor if labels is None
                 else segment_pipeline.prompted_processor.image_processor)
    side = resized_side(processor)
    copies: list[tuple[int, int]] = []
    real_reduced = segment_module.reduced

    def reduced(picture: Image.Image, min_side: int) -> Image.Image:
        assert picture is image and min_side == side
        copy = real_reduced(picture, min_side)
        copies.append(copy.size)
        return copy

    monkeypatch.setattr(segment_module, "reduced", reduced)
    prepared = segment_pipeline.preprocess(request, image)
    assert len(copies) == 1 and side <= min(copies[0]) < 2 * side
    whole = processor(images=image, return_tensors="pt")["pixel_values"]
    assert prepared.shape == whole.shape
    assert (prepared - whole).abs().mean().item() < 0.05  # normalised units; a grey level is ~0.016
    result = run_one(segment_pipeline, request, image, no_progress)
    check_masks(result.images, result.output["segments"], image.size)


def test_one_segment_model_alone_serves_its_own_jobs(tiny_models: Path) -> None:
    clipseg = load_pipeline(JobKind.SEGMENT, ModelSpec(str(tiny_models / "segment-prompted")), "cpu", torch.float32)
    segformer = load_pipeline(JobKind.SEGMENT, ModelSpec(str(tiny_models / "segment-semantic")), "cpu",
                              torch.float32)
    clipseg.warm_up()
    segformer.warm_up()
    labelled, plain = SegmentRequest(image="x", labels=["sun"]), SegmentRequest(image="x")
    assert run_one(clipseg, labelled, scene(), no_progress).output["segments"][0]["label"] == "sun"
    assert {s["label"] for s in run_one(segformer, plain, scene(), no_progress).output["segments"]} <= set(
        SEMANTIC_CLASSES)
    with pytest.raises(InvalidInput, match="needs labels"):
        run_one(clipseg, plain, scene(), no_progress)
    with pytest.raises(InvalidInput, match="takes no labels"):
        run_one(segformer, labelled, scene(), no_progress)
    assert clipseg.model_label.endswith("segment-prompted") and segformer.model_label.endswith("segment-semantic")


def test_load_pipeline_serves_every_catalogue_model(tiny_models: Path) -> None:
    for entry in CATALOGUE:
        pipeline = load_pipeline(JobKind(entry.kind), ModelSpec(str(tiny_models / entry.folder)), "cpu",
                                 torch.float32)
        assert pipeline.model_label.startswith(str(tiny_models / entry.folder)), entry.full_name
        by_name = load_named_pipeline(entry.full_name, "cpu", torch.float32, models_dir=str(tiny_models))
        assert type(by_name) is type(pipeline) and by_name.model_label == pipeline.model_label
    with pytest.raises(KeyError, match="unknown model 'caption/nope'; known: caption/blip"):
        load_named_pipeline("caption/nope", "cpu", torch.float32, models_dir=str(tiny_models))


def test_detect_segment_returns_a_box_and_score_per_label(tiny_models: Path) -> None:
    pipeline = load_pipeline(JobKind.SEGMENT, ModelSpec(str(tiny_models / "segment-owlv2-sam")), "cpu",
                             torch.float32)
    assert isinstance(pipeline, DetectSegmentPipeline)
    pipeline.warm_up()
    images = [scene(96, 64, seed=0), scene(50, 90, seed=4)]
    requests = [SegmentRequest(image="x", labels=["sun", "a red house", "sky"]),
                SegmentRequest(image="x", labels=["car"], threshold=0.5)]
    alone = [run_one(pipeline, r, i, no_progress) for r, i in zip(requests, images)]
    for request, image, result in zip(requests, images, alone):
        segments = result.output["segments"]
        assert [s["label"] for s in segments] == request.labels
        check_masks(result.images, segments, image.size)
        for segment in segments:
            x0, y0, x1, y1 = segment["box"]
            assert all(isinstance(v, float) for v in segment["box"])
            assert 0 <= x0 <= x1 <= image.width and 0 <= y0 <= y1 <= image.height, segment["box"]
            assert 0.0 <= segment["score"] <= 1.0
    together = pipeline.run_batch(requests, images, no_progress)
    for one, batched in zip(alone, together):
        assert batched.output == one.output
        for name, image in one.images.items():
            assert (pixels(batched.images[name]) == pixels(image)).all(), name
    with pytest.raises(InvalidInput, match="needs labels"):
        run_one(pipeline, SegmentRequest(image="x"), scene(), no_progress)
    with pytest.raises(InvalidInput, match=r"labels\[0\] has \d+ tokens"):
        run_one(pipeline, SegmentRequest(image="x", labels=["sky " * 20]), scene(), no_progress)


# --- generate ------------------------------------------------------------------------------------


def generate(pipeline: GeneratePipeline, progress=no_progress, **params) -> tuple[list[np.ndarray], int]:
    request = GenerateRequest(**{"prompt": "a watercolor fox", "width": 64, "height": 48, "steps": 2, **params})
    result = run_one(pipeline, request, None, progress)
    slots = result.output["images"]
    assert slots == [FileSlot(f"output-{i}.png") for i in range(request.num_images)]
    assert set(result.images) == {slot.name for slot in slots}
    for slot in slots:
        assert result.images[slot.name].mode == "RGB"
        assert result.images[slot.name].size == (request.width, request.height)
    return [pixels(result.images[slot.name]) for slot in slots], result.output["seed"]


def test_generate_is_deterministic_for_a_seed(generate_pipeline: GeneratePipeline) -> None:
    first, seed = generate(generate_pipeline, seed=7)
    again, _ = generate(generate_pipeline, seed=7)
    other, _ = generate(generate_pipeline, seed=8)
    assert seed == 7
    assert (first[0] == again[0]).all()
    assert (first[0] != other[0]).any()


def test_image_i_of_a_batch_is_the_image_of_seed_plus_i(generate_pipeline: GeneratePipeline) -> None:
    batch, seed = generate(generate_pipeline, seed=41, num_images=2)
    alone, _ = generate(generate_pipeline, seed=42)
    unrelated, _ = generate(generate_pipeline, seed=43)
    assert seed == 41
    # Same noise, same image; batched arithmetic may round a few pixels one level apart.
    assert np.abs(batch[1].astype(int) - alone[0].astype(int)).max() <= 1
    assert np.abs(unrelated[0].astype(int) - alone[0].astype(int)).max() > 10  # what a seed changes
    assert (batch[0] != batch[1]).any()


def test_generate_without_a_seed_reports_the_one_it_drew(generate_pipeline: GeneratePipeline) -> None:
    drawn, seed = generate(generate_pipeline)
    assert isinstance(seed, int) and 0 <= seed < 2**32
    replayed, _ = generate(generate_pipeline, seed=seed)
    assert (drawn[0] == replayed[0]).all()


def test_generate_reports_progress_after_every_step(generate_pipeline: GeneratePipeline) -> None:
    fractions: list[float] = []
    generate(generate_pipeline, progress=fractions.append, steps=4, seed=1)
    assert fractions == [0.25, 0.5, 0.75, 1.0]


def test_cancel_from_progress_stops_generation(generate_pipeline: GeneratePipeline) -> None:
    calls: list[float] = []

    def cancel_at_second_step(fraction: float) -> None:
        calls.append(fraction)
        if len(calls) == 2:
            raise JobCanceled("canceled")

    with pytest.raises(JobCanceled):
        generate(generate_pipeline, progress=cancel_at_second_step, steps=5, seed=1)
    assert calls == [0.2, 0.4]


def test_negative_prompt_acts_only_with_guidance(generate_pipeline: GeneratePipeline) -> None:
    plain, _ = generate(generate_pipeline, seed=3, guidance_scale=2.0)
    negative, _ = generate(generate_pipeline, seed=3, guidance_scale=2.0, negative_prompt="a dark road")
    assert (plain[0] != negative[0]).any()
    plain, _ = generate(generate_pipeline, seed=3, guidance_scale=1.0)
    negative, _ = generate(generate_pipeline, seed=3, guidance_scale=1.0, negative_prompt="a dark road")
    assert (plain[0] == negative[0]).all()


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_generate_refuses_a_prompt_longer_than_the_text_encoder_takes(
    generate_pipeline: GeneratePipeline, field: str
) -> None:
    too_long = " ".join(["fox"] * generate_pipeline.max_prompt_tokens)  # plus start and end tokens
    with pytest.raises(InvalidInput, match=f"{field} has {generate_pipeline.max_prompt_tokens + 2} tokens"):
        generate(generate_pipeline, **{field: too_long})
