"""Every caption family on its tiny model, loaded through the real loading code.

Each tiny family speaks only its own words (worker/tiny_captioners.py), so a caption's
words prove which family ran; the weights are random, so nothing else about the text is
asserted.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tasks.errors import InvalidInput, ModelError
from tasks.models import models_of
from tasks.schemas import CaptionRequest
from tests.support.images import encode, scene
from worker.images import decode_image
from worker.pipelines.base import ModelSpec, input_side, no_progress, run_one
from worker.pipelines.caption import (
    DEFAULT_INSTRUCTION, BlipCaptioner, CaptionPipeline, EncoderDecoderCaptioner, VlmCaptioner, caption_family,
)
from worker.tiny_captioners import BLIP_WORDS, VIT_GPT2_WORDS, VLM_WORDS

WORDS = {"caption/blip": BLIP_WORDS, "caption/vit-gpt2": VIT_GPT2_WORDS, "caption/vlm": VLM_WORDS}
CLASSES = {"caption/blip": BlipCaptioner, "caption/vit-gpt2": EncoderDecoderCaptioner, "caption/vlm": VlmCaptioner}
FAMILIES = sorted(WORDS)
PREFIX_FAMILIES = ["caption/blip", "caption/vit-gpt2"]


def caption(pipeline: CaptionPipeline, seed: int = 0, **params) -> str:
    request = CaptionRequest(image="x", **{"max_new_tokens": 6, **params})
    return run_one(pipeline, request, scene(seed=seed), no_progress).output["text"]


def test_the_catalogue_names_every_family() -> None:
    assert [entry.full_name for entry in models_of("caption")] == ["caption/blip", "caption/vit-gpt2", "caption/vlm"]


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_speaks_only_its_own_words(captioners: dict[str, CaptionPipeline], name: str) -> None:
    pipeline = captioners[name]
    assert type(pipeline) is CLASSES[name]
    words = set()
    for seed in range(3):
        text = caption(pipeline, seed=seed)
        assert text, name
        words |= set(text.split())
    assert words <= set(WORDS[name]), (name, words)
    for other, other_words in WORDS.items():
        if other != name:
            assert not words & set(other_words), (name, other)


def test_the_family_comes_from_the_config_not_the_name(tiny_models: Path, tmp_path: Path) -> None:
    # The ViT + GPT-2 model in a folder named like BLIP's still loads as what it is.
    folder = tmp_path / "blip-image-captioning-base"
    shutil.copytree(tiny_models / "caption-vit-gpt2", folder)
    assert caption_family(ModelSpec(str(folder))) == "vision-encoder-decoder"
    pipeline = CaptionPipeline.load(ModelSpec(str(folder)), "cpu", torch.float32)
    assert set(caption(pipeline).split()) <= set(VIT_GPT2_WORDS)


def test_a_model_of_another_type_is_refused(tiny_models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "not-a-captioner"
    shutil.copytree(tiny_models / "segment-semantic", folder)
    with pytest.raises(ModelError, match="'segformer' model; visionq captions with"):
        CaptionPipeline.load(ModelSpec(str(folder)), "cpu", torch.float32)
    config = json.loads((tiny_models / "caption-vlm" / "config.json").read_text())
    assert config["model_type"] == "idefics3"


@pytest.mark.parametrize("name", FAMILIES)
def test_batched_equals_unbatched(captioners: dict[str, CaptionPipeline], name: str) -> None:
    pipeline = captioners[name]
    prompt = None if name == "caption/vlm" else "a picture of"
    images = [scene(80 + 10 * n, 60, seed=4 * n) for n in range(3)] + [scene(30, 100, seed=2)]  # sizes, colours
    if name == "caption/vlm":  # the tall image has fewer crops, so fewer image tokens: its row is left-padded
        lengths = pipeline.prepare(images, None)["attention_mask"].sum(dim=1).tolist()
        assert lengths[3] < lengths[0], lengths
    texts = set()
    for params in ({"prompt": None}, {"prompt": prompt, "num_beams": 2}):
        requests = [CaptionRequest(image="x", max_new_tokens=5, **params)] * len(images)
        alone = [run_one(pipeline, r, i, no_progress).output for r, i in zip(requests, images)]
        together = [result.output for result in pipeline.run_batch(requests, images, no_progress)]
        assert together == alone, name
        texts |= {a["text"] for a in alone}
    assert len(texts) > 2, "captions should depend on the image"


@pytest.mark.parametrize("name", PREFIX_FAMILIES)
def test_prefix_families_continue_the_prompt(captioners: dict[str, CaptionPipeline], name: str) -> None:
    for num_beams in (1, 2):
        text = caption(captioners[name], prompt="a picture of", num_beams=num_beams)
        assert text.startswith("a picture of") and len(text) > len("a picture of"), text


def test_the_vlm_prompt_is_an_instruction_it_answers(captioners: dict[str, CaptionPipeline]) -> None:
    pipeline = captioners["caption/vlm"]
    default = caption(pipeline)
    assert default == caption(pipeline, prompt=DEFAULT_INSTRUCTION)
    asked = caption(pipeline, prompt="What is the person holding?")
    assert "holding" not in asked  # the answer alone, not the instruction
    assert asked != default
    assert set(asked.split()) <= set(VLM_WORDS)


@pytest.mark.parametrize("name", FAMILIES)
def test_max_new_tokens_bounds_the_caption(captioners: dict[str, CaptionPipeline], name: str) -> None:
    for max_new_tokens in (1, 3):
        # Each tiny token is one word: at most max_new_tokens words.
        assert 1 <= len(caption(captioners[name], max_new_tokens=max_new_tokens).split()) <= max_new_tokens


@pytest.mark.parametrize("name", PREFIX_FAMILIES)
def test_prefix_families_refuse_what_the_decoder_cannot_hold(
    captioners: dict[str, CaptionPipeline], name: str
) -> None:
    pipeline = captioners[name]
    positions = pipeline.max_positions
    with pytest.raises(InvalidInput, match=rf"plus max_new_tokens 30 exceed the text decoder's limit of {positions}"):
        caption(pipeline, prompt="a " * positions, max_new_tokens=30)
    fits = "a picture of"
    used = pipeline.prompt_tokens(fits)  # the start token and the prompt's tokens
    with pytest.raises(InvalidInput, match=rf"prompt \({used} tokens\) plus max_new_tokens {positions - used + 1}"):
        caption(pipeline, prompt=fits, max_new_tokens=positions - used + 1)
    pipeline.check_inputs(CaptionRequest(image="x", prompt=fits, max_new_tokens=positions - used))


def test_blip_counts_its_start_token_in_place_of_cls(captioners: dict[str, CaptionPipeline]) -> None:
    assert captioners["caption/blip"].prompt_tokens("a picture of") == 4  # [DEC] a picture of
    assert captioners["caption/vit-gpt2"].prompt_tokens(None) == 1


def test_the_vlm_counts_the_image_tokens_too(captioners: dict[str, CaptionPipeline]) -> None:
    pipeline = captioners["caption/vlm"]
    text_only = pipeline.prompt_tokens(None)
    room = pipeline.max_positions - text_only
    pipeline.check_inputs(CaptionRequest(image="x", max_new_tokens=room))  # the text alone fits
    with pytest.raises(InvalidInput, match=rf"instruction and image \(\d+ tokens\) plus max_new_tokens {room} exceed "
                                           rf"the language model's limit of {pipeline.max_positions}"):
        caption(pipeline, max_new_tokens=room)
    with pytest.raises(InvalidInput, match="exceed the text decoder's limit"):
        caption(pipeline, max_new_tokens=room + 1)


def test_the_vlm_refuses_special_tokens_in_the_instruction(captioners: dict[str, CaptionPipeline]) -> None:
    with pytest.raises(InvalidInput, match=r"special tokens \['<image>'\]"):
        caption(captioners["caption/vlm"], prompt="Describe <image> please")


@pytest.mark.parametrize("name", PREFIX_FAMILIES)
def test_a_large_photo_is_decoded_at_the_side_the_image_processor_makes(
    captioners: dict[str, CaptionPipeline], name: str,
) -> None:
    pipeline = captioners[name]
    photo = encode(scene(1600, 1200), "JPEG")
    side = input_side(pipeline)
    full, scaled = decode_image(photo), decode_image(photo, min_side=side)
    assert side is not None and min(scaled.size) >= side and scaled.size[0] < full.size[0] // 4
    pixels_full, pixels_scaled = pipeline.pixels(full), pipeline.pixels(scaled)
    assert pixels_full.shape == pixels_scaled.shape and pixels_full.shape[-1] == side
    # What the model sees barely moves (normalised units; one grey level is ~0.016).
    assert (pixels_full - pixels_scaled).abs().mean().item() < 0.05


def test_the_vlm_decodes_whole_pictures(captioners: dict[str, CaptionPipeline]) -> None:
    # Its processor splits a large image into tiles by its longest edge: no single side to decode at.
    assert input_side(captioners["caption/vlm"]) is None
