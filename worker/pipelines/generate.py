"""generate: prompt -> images, with a diffusers text-to-image pipeline (default SD-Turbo)."""
from __future__ import annotations

import secrets
from typing import Any

from tasks.schemas import GenerateRequest
from worker.loading import check_token_limit, check_tokenizer, load_model
from worker.pipelines.base import FileSlot, ModelSpec, PipelineResult, ProgressCallback


class GeneratePipeline:
    def __init__(self, pipe: Any, device: str, spec: ModelSpec) -> None:
        self.pipe = pipe
        self.device = device
        self.model_label = spec.label
        tokenizer = pipe.tokenizer
        self.max_prompt_tokens = min(
            tokenizer.model_max_length, pipe.text_encoder.config.max_position_embeddings
        )

    @classmethod
    def load(cls, spec: ModelSpec, device: str, dtype: Any) -> GeneratePipeline:
        from diffusers import AutoPipelineForText2Image

        # safety_checker: SD-Turbo ships none; for pipelines that do, filtering is the
        # caller's policy, not a silent black image.
        pipe = load_model(
            AutoPipelineForText2Image, spec, "generate", dtype=dtype,
            safety_checker=None, requires_safety_checker=False,
        )
        check_tokenizer(pipe.tokenizer, pipe.text_encoder.config.vocab_size, spec)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe.to(device), device, spec)

    def warm_up(self) -> None:
        self.run(GenerateRequest(prompt="warm up", width=64, height=64, steps=1, seed=0), None, lambda _: None)

    def run(self, request: GenerateRequest, image: Any, progress: ProgressCallback) -> PipelineResult:
        import torch

        # check inputs: reject, never truncate, a prompt the text encoder cannot see whole
        check_token_limit(self.pipe.tokenizer, request.prompt, self.max_prompt_tokens, "prompt")
        if request.negative_prompt:
            check_token_limit(self.pipe.tokenizer, request.negative_prompt, self.max_prompt_tokens, "negative_prompt")
        seed = secrets.randbelow(2**32) if request.seed is None else request.seed
        # One generator per image: image i depends on seed + i only, batched or not.
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(request.num_images)]

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            progress((step + 1) / request.steps)  # may raise JobCanceled: stops here
            return tensors

        with torch.inference_mode():
            result = self.pipe(
                prompt=[request.prompt] * request.num_images,
                # Without classifier-free guidance the negative prompt has no effect.
                negative_prompt=[request.negative_prompt] * request.num_images
                if request.negative_prompt and request.guidance_scale > 1 else None,
                width=request.width, height=request.height, num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale, generator=generators,
                callback_on_step_end=on_step_end, output_type="pil",
            )
        images = {f"output-{i}.png": img for i, img in enumerate(result.images)}
        return PipelineResult(output={"images": [FileSlot(name) for name in images], "seed": seed}, images=images)
