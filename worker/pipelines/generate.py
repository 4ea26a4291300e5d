"""generate: prompt -> images, with a diffusers text-to-image pipeline (default SD-Turbo)."""
from __future__ import annotations

import secrets
from typing import Any, Hashable

import torch
from diffusers import AutoPipelineForText2Image, DiffusionPipeline
from PIL import Image
from transformers import AutoTokenizer

from tasks.schemas import GenerateRequest
from worker.loading import check_token_limit, check_tokenizer, load_model, load_processor, text_token_limit
from worker.pipelines.base import FileSlot, ModelSpec, PipelineResult, ProgressCallback, no_progress, run_one

SEED_RANGE = 2**32


class GeneratePipeline:
    def __init__(self, pipe: DiffusionPipeline, spec: ModelSpec, device: str) -> None:
        self.pipe = pipe
        self.model_label = spec.label
        self.device = device
        self.max_prompt_tokens = text_token_limit(pipe.tokenizer, pipe.text_encoder.config.max_position_embeddings)

    @classmethod
    def load(cls, spec: ModelSpec, device: str, dtype: torch.dtype) -> GeneratePipeline:
        # The pipeline would load its tokenizer with CLIPTokenizer, which returns a
        # near-empty tokenizer when the files are missing; AutoTokenizer raises instead.
        tokenizer = load_processor(AutoTokenizer, spec, subfolder="tokenizer")
        # No safety checker: SD-Turbo ships none, and filtering is the caller's policy,
        # not a silently blacked-out image.
        pipe = load_model(
            AutoPipelineForText2Image, spec, tokenizer=tokenizer, dtype=dtype,
            safety_checker=None, requires_safety_checker=False,
        )
        check_tokenizer(pipe.tokenizer, pipe.text_encoder.config.vocab_size, spec)
        # The denoising loop has its own tqdm bar, deaf to the library-wide switch.
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe.to(device), spec, device)

    def warm_up(self) -> None:
        run_one(self, GenerateRequest(prompt="a watercolor fox", width=64, height=64, steps=1, seed=0), None,
                no_progress)

    def batch_key(self, request: GenerateRequest) -> Hashable | None:
        """None: each generation runs alone (its own size, steps and seeds; num_images batches within it)."""
        return None

    def run_batch(self, requests: list[GenerateRequest], images: list[Image.Image | None],
                  progress: ProgressCallback) -> list[PipelineResult]:
        return [self._run(request, progress) for request in requests]

    def _run(self, request: GenerateRequest, progress: ProgressCallback) -> PipelineResult:
        self.check_inputs(request)
        seed = secrets.randbelow(SEED_RANGE) if request.seed is None else request.seed
        images = self.generate(request, seed, progress)
        names = [f"output-{i}.png" for i in range(len(images))]
        return PipelineResult(
            output={"images": [FileSlot(name) for name in names], "seed": seed}, images=dict(zip(names, images))
        )

    def check_inputs(self, request: GenerateRequest) -> None:
        check_token_limit(self.pipe.tokenizer, request.prompt, self.max_prompt_tokens, "prompt")
        if request.negative_prompt:
            check_token_limit(self.pipe.tokenizer, request.negative_prompt, self.max_prompt_tokens, "negative_prompt")

    def generate(self, request: GenerateRequest, seed: int, progress: ProgressCallback) -> list[Image.Image]:
        # One generator per image, seeded seed + i: image i starts from the same noise alone
        # or in a batch (batched kernels may still round a pixel one level differently).
        # CPU generators give the same noise whatever the device.
        generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(request.num_images)]
        # The negative prompt only acts through classifier-free guidance, which
        # diffusers runs when guidance_scale > 1; below that it is ignored.
        negative = request.negative_prompt if request.guidance_scale > 1 else None

        def on_step_end(pipe: DiffusionPipeline, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if step + 1 < pipe.num_timesteps:  # the last step's 1.0 is the caller's checkpoint (run_one)
                progress((step + 1) / pipe.num_timesteps)  # raises JobCanceled to stop here
            return tensors

        with torch.inference_mode():
            return self.pipe(
                prompt=[request.prompt] * request.num_images,
                negative_prompt=None if negative is None else [negative] * request.num_images,
                width=request.width, height=request.height, num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale, generator=generators,
                callback_on_step_end=on_step_end, output_type="pil",
            ).images
