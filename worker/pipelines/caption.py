"""caption: image (+ optional prompt the caption continues) -> text, with BLIP."""
from __future__ import annotations

import torch
from PIL import Image
from transformers import AutoProcessor, BlipForConditionalGeneration, ProcessorMixin

from tasks.errors import InvalidInput
from tasks.schemas import CaptionRequest
from worker.loading import check_tokenizer, count_tokens, load_model, load_processor
from worker.pipelines.base import ModelSpec, PipelineResult, ProgressCallback


class CaptionPipeline:
    def __init__(self, model: BlipForConditionalGeneration, processor: ProcessorMixin, spec: ModelSpec,
                 device: str, dtype: torch.dtype) -> None:
        self.model = model
        self.processor = processor
        self.model_label = spec.label
        self.device = device
        self.dtype = dtype
        # The prompt and the generated tokens share the decoder's positions.
        self.max_positions: int = model.config.text_config.max_position_embeddings

    @classmethod
    def load(cls, spec: ModelSpec, device: str, dtype: torch.dtype) -> CaptionPipeline:
        processor = load_processor(AutoProcessor, spec)
        model = load_model(BlipForConditionalGeneration, spec, dtype=dtype)
        check_tokenizer(processor.tokenizer, model.config.text_config.vocab_size, spec)
        return cls(model.to(device).eval(), processor, spec, device, dtype)

    def warm_up(self) -> None:
        request = CaptionRequest(image="warm-up", prompt="a picture of", max_new_tokens=4)
        self.run(request, Image.new("RGB", (64, 64), (120, 160, 200)), lambda _: None)

    def run(self, request: CaptionRequest, image: Image.Image | None, progress: ProgressCallback) -> PipelineResult:
        if image is None:
            raise InvalidInput("caption needs an image")
        self.check_inputs(request)
        inputs = self.prepare([image], request.prompt)
        tokens = self.generate(inputs, request.max_new_tokens, request.num_beams)
        text = self.processor.tokenizer.decode(tokens[0], skip_special_tokens=True).strip()
        progress(1.0)
        return PipelineResult(output={"text": text})

    def batch_key(self, request: CaptionRequest) -> tuple:
        """Jobs with equal keys can share one generate() call."""
        return (request.prompt, request.max_new_tokens, request.num_beams)

    def run_batch(self, requests: list[CaptionRequest], images: list[Image.Image]) -> list[PipelineResult]:
        """Jobs with one batch_key, as one forward pass."""
        for request in requests:
            self.check_inputs(request)
        first = requests[0]
        tokens = self.generate(self.prepare(images, first.prompt), first.max_new_tokens, first.num_beams)
        texts = self.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return [PipelineResult(output={"text": text.strip()}) for text in texts]

    def check_inputs(self, request: CaptionRequest) -> None:
        # BLIP replaces [CLS] by its start token and drops the final [SEP]: one token fewer.
        prompt_tokens = count_tokens(self.processor.tokenizer, request.prompt) - 1 if request.prompt else 1
        if prompt_tokens + request.max_new_tokens > self.max_positions:
            raise InvalidInput(
                f"prompt ({prompt_tokens} tokens) plus max_new_tokens {request.max_new_tokens} exceed the "
                f"text decoder's limit of {self.max_positions} tokens"
            )

    def prepare(self, images: list[Image.Image], prompt: str | None) -> dict[str, torch.Tensor]:
        """Model inputs for images that share one prompt (or none)."""
        text = None if prompt is None else [prompt] * len(images)
        inputs = self.processor(images=images, text=text, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return dict(inputs)

    def generate(self, inputs: dict[str, torch.Tensor], max_new_tokens: int, num_beams: int) -> torch.Tensor:
        """Token ids, prompt included, one row per image."""
        with torch.inference_mode():
            return self.model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams)
