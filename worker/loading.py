"""What every pipeline's `load` shares: safe from_pretrained calls and their checks."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.errors import InvalidInput, ModelError
from worker.pipelines.base import ModelSpec

_quieted = False


def quiet_libraries() -> None:
    """No progress bars in worker logs; both libraries have their own switch."""
    global _quieted
    if _quieted:
        return
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    _quieted = True


def pick_dtype(device: str) -> Any:
    import torch

    return torch.float16 if device.startswith("cuda") else torch.float32


def pretrained_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """The arguments every from_pretrained call gets: safetensors only (a pickle in a
    .bin file can run code), pinned revision, never remote code."""
    return {"use_safetensors": True, "revision": spec.revision, "trust_remote_code": False}


def load_model(loader: Any, spec: ModelSpec, what: str, **extra: Any) -> Any:
    """`loader.from_pretrained(spec)` with failures turned into a ModelError naming the model."""
    quiet_libraries()
    try:
        return loader.from_pretrained(spec.model_id, **pretrained_kwargs(spec), **extra)
    except Exception as exc:  # noqa: BLE001 - any load failure is fatal for this worker
        hint = ""
        folder = Path(spec.model_id)
        if folder.is_dir() and not any(folder.rglob("*.safetensors")):
            hint = " (the folder has no .safetensors weights; only safetensors are loaded)"
        raise ModelError(f"cannot load the {what} model {spec.label!r}{hint}: {exc}") from exc


def check_tokenizer(tokenizer: Any, vocab_size: int, spec: ModelSpec) -> None:
    """A folder without tokenizer files can load a 2-5 token tokenizer silently; a
    tokenizer that does not match the model's vocabulary produces garbage."""
    size = len(tokenizer)
    if size < 10 or size > vocab_size:
        raise ModelError(
            f"the tokenizer of {spec.label!r} has {size} tokens but the model's vocabulary has "
            f"{vocab_size}: tokenizer files missing or from another model"
        )


def token_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, truncation=False)["input_ids"])


def check_token_limit(tokenizer: Any, text: str, limit: int, name: str) -> None:
    count = token_count(tokenizer, text)
    if count > limit:
        raise InvalidInput(
            f"{name} has {count} tokens, more than the text encoder's limit of {limit}; shorten it "
            "(it is not truncated)"
        )
