"""inputs: what a large photo costs a caption job before the model, decoded whole or at the model's side.

A caption model sees its image processor's output (BLIP-base 384 px, ViT-GPT2 224 px),
whatever the photo's size. The worker decodes a large picture scaled down to about that
side (worker/images.py: JPEG's scaled decoding, then a box average); the baseline
decodes every pixel, as it did before. Per job, on a ~12 MP photo-like JPEG: the CPU
time (this thread's) of decode_image plus the image processor, the worker's own code
and the published models' own processor settings. No model weights are needed.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from bench.harness import Plan, Stack, bench_image
from bench.report import Row, ScenarioResult, median
from tasks.settings import Settings
from worker.images import decode_image
from worker.pipelines.caption import resized_side

NAME = "inputs"
PHOTO_SIDE = {"smoke": 1024}  # quick and full: 3456 (12 MP)
DEFAULT_PHOTO_SIDE = 3456
PHOTOS_PER_REPEAT = 3


def _processors() -> dict[str, Any]:
    from transformers import BlipImageProcessor, ViTImageProcessor

    # The defaults of these classes are the published checkpoints' settings (384 and 224 px).
    return {"caption, BLIP-base image processor": BlipImageProcessor(),
            "caption, ViT-GPT2 image processor": ViTImageProcessor()}


def run(stack: Stack, plan: Plan) -> ScenarioResult:
    """The stack is not used: no service takes part in decoding and preprocessing."""
    import torch

    torch.set_num_threads(1)  # as the workers (VISIONQ_TORCH_THREADS=1): all the CPU is this thread's
    side = PHOTO_SIDE.get(plan.mode, DEFAULT_PHOTO_SIDE)
    photo = bench_image(side)
    limits = Settings().limits
    rows, data = [], {}
    for case, processor in _processors().items():
        model_side = resized_side(processor)

        def job(min_side: int | None, processor: Any = processor) -> None:
            processor(images=decode_image(photo, limits, min_side), return_tensors="pt")

        job(model_side)  # untimed: lazy imports, first allocations
        scaled = [_cpu_ms(lambda: job(model_side)) for _ in range(plan.repeats)]
        whole = [_cpu_ms(lambda: job(None)) for _ in range(plan.repeats)]
        runs = f"{plan.repeats} x {PHOTOS_PER_REPEAT} photos"
        label = f"{case} ({model_side} px), {side}x{side} JPEG ({len(photo) // 1000} KB)"
        rows.append(Row(NAME, label, "CPU ms/job, decode + preprocess at the model's side", median(scaled),
                        "whole picture", median(whole), runs))
        data[case] = {"model_side": model_side, "scaled_ms": scaled, "whole_ms": whole}
    notes = [
        f"One {side}x{side} photo-like JPEG; CPU time of this thread per job (decode_image, then the "
        "image processor), median of the repeats. Decoded at the model's side: libjpeg decodes at 1/2, 1/4 or "
        "1/8 scale, keeping both sides at least the processor's, then a box average by a whole factor.",
    ]
    return ScenarioResult(NAME, rows, notes, [], data)


def _cpu_ms(job: Callable[[], None]) -> float:
    started = time.thread_time()
    for _ in range(PHOTOS_PER_REPEAT):
        job()
    return (time.thread_time() - started) * 1000 / PHOTOS_PER_REPEAT
