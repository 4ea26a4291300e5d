"""segment: one mask per text label (CLIPSeg), or one per class present (SegFormer) without labels."""
from __future__ import annotations

import colorsys
import copy
import functools
from typing import Hashable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation, AutoProcessor, CLIPSegForImageSegmentation,
    BaseImageProcessor, PreTrainedModel, ProcessorMixin,
)

from tasks.errors import InvalidInput
from tasks.schemas import SegmentRequest
from worker.images import reduced
from worker.loading import check_token_limit, check_tokenizer, load_model, load_processor, text_token_limit
from worker.pipelines.base import (
    FileSlot, ModelSpec, PipelineResult, ProgressCallback, no_progress, resized_side, run_one, run_parts,
)

OVERLAY_OPACITY = 0.5
# Semantic logits are upsampled to at most this side before the argmax, then the class
# map is scaled to the input with nearest neighbours: upsampling all classes (150 for
# ADE20K) to a 40 Mpx input would need tens of GB, for detail the model never had
# (SegFormer predicts at 1/4 of its 512 px input).
SEMANTIC_WORK_SIDE = 512


class SegmentPipeline:
    """Masks for text labels (CLIPSeg) and, without labels, one per class present (a semantic model).

    The kind's default holds both; a pipeline loaded for one model (`load_one`) holds
    one, and refuses the jobs it cannot serve as invalid input.
    """

    def __init__(self, prompted: CLIPSegForImageSegmentation | None, prompted_processor: ProcessorMixin | None,
                 semantic: PreTrainedModel | None, semantic_processor: BaseImageProcessor | None,
                 prompted_spec: ModelSpec | None, semantic_spec: ModelSpec | None, device: str,
                 dtype: torch.dtype) -> None:
        self.prompted = prompted
        self.prompted_processor = prompted_processor
        self.semantic = semantic
        self.semantic_processor = semantic_processor
        self.prompted_label = prompted_spec.label if prompted_spec else None
        self.semantic_label = semantic_spec.label if semantic_spec else None
        self.model_label = " + ".join(label for label in (self.prompted_label, self.semantic_label) if label)
        self.device = device
        self.dtype = dtype
        self.max_label_tokens = 0 if prompted is None else text_token_limit(
            prompted_processor.tokenizer, prompted.config.text_config.max_position_embeddings
        )
        # The sides the image processors resize to: each job's processor input is its image
        # box-averaged toward that side first (preprocess).
        self.prompted_side = None if prompted is None else resized_side(prompted_processor.image_processor)
        self.semantic_side = None if semantic is None else resized_side(semantic_processor)

    @classmethod
    def load(cls, prompted: ModelSpec | None, semantic: ModelSpec | None, device: str,
             dtype: torch.dtype) -> SegmentPipeline:
        prompted_model = prompted_processor = semantic_model = semantic_processor = None
        if prompted is not None:
            prompted_processor = load_processor(AutoProcessor, prompted)
            prompted_model = load_model(CLIPSegForImageSegmentation, prompted, dtype=dtype).to(device).eval()
            check_tokenizer(prompted_processor.tokenizer, prompted_model.config.text_config.vocab_size, prompted)
        if semantic is not None:
            semantic_processor = load_processor(AutoImageProcessor, semantic)
            semantic_model = load_model(AutoModelForSemanticSegmentation, semantic, dtype=dtype).to(device).eval()
        return cls(prompted_model, prompted_processor, semantic_model, semantic_processor, prompted, semantic,
                   device, dtype)

    @classmethod
    def load_one(cls, spec: ModelSpec, device: str, dtype: torch.dtype) -> SegmentPipeline:
        """One model, prompted (CLIPSeg) or semantic (anything else), by its config's model_type."""
        if load_processor(AutoConfig, spec).model_type == "clipseg":
            return cls.load(spec, None, device, dtype)
        return cls.load(None, spec, device, dtype)

    def semantic_only(self) -> SegmentPipeline:
        """This pipeline's semantic model alone, sharing its weights: it serves the jobs that name
        that model (`segment/segformer`) on a worker that loaded segment's default, refusing labels
        as a worker serving that model alone does."""
        if self.semantic is None:
            raise ValueError(f"segment model {self.model_label!r} holds no semantic model")
        view = copy.copy(self)
        view.prompted = view.prompted_processor = view.prompted_label = view.prompted_side = None
        view.max_label_tokens = 0
        view.model_label = self.semantic_label
        return view

    def warm_up(self) -> None:
        image = Image.new("RGB", (64, 48), (120, 160, 200))
        if self.prompted is not None:
            run_one(self, SegmentRequest(image="warm-up", labels=["sky", "a red car"]), image, no_progress)
        if self.semantic is not None:
            run_one(self, SegmentRequest(image="warm-up"), image, no_progress)

    def batch_key(self, request: SegmentRequest) -> Hashable:
        """Prompted jobs batch with prompted ones, semantic with semantic."""
        return "semantic" if request.labels is None else "prompted"

    def run_batch(self, requests: list[SegmentRequest], images: list[Image.Image | None],
                  progress: ProgressCallback) -> list[PipelineResult]:
        """Jobs with one batch_key, as one forward pass (all image/label pairs together)."""
        return run_parts(self, requests, images, progress)

    def preprocess(self, request: SegmentRequest, image: Image.Image | None) -> torch.Tensor:
        """Per job, on its own task thread (worker/pipelines/base.py): its checks, and its image as
        the model's pixels, made from a copy box-averaged toward the processor's side: the model
        thread used to process whole images, ~95 ms for a 12 MP photo before its forward pass.
        Its masks and overlay are drawn at the image's own size (`finish`)."""
        if image is None:
            raise InvalidInput("segment needs an image")
        if request.labels is None:
            if self.semantic is None:
                raise InvalidInput(f"segment model {self.model_label!r} needs labels: it segments by text")
            processor, side = self.semantic_processor, self.semantic_side
        else:
            if self.prompted is None:
                raise InvalidInput(f"segment model {self.model_label!r} takes no labels: it finds its own classes")
            self.check_labels(request.labels)
            # Each image once, however many labels: the CLIPSeg processor would resize it per label.
            processor, side = self.prompted_processor.image_processor, self.prompted_side
        small = image if side is None else reduced(image, side)
        return processor(images=small, return_tensors="pt")["pixel_values"]

    def infer_batch(self, requests: list[SegmentRequest], pixels: list[torch.Tensor],
                    progress: ProgressCallback) -> list[torch.Tensor]:
        """run_batch's forward pass, on what `preprocess` returned: each job's logits.
        Its masks and overlay are left to `finish` (worker/pipelines/base.py): they were most of a
        batched CLIPSeg job's time on a CPU."""
        batch = torch.cat(pixels).to(self.device, self.dtype)
        if requests[0].labels is None:
            with torch.inference_mode():
                logits = self.semantic(pixel_values=batch).logits
            return list(logits)
        labels = [label for request in requests for label in request.labels]
        text = self.prompted_processor.tokenizer(labels, padding=True, return_tensors="pt").to(self.device)
        repeats = torch.tensor([len(request.labels) for request in requests], device=batch.device)
        batch = batch.repeat_interleave(repeats, dim=0)
        with torch.inference_mode():
            logits = self.prompted(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                                   pixel_values=batch).logits
        logits = logits.reshape(len(labels), *logits.shape[-2:])
        return list(logits.split([len(request.labels) for request in requests]))

    def finish(self, request: SegmentRequest, image: Image.Image, logits: torch.Tensor) -> PipelineResult:
        """The job's masks and overlay, at its image's size, from its share of the logits."""
        if request.labels is None:
            return segment_result(image, self._present_classes(_class_map(logits, image.size)), self.semantic_label)
        masks = threshold_masks(logits, image.size, request.threshold)
        return segment_result(image, list(zip(request.labels, masks)), self.prompted_label)

    def check_labels(self, labels: list[str]) -> None:
        for n, label in enumerate(labels):
            check_token_limit(self.prompted_processor.tokenizer, label, self.max_label_tokens, f"labels[{n}]")

    def _present_classes(self, classes: np.ndarray) -> list[tuple[str, np.ndarray]]:
        id2label = self.semantic.config.id2label
        present = [(id2label[int(c)], classes == c) for c in np.unique(classes)]
        return sorted(present, key=lambda item: -int(item[1].sum()))


def threshold_masks(logits: torch.Tensor, size: tuple[int, int], threshold: float) -> list[np.ndarray]:
    width, height = size
    masks = []
    for label_logits in logits:  # one label at a time: a full-size float map each, not all at once
        # Resize the logits, not the mask, so that the edges follow the input's own pixels.
        resized = F.interpolate(label_logits[None, None].float(), size=(height, width), mode="bilinear")
        masks.append((resized[0, 0].sigmoid() > threshold).cpu().numpy())
    return masks


def _class_map(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The most likely class of every input pixel, from (classes, h, w) logits."""
    width, height = size
    scale = min(1.0, SEMANTIC_WORK_SIDE / max(width, height))
    work_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = F.interpolate(logits[None].float(), size=work_size, mode="bilinear")
    classes = resized[0].argmax(dim=0).to(torch.int32).cpu().numpy()
    if classes.shape != (height, width):
        classes = np.asarray(Image.fromarray(classes).resize((width, height), Image.NEAREST))
    return classes


def segment_result(image: Image.Image, named_masks: list[tuple[str, np.ndarray]], model: str,
                   extras: list[dict] | None = None) -> PipelineResult:
    """The segment output: per mask its label, file and area (plus `extras`, e.g. box and score), and the overlay."""
    segments, images = [], {}
    for n, (label, mask) in enumerate(named_masks):
        name = f"mask-{n}.png"
        images[name] = Image.fromarray(mask.astype(np.uint8) * 255)  # mode "L"
        segments.append({"label": label, "mask": FileSlot(name), "area": float(mask.mean()),
                         **(extras[n] if extras else {})})
    images["overlay.png"] = _overlay(image, [mask for _, mask in named_masks])
    return PipelineResult(
        output={"segments": segments, "overlay": FileSlot("overlay.png")}, images=images, model=model
    )


def _overlay(image: Image.Image, masks: list[np.ndarray]) -> Image.Image:
    """`image` with each mask's pixels tinted toward its palette colour, later masks over earlier ones.

    The pixels of blending the whole image with a solid colour and pasting that through an 8-bit
    mask, in 0.8 ms instead of 2.3 for two masks at 512 px: the tint is a lookup table, and a
    1-bit mask copies pixels instead of weighing every one."""
    overlay = image.convert("RGB")
    for n, mask in enumerate(masks):
        tinted = overlay.point(_tint_table(n))
        overlay.paste(tinted, mask=Image.fromarray(np.asarray(mask, dtype=bool)))  # mode "1"
    return overlay


@functools.lru_cache(maxsize=256)  # a semantic model has up to ~150 classes
def _tint_table(n: int) -> tuple[int, ...]:
    """Per band, every value moved OVERLAY_OPACITY of the way to the n-th palette colour, as
    Image.blend computes it. Cached: built in Python, it cost 0.1 ms per mask of every job."""
    colour = palette_colour(n)
    return tuple(int(value + OVERLAY_OPACITY * (channel - value)) for channel in colour for value in range(256))


def palette_colour(n: int) -> tuple[int, int, int]:
    """The n-th overlay colour: hues a golden angle apart stay distinct for any number of masks."""
    red, green, blue = colorsys.hsv_to_rgb((n * 0.6180339887) % 1.0, 0.85, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)
