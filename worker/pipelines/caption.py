"""caption: image (+ optional prompt prefix) -> text, with a BLIP-style captioner."""
from __future__ import annotations

from typing import Any

from PIL import Image

from tasks.schemas import CaptionRequest
from tasks.errors import InvalidInput
from worker.loading import check_tokenizer, load_model, token_count
from worker.pipelines.base import ModelSpec, PipelineResult, ProgressCallback


class CaptionPipeline:
    def __init__(self, model: Any, processor: Any, device: str, dtype: Any, spec: ModelSpec) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.model_label = spec.label
        self.max_positions = model.config.text_config.max_position_embeddings

    @classmethod
    def load(cls, spec: ModelSpec, device: str, dtype: Any) -> CaptionPipeline:
        from transformers import AutoProcessor, BlipForConditionalGeneration

        processor = load_model(AutoProcessor, spec, "caption processor")
        model = load_model(BlipForConditionalGeneration, spec, "caption", dtype=dtype)
        check_tokenizer(processor.tokenizer, model.config.text_config.vocab_size, spec)
        return cls(model.to(device).eval(), processor, device, dtype, spec)

    def warm_up(self) -> None:
        self.run(CaptionRequest(image="warm-up", max_new_tokens=4), Image.new("RGB", (64, 64)), lambda _: None)

    def run(self, request: CaptionRequest, image: Image.Image | None, progress: ProgressCallback) -> PipelineResult:
        import torch

        assert image is not None
        # check inputs: the prompt and the new tokens must fit the decoder's positions
        prompt_tokens = token_count(self.processor.tokenizer, request.prompt) if request.prompt else 1
        if prompt_tokens + request.max_new_tokens > self.max_positions:
            raise InvalidInput(
                f"prompt ({prompt_tokens} tokens) plus max_new_tokens {request.max_new_tokens} exceed the "
                f"text decoder's limit of {self.max_positions} tokens"
            )
        # prepare
        inputs = self.processor(images=image, text=request.prompt, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        # run
        with torch.inference_mode():
            tokens = self.model.generate(
                **inputs, max_new_tokens=request.max_new_tokens, num_beams=request.num_beams
            )
        # build the result
        text = self.processor.batch_decode(tokens, skip_special_tokens=True)[0].strip()
        progress(1.0)
        return PipelineResult(output={"text": text})
