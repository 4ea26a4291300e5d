"""caption: image (+ optional prompt) -> text, with one of three model families.

The family comes from the model's own config (`model_type`), never from its name:
- BLIP (`blip`) and a vision encoder + text decoder (`vision-encoder-decoder`, e.g. ViT +
  GPT-2) are prefix models: `prompt` is the text the caption continues, and the caption
  starts with it;
- an instruction-following vision-language model (`idefics3`/`smolvlm`, e.g. SmolVLM):
  `prompt` is the instruction, answered through the model's chat template; the answer
  alone is the caption.
Jobs batch when prompt, max_new_tokens and num_beams agree: rows then hold the same text,
so prefix decoders see no padding (GPT-2 would not shift its positions past left padding);
a VLM pads on the left only where images give different numbers of image tokens, and it
takes its positions from the attention mask.
"""
from __future__ import annotations

from typing import Any, Hashable

import torch
from PIL import Image
from transformers import (
    AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer,
    BlipForConditionalGeneration, VisionEncoderDecoderModel,
)

from tasks.errors import InvalidInput, ModelError
from tasks.schemas import CaptionRequest
from worker.loading import check_tokenizer, count_tokens, load_model, load_processor
from worker.pipelines.base import (
    ModelSpec, PipelineResult, ProgressCallback, no_progress, resized_side, run_one, run_parts,
)

# The VLM's instruction when a job brings none.
DEFAULT_INSTRUCTION = "Describe this image in one sentence."
VLM_MODEL_TYPES = ("idefics3", "smolvlm")


def caption_family(spec: ModelSpec) -> str:
    """`blip`, `vision-encoder-decoder` or `vlm`, from the model's config.json."""
    model_type = load_processor(AutoConfig, spec).model_type
    if model_type in ("blip", "vision-encoder-decoder"):
        return model_type
    if model_type in VLM_MODEL_TYPES:
        return "vlm"
    raise ModelError(
        f"{spec.label!r} is a {model_type!r} model; visionq captions with blip, vision-encoder-decoder "
        f"or an instruction VLM ({', '.join(VLM_MODEL_TYPES)})"
    )


class CaptionPipeline:
    """What every caption family shares: loading by family, batching, limits, the result."""

    family: str
    input_side: int | None = None  # the image processor's output side (worker/pipelines/base.py)

    def __init__(self, model: Any, tokenizer: Any, spec: ModelSpec, device: str, dtype: torch.dtype,
                 max_positions: int) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_label = spec.label
        self.device = device
        self.dtype = dtype
        # The prompt and the generated tokens share the decoder's positions.
        self.max_positions = max_positions
        self.generate_options: dict[str, Any] = {}  # a family's own generate() arguments

    @classmethod
    def load(cls, spec: ModelSpec, device: str, dtype: torch.dtype) -> CaptionPipeline:
        family = _FAMILIES[caption_family(spec)]
        return family.load(spec, device, dtype)

    def warm_up(self) -> None:
        run_one(self, CaptionRequest(image="warm-up", max_new_tokens=4), Image.new("RGB", (64, 64), (120, 160, 200)),
                no_progress)

    def batch_key(self, request: CaptionRequest) -> Hashable:
        """Jobs with equal keys share one generate() call."""
        return (request.prompt, request.max_new_tokens, request.num_beams)

    def run_batch(self, requests: list[CaptionRequest], images: list[Image.Image | None],
                  progress: ProgressCallback) -> list[PipelineResult]:
        """Jobs with one batch_key, as one generate() call."""
        return run_parts(self, requests, images, progress)

    def preprocess(self, request: CaptionRequest, image: Image.Image | None) -> Any:
        """Per job, on its own task thread (worker/pipelines/base.py): its checks, and its image as
        the model's pixels where the family's image processor stands apart from its text (`pixels`)."""
        if image is None:
            raise InvalidInput("caption needs an image")
        self.check_inputs(request)
        return self.pixels(image)

    def pixels(self, image: Image.Image) -> Any:
        """The image as `prepare` takes it: here the image itself (prepare processes the batch)."""
        return image

    def infer_batch(self, requests: list[CaptionRequest], pixels: list[Any],
                    progress: ProgressCallback) -> list[str]:
        """run_batch's generate() call, on what `preprocess` returned: each job's caption."""
        first = requests[0]
        inputs = self.prepare(pixels, first.prompt)
        self.check_length(inputs, first.max_new_tokens)
        with torch.inference_mode():
            tokens = self.model.generate(**inputs, **self.generate_options, max_new_tokens=first.max_new_tokens,
                                         num_beams=first.num_beams)
        return [text.strip() for text in self.decode(tokens, inputs)]

    def finish(self, request: CaptionRequest, image: Image.Image | None, text: str) -> PipelineResult:
        return PipelineResult(output={"text": text})

    def check_inputs(self, request: CaptionRequest) -> None:
        """Refuse, before any image work, a prompt that cannot fit with max_new_tokens."""
        prompt_tokens = self.prompt_tokens(request.prompt)
        if prompt_tokens + request.max_new_tokens > self.max_positions:
            raise InvalidInput(
                f"prompt ({prompt_tokens} tokens) plus max_new_tokens {request.max_new_tokens} exceed the "
                f"text decoder's limit of {self.max_positions} tokens"
            )

    def check_length(self, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> None:
        """Once the inputs are built (a VLM's include the image's tokens)."""

    def prompt_tokens(self, prompt: str | None) -> int:
        raise NotImplementedError

    def prepare(self, pixels: list[Any], prompt: str | None) -> dict[str, torch.Tensor]:
        """Model inputs for images (as `pixels` returned them) that share one prompt (or none)."""
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor, inputs: dict[str, torch.Tensor]) -> list[str]:
        raise NotImplementedError


class BlipCaptioner(CaptionPipeline):
    family = "blip"

    def __init__(self, model: BlipForConditionalGeneration, processor: Any, spec: ModelSpec, device: str,
                 dtype: torch.dtype) -> None:
        super().__init__(model, processor.tokenizer, spec, device, dtype,
                         model.config.text_config.max_position_embeddings)
        self.processor = processor
        self.input_side = resized_side(processor.image_processor)

    @classmethod
    def load(cls, spec: ModelSpec, device: str, dtype: torch.dtype) -> BlipCaptioner:
        processor = load_processor(AutoProcessor, spec)
        model = load_model(BlipForConditionalGeneration, spec, dtype=dtype)
        check_tokenizer(processor.tokenizer, model.config.text_config.vocab_size, spec)
        return cls(model.to(device).eval(), processor, spec, device, dtype)

    def prompt_tokens(self, prompt: str | None) -> int:
        # BLIP replaces [CLS] by its start token and drops the final [SEP]: one token fewer.
        return count_tokens(self.tokenizer, prompt) - 1 if prompt else 1

    def pixels(self, image: Image.Image) -> torch.Tensor:
        return self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"]

    def prepare(self, pixels: list[torch.Tensor], prompt: str | None) -> dict[str, torch.Tensor]:
        inputs = {"pixel_values": torch.cat(pixels).to(self.device, self.dtype)}
        if prompt is not None:  # what BlipProcessor passes on from its tokenizer
            text = self.tokenizer([prompt] * len(pixels), return_tensors="pt")
            inputs.update(input_ids=text["input_ids"].to(self.device),
                          attention_mask=text["attention_mask"].to(self.device))
        return inputs

    def decode(self, tokens: torch.Tensor, inputs: dict[str, torch.Tensor]) -> list[str]:
        return self.tokenizer.batch_decode(tokens, skip_special_tokens=True)  # the prompt included


class EncoderDecoderCaptioner(CaptionPipeline):
    """A vision encoder + text decoder (ViT + GPT-2): the decoder continues start token + prompt."""

    family = "vision-encoder-decoder"

    def __init__(self, model: VisionEncoderDecoderModel, tokenizer: Any, image_processor: Any, spec: ModelSpec,
                 device: str, dtype: torch.dtype) -> None:
        super().__init__(model, tokenizer, spec, device, dtype, model.config.decoder.max_position_embeddings)
        self.image_processor = image_processor
        self.input_side = resized_side(image_processor)
        self.start_token_id: int = model.generation_config.decoder_start_token_id
        if self.start_token_id is None:
            self.start_token_id = model.config.decoder_start_token_id
        # GPT-2 has no pad token; generate() wants one, and rows are never padded here.
        pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.generate_options = {"pad_token_id": pad_token_id}

    @classmethod
    def load(cls, spec: ModelSpec, device: str, dtype: torch.dtype) -> EncoderDecoderCaptioner:
        tokenizer = load_processor(AutoTokenizer, spec)
        image_processor = load_processor(AutoImageProcessor, spec)
        model = load_model(VisionEncoderDecoderModel, spec, dtype=dtype)
        check_tokenizer(tokenizer, model.config.decoder.vocab_size, spec)
        return cls(model.to(device).eval(), tokenizer, image_processor, spec, device, dtype)

    def prompt_tokens(self, prompt: str | None) -> int:
        return 1 + (len(self._prompt_ids(prompt)) if prompt else 0)  # the start token, then the prompt

    def _prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]

    def pixels(self, image: Image.Image) -> torch.Tensor:
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"]

    def prepare(self, pixels: list[torch.Tensor], prompt: str | None) -> dict[str, torch.Tensor]:
        inputs = {"pixel_values": torch.cat(pixels).to(self.device, self.dtype)}
        if prompt is not None:
            row = [self.start_token_id, *self._prompt_ids(prompt)]
            inputs["decoder_input_ids"] = torch.tensor([row] * len(pixels), device=self.device)
        return inputs

    def decode(self, tokens: torch.Tensor, inputs: dict[str, torch.Tensor]) -> list[str]:
        return self.tokenizer.batch_decode(tokens, skip_special_tokens=True)  # the prompt included


class VlmCaptioner(CaptionPipeline):
    """An instruction-following VLM: the prompt is the instruction, the answer the caption."""

    family = "vlm"

    def __init__(self, model: Any, processor: Any, spec: ModelSpec, device: str, dtype: torch.dtype) -> None:
        super().__init__(model, processor.tokenizer, spec, device, dtype,
                         model.config.text_config.max_position_embeddings)
        self.processor = processor
        # Rows of a batch end where generation starts: padding goes before them, whatever
        # the tokenizer's saved side (the model takes positions from the attention mask).
        processor.tokenizer.padding_side = "left"

    @classmethod
    def load(cls, spec: ModelSpec, device: str, dtype: torch.dtype) -> VlmCaptioner:
        processor = load_processor(AutoProcessor, spec)
        if not getattr(processor, "chat_template", None):
            raise ModelError(f"{spec.label!r} has no chat template: an instruction VLM needs one")
        model = load_model(AutoModelForImageTextToText, spec, dtype=dtype)
        check_tokenizer(processor.tokenizer, model.config.text_config.vocab_size, spec)
        return cls(model.to(device).eval(), processor, spec, device, dtype)

    def chat(self, prompt: str | None) -> str:
        content = [{"type": "image"}, {"type": "text", "text": prompt or DEFAULT_INSTRUCTION}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)

    def check_inputs(self, request: CaptionRequest) -> None:
        # "<image>" in an instruction would ask for an image the job does not have.
        if request.prompt:
            ids = self.tokenizer(request.prompt, add_special_tokens=False, verbose=False)["input_ids"]
            special = sorted(set(self.tokenizer.convert_ids_to_tokens(
                [i for i in ids if i in set(self.tokenizer.all_special_ids)])))
            if special:
                raise InvalidInput(f"prompt contains the model's special tokens {special}; remove them")
        super().check_inputs(request)

    def prompt_tokens(self, prompt: str | None) -> int:
        # The text alone; the image's tokens are counted once the inputs exist (check_length).
        return len(self.tokenizer(self.chat(prompt), add_special_tokens=False, verbose=False)["input_ids"])

    def prepare(self, images: list[Image.Image], prompt: str | None) -> dict[str, torch.Tensor]:
        text = self.chat(prompt)
        inputs = self.processor(text=[text] * len(images), images=[[image] for image in images], padding=True,
                                return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return dict(inputs)

    def check_length(self, inputs: dict[str, torch.Tensor], max_new_tokens: int) -> None:
        longest = int(inputs["attention_mask"].sum(dim=1).max())
        if longest + max_new_tokens > self.max_positions:
            raise InvalidInput(
                f"instruction and image ({longest} tokens) plus max_new_tokens {max_new_tokens} exceed the "
                f"language model's limit of {self.max_positions} tokens"
            )

    def decode(self, tokens: torch.Tensor, inputs: dict[str, torch.Tensor]) -> list[str]:
        answers = tokens[:, inputs["input_ids"].shape[1]:]  # generate() returns the inputs first
        return self.tokenizer.batch_decode(answers, skip_special_tokens=True)


_FAMILIES: dict[str, type[CaptionPipeline]] = {
    family.family: family for family in (BlipCaptioner, EncoderDecoderCaptioner, VlmCaptioner)
}
