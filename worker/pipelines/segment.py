"""segment: one mask per text label (CLIPSeg), or one per class present (SegFormer) without labels."""
from __future__ import annotations

import colorsys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoImageProcessor, AutoModelForSemanticSegmentation, AutoProcessor, CLIPSegForImageSegmentation,
    BaseImageProcessor, PreTrainedModel, ProcessorMixin,
)

from tasks.errors import InvalidInput
from tasks.schemas import SegmentRequest
from worker.loading import check_token_limit, check_tokenizer, load_model, load_processor, text_token_limit
from worker.pipelines.base import FileSlot, ModelSpec, PipelineResult, ProgressCallback

OVERLAY_OPACITY = 0.5
# Semantic logits are upsampled to at most this side before the argmax, then the class
# map is scaled to the input with nearest neighbours: upsampling all classes (150 for
# ADE20K) to a 40 Mpx input would need tens of GB, for detail the model never had
# (SegFormer predicts at 1/4 of its 512 px input).
SEMANTIC_WORK_SIDE = 512


class SegmentPipeline:
    def __init__(self, prompted: CLIPSegForImageSegmentation, prompted_processor: ProcessorMixin,
                 semantic: PreTrainedModel, semantic_processor: BaseImageProcessor, prompted_spec: ModelSpec,
                 semantic_spec: ModelSpec, device: str, dtype: torch.dtype) -> None:
        self.prompted = prompted
        self.prompted_processor = prompted_processor
        self.semantic = semantic
        self.semantic_processor = semantic_processor
        self.prompted_label = prompted_spec.label
        self.semantic_label = semantic_spec.label
        self.model_label = f"{prompted_spec.label} + {semantic_spec.label}"
        self.device = device
        self.dtype = dtype
        self.max_label_tokens = text_token_limit(
            prompted_processor.tokenizer, prompted.config.text_config.max_position_embeddings
        )

    @classmethod
    def load(cls, prompted: ModelSpec, semantic: ModelSpec, device: str, dtype: torch.dtype) -> SegmentPipeline:
        prompted_processor = load_processor(AutoProcessor, prompted)
        prompted_model = load_model(CLIPSegForImageSegmentation, prompted, dtype=dtype)
        check_tokenizer(prompted_processor.tokenizer, prompted_model.config.text_config.vocab_size, prompted)
        semantic_processor = load_processor(AutoImageProcessor, semantic)
        semantic_model = load_model(AutoModelForSemanticSegmentation, semantic, dtype=dtype)
        return cls(
            prompted_model.to(device).eval(), prompted_processor, semantic_model.to(device).eval(),
            semantic_processor, prompted, semantic, device, dtype,
        )

    def warm_up(self) -> None:
        image = Image.new("RGB", (64, 48), (120, 160, 200))
        self.run(SegmentRequest(image="warm-up", labels=["sky", "a red car"]), image, lambda _: None)
        self.run(SegmentRequest(image="warm-up"), image, lambda _: None)

    def run(self, request: SegmentRequest, image: Image.Image | None, progress: ProgressCallback) -> PipelineResult:
        if image is None:
            raise InvalidInput("segment needs an image")
        if request.labels is None:
            named_masks = self.semantic_masks(image)
            model = self.semantic_label
        else:
            self.check_labels(request.labels)
            logits = self.prompted_logits(image, request.labels)
            named_masks = list(zip(request.labels, _threshold_masks(logits, image.size, request.threshold)))
            model = self.prompted_label
        progress(1.0)
        return _result(image, named_masks, model)

    def batch_key(self, request: SegmentRequest) -> str:
        """Prompted jobs batch with prompted ones, semantic with semantic."""
        return "semantic" if request.labels is None else "prompted"

    def run_batch(self, requests: list[SegmentRequest], images: list[Image.Image]) -> list[PipelineResult]:
        """Jobs with one batch_key, as one forward pass (all image/label pairs together)."""
        if requests[0].labels is None:
            inputs = self.semantic_processor(images=images, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                logits = self.semantic(pixel_values=inputs["pixel_values"].to(self.dtype)).logits
            return [_result(image, self._present_classes(_class_map(l, image.size)), self.semantic_label)
                    for image, l in zip(images, logits)]
        for request in requests:
            self.check_labels(request.labels)
        pairs = [(image, label) for request, image in zip(requests, images) for label in request.labels]
        inputs = self.prompted_processor(
            text=[label for _, label in pairs], images=[image for image, _ in pairs], padding=True,
            return_tensors="pt",
        ).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            logits = self.prompted(**inputs).logits
        logits = logits.reshape(len(pairs), *logits.shape[-2:])
        results, offset = [], 0
        for request, image in zip(requests, images):
            own = logits[offset:offset + len(request.labels)]
            offset += len(request.labels)
            masks = _threshold_masks(own, image.size, request.threshold)
            results.append(_result(image, list(zip(request.labels, masks)), self.prompted_label))
        return results

    def check_labels(self, labels: list[str]) -> None:
        for n, label in enumerate(labels):
            check_token_limit(self.prompted_processor.tokenizer, label, self.max_label_tokens, f"labels[{n}]")

    def prompted_logits(self, image: Image.Image, labels: list[str]) -> torch.Tensor:
        """CLIPSeg logits, one (h, w) map per label, at the model's own resolution."""
        inputs = self.prompted_processor(
            text=labels, images=[image] * len(labels), padding=True, return_tensors="pt"
        ).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            logits = self.prompted(**inputs).logits
        return logits.reshape(len(labels), *logits.shape[-2:])

    def semantic_masks(self, image: Image.Image) -> list[tuple[str, np.ndarray]]:
        """(class name, mask) for every class present, largest first."""
        inputs = self.semantic_processor(images=image, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            logits = self.semantic(pixel_values=inputs["pixel_values"].to(self.dtype)).logits
        return self._present_classes(_class_map(logits[0], image.size))

    def _present_classes(self, classes: np.ndarray) -> list[tuple[str, np.ndarray]]:
        id2label = self.semantic.config.id2label
        present = [(id2label[int(c)], classes == c) for c in np.unique(classes)]
        return sorted(present, key=lambda item: -int(item[1].sum()))


def _threshold_masks(logits: torch.Tensor, size: tuple[int, int], threshold: float) -> list[np.ndarray]:
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


def _result(image: Image.Image, named_masks: list[tuple[str, np.ndarray]], model: str) -> PipelineResult:
    segments, images = [], {}
    for n, (label, mask) in enumerate(named_masks):
        name = f"mask-{n}.png"
        images[name] = Image.fromarray(mask.astype(np.uint8) * 255)  # mode "L"
        segments.append({"label": label, "mask": FileSlot(name), "area": float(mask.mean())})
    images["overlay.png"] = _overlay(image, [images[f"mask-{n}.png"] for n in range(len(named_masks))])
    return PipelineResult(
        output={"segments": segments, "overlay": FileSlot("overlay.png")}, images=images, model=model
    )


def _overlay(image: Image.Image, masks: list[Image.Image]) -> Image.Image:
    overlay = image.copy()
    for n, mask in enumerate(masks):
        tinted = Image.blend(overlay, Image.new("RGB", overlay.size, palette_colour(n)), OVERLAY_OPACITY)
        overlay.paste(tinted, mask=mask)
    return overlay


def palette_colour(n: int) -> tuple[int, int, int]:
    """The n-th overlay colour: hues a golden angle apart stay distinct for any number of masks."""
    red, green, blue = colorsys.hsv_to_rgb((n * 0.6180339887) % 1.0, 0.85, 0.95)
    return round(red * 255), round(green * 255), round(blue * 255)
