"""segment: masks for text labels (CLIPSeg), or semantic classes (SegFormer) without labels."""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from tasks.schemas import SegmentRequest
from worker.loading import check_token_limit, check_tokenizer, load_model
from worker.pipelines.base import FileSlot, ModelSpec, PipelineResult, ProgressCallback

# Distinct, deterministic colours for the overlay (tab10-like).
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]
OVERLAY_OPACITY = 0.5


class SegmentPipeline:
    def __init__(self, prompted: Any, prompted_processor: Any, semantic: Any, semantic_processor: Any,
                 device: str, dtype: Any, prompted_spec: ModelSpec, semantic_spec: ModelSpec) -> None:
        self.prompted = prompted
        self.prompted_processor = prompted_processor
        self.semantic = semantic
        self.semantic_processor = semantic_processor
        self.device = device
        self.dtype = dtype
        self.prompted_label = prompted_spec.label
        self.semantic_label = semantic_spec.label
        self.model_label = f"{prompted_spec.label} + {semantic_spec.label}"
        self.max_label_tokens = min(
            prompted_processor.tokenizer.model_max_length, prompted.config.text_config.max_position_embeddings
        )

    @classmethod
    def load(cls, prompted: ModelSpec, semantic: ModelSpec, device: str, dtype: Any) -> SegmentPipeline:
        from transformers import (
            AutoImageProcessor, AutoModelForSemanticSegmentation, AutoProcessor, CLIPSegForImageSegmentation,
        )

        prompted_processor = load_model(AutoProcessor, prompted, "segment processor")
        prompted_model = load_model(CLIPSegForImageSegmentation, prompted, "segment", dtype=dtype)
        check_tokenizer(prompted_processor.tokenizer, prompted_model.config.text_config.vocab_size, prompted)
        semantic_processor = load_model(AutoImageProcessor, semantic, "semantic image processor")
        semantic_model = load_model(AutoModelForSemanticSegmentation, semantic, "semantic", dtype=dtype)
        return cls(prompted_model.to(device).eval(), prompted_processor, semantic_model.to(device).eval(),
                   semantic_processor, device, dtype, prompted, semantic)

    def warm_up(self) -> None:
        image = Image.new("RGB", (64, 64))
        self.run(SegmentRequest(image="warm-up", labels=["thing"]), image, lambda _: None)
        self.run(SegmentRequest(image="warm-up"), image, lambda _: None)

    def run(self, request: SegmentRequest, image: Image.Image | None, progress: ProgressCallback) -> PipelineResult:
        assert image is not None
        if request.labels:
            for i, label in enumerate(request.labels):
                check_token_limit(self.prompted_processor.tokenizer, label, self.max_label_tokens, f"labels[{i}]")
            masks = self._prompted_masks(image, request.labels, request.threshold)
            named = list(zip(request.labels, masks))
            model = self.prompted_label
        else:
            named = self._semantic_masks(image)
            model = self.semantic_label
        progress(1.0)
        return _result(image, named, model)

    def _prompted_masks(self, image: Image.Image, labels: list[str], threshold: float) -> list[np.ndarray]:
        import torch

        inputs = self.prompted_processor(
            text=labels, images=[image] * len(labels), padding=True, return_tensors="pt"
        ).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            logits = self.prompted(**inputs).logits
        logits = logits.reshape(len(labels), 1, *logits.shape[-2:]).float()
        # Back to the input's own size before thresholding, so masks line up with it.
        resized = torch.nn.functional.interpolate(logits, size=(image.height, image.width), mode="bilinear")
        return [m[0].cpu().numpy() > threshold for m in resized.sigmoid()]

    def _semantic_masks(self, image: Image.Image) -> list[tuple[str, np.ndarray]]:
        import torch

        inputs = self.semantic_processor(images=image, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            logits = self.semantic(**inputs).logits.float()
        resized = torch.nn.functional.interpolate(logits, size=(image.height, image.width), mode="bilinear")
        classes = resized.argmax(dim=1)[0].cpu().numpy()
        id2label = self.semantic.config.id2label
        found = [(id2label[int(c)], classes == c) for c in np.unique(classes)]
        return sorted(found, key=lambda item: -int(item[1].sum()))


def _result(image: Image.Image, named_masks: list[tuple[str, np.ndarray]], model: str) -> PipelineResult:
    segments, images = [], {}
    for n, (label, mask) in enumerate(named_masks):
        name = f"mask-{n}.png"
        images[name] = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
        segments.append({"label": label, "mask": FileSlot(name), "area": round(float(mask.mean()), 6)})
    images["overlay.png"] = _overlay(image, [mask for _, mask in named_masks])
    return PipelineResult(
        output={"segments": segments, "overlay": FileSlot("overlay.png")}, images=images, model=model
    )


def _overlay(image: Image.Image, masks: list[np.ndarray]) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32).copy()
    for n, mask in enumerate(masks):
        colour = np.array(PALETTE[n % len(PALETTE)], dtype=np.float32)
        pixels[mask] = pixels[mask] * (1 - OVERLAY_OPACITY) + colour * OVERLAY_OPACITY
    return Image.fromarray(pixels.round().astype(np.uint8), mode="RGB")
