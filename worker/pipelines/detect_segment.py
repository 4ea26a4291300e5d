"""segment with boxes: an open-vocabulary detector (OWLv2) finds each label's best box, SAM masks the box.

One segment per label, like CLIPSeg's, with two more fields: `box` ([x0, y0, x1, y1]
in input pixels) and `score` (the detector's confidence, 0..1). `threshold` applies to
SAM's mask probability. The detector runs once for a whole batch; SAM runs once per
image with all of its boxes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable

import numpy as np
import torch
from PIL import Image
from transformers import AutoModelForMaskGeneration, AutoModelForZeroShotObjectDetection, AutoProcessor

from tasks.errors import InvalidInput
from tasks.schemas import SegmentRequest
from worker.loading import check_token_limit, check_tokenizer, load_model, load_processor, text_token_limit
from worker.pipelines.base import ModelSpec, PipelineResult, ProgressCallback, no_progress, run_one
from worker.pipelines.segment import segment_result

# A models-dir folder of this family holds its two models side by side.
DETECTOR_FOLDER = "detector"
SEGMENTER_FOLDER = "segmenter"


def is_detect_segment_folder(spec: ModelSpec) -> bool:
    return (Path(spec.model_id) / DETECTOR_FOLDER).is_dir() and (Path(spec.model_id) / SEGMENTER_FOLDER).is_dir()


class DetectSegmentPipeline:
    def __init__(self, detector: Any, detector_processor: Any, segmenter: Any, segmenter_processor: Any,
                 label: str, device: str, dtype: torch.dtype) -> None:
        self.detector = detector
        self.detector_processor = detector_processor
        self.segmenter = segmenter
        self.segmenter_processor = segmenter_processor
        self.model_label = label
        self.device = device
        self.dtype = dtype
        self.max_label_tokens = text_token_limit(
            detector_processor.tokenizer, detector.config.text_config.max_position_embeddings
        )

    @classmethod
    def load(cls, detector: ModelSpec, segmenter: ModelSpec, device: str, dtype: torch.dtype) -> DetectSegmentPipeline:
        detector_processor = load_processor(AutoProcessor, detector)
        detector_model = load_model(AutoModelForZeroShotObjectDetection, detector, dtype=dtype)
        check_tokenizer(detector_processor.tokenizer, detector_model.config.text_config.vocab_size, detector)
        segmenter_processor = load_processor(AutoProcessor, segmenter)
        segmenter_model = load_model(AutoModelForMaskGeneration, segmenter, dtype=dtype)
        return cls(detector_model.to(device).eval(), detector_processor, segmenter_model.to(device).eval(),
                   segmenter_processor, f"{detector.label} + {segmenter.label}", device, dtype)

    @classmethod
    def load_folder(cls, spec: ModelSpec, device: str, dtype: torch.dtype) -> DetectSegmentPipeline:
        """A folder holding `detector/` and `segmenter/` (what `visionq models tiny` writes)."""
        folder = Path(spec.model_id)
        return cls.load(ModelSpec(str(folder / DETECTOR_FOLDER)), ModelSpec(str(folder / SEGMENTER_FOLDER)),
                        device, dtype)

    def warm_up(self) -> None:
        image = Image.new("RGB", (64, 48), (120, 160, 200))
        run_one(self, SegmentRequest(image="warm-up", labels=["sky", "a red car"]), image, no_progress)

    def batch_key(self, request: SegmentRequest) -> Hashable:
        return "prompted"

    def run_batch(self, requests: list[SegmentRequest], images: list[Image.Image | None],
                  progress: ProgressCallback) -> list[PipelineResult]:
        if any(image is None for image in images):
            raise InvalidInput("segment needs an image")
        for request in requests:
            if request.labels is None:
                raise InvalidInput(f"segment model {self.model_label!r} needs labels: it detects what they name")
            for n, label in enumerate(request.labels):
                check_token_limit(self.detector_processor.tokenizer, label, self.max_label_tokens, f"labels[{n}]")
        detections = self.detect(images, [request.labels for request in requests])
        results = []
        for request, image, (boxes, scores) in zip(requests, images, detections):
            masks = self.masks(image, boxes, request.threshold)
            extras = [{"box": [round(v, 2) for v in box], "score": round(score, 6)}
                      for box, score in zip(boxes, scores)]
            results.append(segment_result(image, list(zip(request.labels, masks)), self.model_label, extras))
        return results

    def detect(self, images: list[Image.Image], labels: list[list[str]]) -> list[tuple[list[list[float]], list[float]]]:
        """Per image, per label: the best box in input pixels and its score."""
        # Queries pad to the text encoder's length (the processor's default), each image's list alike.
        inputs = self.detector_processor(text=labels, images=images, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            outputs = self.detector(**inputs)
        found = []
        for n, (image, own) in enumerate(zip(images, labels)):
            logits = outputs.logits[n, :, :len(own)].float()  # (patches, queries); queries past own are padding
            best = logits.argmax(dim=0)
            scores = logits.gather(0, best[None])[0].sigmoid().tolist()
            found.append(([_pixel_box(outputs.pred_boxes[n, p].float(), image.size) for p in best.tolist()], scores))
        return found

    def masks(self, image: Image.Image, boxes: list[list[float]], threshold: float) -> list[np.ndarray]:
        inputs = self.segmenter_processor(images=[image], input_boxes=[boxes], return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            outputs = self.segmenter(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"].to(self.dtype),
                                     multimask_output=False)
        logits = self.segmenter_processor.post_process_masks(
            outputs.pred_masks.float().cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu(),
            binarize=False,
        )[0]  # (boxes, 1, height, width)
        return [(mask[0].sigmoid() > threshold).numpy() for mask in logits]


def _pixel_box(box: torch.Tensor, size: tuple[int, int]) -> list[float]:
    """OWLv2's (cx, cy, w, h) box, relative to the image padded to a square, as clipped input pixels."""
    width, height = size
    side = max(width, height)  # OWLv2 pads the image at the bottom and right to a square
    cx, cy, w, h = (box * side).tolist()
    x0, x1 = sorted(min(max(x, 0.0), float(width)) for x in (cx - w / 2, cx + w / 2))
    y0, y1 = sorted(min(max(y, 0.0), float(height)) for y in (cy - h / 2, cy + h / 2))
    return [x0, y0, x1, y1]
