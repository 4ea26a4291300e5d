"""inputs: what a large photo costs a job before the model: decode and image processor, per job.

A caption or segment model sees its image processor's output (BLIP-base 384 px, ViT-GPT2
224 px, CLIPSeg 352 px, SegFormer 512 px), whatever the photo's size. A caption worker
decodes a large picture scaled down to about that side (worker/images.py: JPEG's scaled
decoding, then a box average); a segment worker decodes it whole (masks and overlay are
drawn at the input's size) and gives the processor a box-averaged copy. The baseline
decodes and processes every pixel, as the workers did before. Per job, on a ~12 MP
photo-like JPEG: the CPU time (this thread's) of decode_image and the image processor,
with the worker's own code and the published models' processor settings (no weights).
"""
from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable

from bench.harness import Plan, Stack, bench_image
from bench.report import Row, ScenarioResult, median
from tasks.limits import Limits
from tasks.settings import Settings
from worker.images import decode_image, reduced
from worker.pipelines.base import resized_side

NAME = "inputs"
PHOTO_SIDE = {"smoke": 1024}  # quick and full: 3456 (12 MP)
DEFAULT_PHOTO_SIDE = 3456
PHOTOS_PER_REPEAT = 3


def _processors() -> dict[str, tuple[Any, bool]]:
    """Case -> (the published model's image processor, whether its kind decodes the picture whole)."""
    from transformers import BlipImageProcessor, SegformerImageProcessor, ViTImageProcessor
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    # As bench/fullsize.py builds them: the published checkpoints' preprocessor settings.
    return {
        "caption, BLIP-base image processor": (BlipImageProcessor(), False),
        "caption, ViT-GPT2 image processor": (ViTImageProcessor(), False),
        "segment, CLIPSeg image processor": (ViTImageProcessor(
            size={"height": 352, "width": 352}, image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD,
        ), True),
        "segment, SegFormer image processor": (SegformerImageProcessor(size={"height": 512, "width": 512}), True),
    }


def run(stack: Stack, plan: Plan) -> ScenarioResult:
    """The stack is not used: no service takes part in decoding and preprocessing."""
    import torch

    torch.set_num_threads(1)  # as the workers (VISIONQ_TORCH_THREADS=1): all the CPU is this thread's
    side = PHOTO_SIDE.get(plan.mode, DEFAULT_PHOTO_SIDE)
    photo = bench_image(side)
    limits = Settings().limits
    rows, data = [], {}
    for case, (processor, whole_picture) in _processors().items():
        model_side = resized_side(processor)

        scaled = partial(_preprocess, processor, photo, limits, model_side, whole_picture)
        whole = partial(_preprocess, processor, photo, limits, None, whole_picture)

        scaled()  # untimed: lazy imports, first allocations
        scaled_ms = [_cpu_ms(scaled) for _ in range(plan.repeats)]
        whole_ms = [_cpu_ms(whole) for _ in range(plan.repeats)]
        how = "decode whole + preprocess a copy at the model's side" if whole_picture else \
            "decode + preprocess at the model's side"
        rows.append(Row(NAME, f"{case} ({model_side} px), {side}x{side} JPEG ({len(photo) // 1000} KB)",
                        f"CPU ms/job, {how}", median(scaled_ms), "whole picture", median(whole_ms),
                        f"{plan.repeats} x {PHOTOS_PER_REPEAT} photos"))
        data[case] = {"model_side": model_side, "whole_picture": whole_picture, "scaled_ms": scaled_ms,
                      "whole_ms": whole_ms}
    notes = [
        f"One {side}x{side} photo-like JPEG; CPU time of this thread per job (decode_image, then the image "
        "processor), median of the repeats. Caption decodes at the model's side: libjpeg decodes at 1/2, 1/4 or "
        "1/8 scale, keeping both sides at least the processor's, then a box average by a whole factor. Segment "
        "decodes the whole picture (its masks and overlay are at the input's size) and box-averages a copy for "
        "the processor.",
    ]
    return ScenarioResult(NAME, rows, notes, [], data)


def _preprocess(processor: Any, photo: bytes, limits: Limits, side: int | None, whole_picture: bool) -> None:
    """What the worker does before the model (worker/runtime.py, the pipelines' preprocess);
    side None: every pixel decoded and processed, as before."""
    if side is None:
        image = decode_image(photo, limits)
    elif whole_picture:
        image = reduced(decode_image(photo, limits), side)
    else:
        image = decode_image(photo, limits, side)
    processor(images=image, return_tensors="pt")


def _cpu_ms(job: Callable[[], None]) -> float:
    started = time.thread_time()
    for _ in range(PHOTOS_PER_REPEAT):
        job()
    return (time.thread_time() - started) * 1000 / PHOTOS_PER_REPEAT
