"""What every pipeline's `load` shares: one safe from_pretrained call and its checks.

The same call serves a Hugging Face id and a local folder (such as the tiny models),
so tests exercise exactly the path production uses.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Iterator

import diffusers.utils.logging as diffusers_logging
import torch
import transformers.utils.logging as transformers_logging

from tasks.errors import InvalidInput, ModelError
from worker.pipelines.base import ModelSpec

# Weights in these formats are pickles: loading one can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Inside `shapes_only()`: models are built from their config on torch's "meta" device, no weights read.
_SHAPES_ONLY: ContextVar[bool] = ContextVar("visionq_shapes_only", default=False)


@contextmanager
def shapes_only() -> Iterator[None]:
    """Pipelines loaded inside hold their processors, tokenizers and configs, but models without
    weights (device "meta"): what a worker whose weights live in its model process needs to
    preprocess and finish jobs (worker/model_process.py). Load them with device "meta"."""
    token = _SHAPES_ONLY.set(True)
    try:
        yield
    finally:
        _SHAPES_ONLY.reset(token)


def loading_shapes_only() -> bool:
    return _SHAPES_ONLY.get()


def pick_dtype(device: str) -> torch.dtype:
    """Half precision where the hardware is built for it; CPUs are slow or inexact in fp16."""
    return torch.float16 if device.startswith("cuda") else torch.float32


def load_model(loader: Any, spec: ModelSpec, **kwargs: Any) -> Any:
    """Weights (a model or a diffusers pipeline) for `spec`: safetensors only, never remote code.
    Inside `shapes_only()`, a transformers model built from its config on the "meta" device."""
    if _SHAPES_ONLY.get():
        from transformers import AutoConfig

        config = load_processor(AutoConfig, spec)
        build = getattr(loader, "from_config", None) or loader._from_config  # Auto classes, model classes
        with torch.device("meta"):
            return build(config)
    _refuse_pickle_only(spec)
    return _from_pretrained(loader, spec, use_safetensors=True, **kwargs)


def load_processor(loader: Any, spec: ModelSpec, **kwargs: Any) -> Any:
    """A tokenizer or processor for `spec`: JSON and text files, so no weights format to
    choose (a tokenizer would keep `use_safetensors` as one of its own settings)."""
    return _from_pretrained(loader, spec, **kwargs)


def _from_pretrained(loader: Any, spec: ModelSpec, **kwargs: Any) -> Any:
    # Library-wide switches, but a worker's logs are the only audience: no bars there.
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    if spec.model_id.startswith(("/", "./", "../", "~")) and not Path(spec.model_id).expanduser().is_dir():
        # A path, not a hub id: the library would say "Repo id must be in the form ..." of it.
        raise ModelError(f"cannot load {loader.__name__} from {spec.label!r}: no such folder")
    try:
        return loader.from_pretrained(spec.model_id, revision=spec.revision, trust_remote_code=False, **kwargs)
    except Exception as exc:  # noqa: BLE001 - whatever the library raises, the model is unusable
        # A worker that cannot load its model must not start; say which model it was.
        raise ModelError(f"cannot load {loader.__name__} from {spec.label!r}: {exc}") from exc


def _refuse_pickle_only(spec: ModelSpec) -> None:
    # For a local folder we can say precisely why; for a hub id the library refuses
    # with its own message once use_safetensors=True finds no .safetensors file.
    folder = Path(spec.model_id)
    if not folder.is_dir():
        return
    files = [path for path in folder.rglob("*") if path.is_file()]
    pickles = [path for path in files if path.suffix in PICKLE_SUFFIXES]
    if pickles and not any(path.suffix == ".safetensors" for path in files):
        raise ModelError(
            f"model folder {str(folder)!r} has only pickle weights ({pickles[0].name}); visionq loads "
            "safetensors only: convert the weights with safetensors first"
        )


PADDED_VOCAB_SLACK = 256


def check_tokenizer(tokenizer: Any, vocab_size: int, spec: ModelSpec) -> None:
    """A tokenizer must fit the model's vocabulary.

    A folder without tokenizer files can still load a 2-5 token tokenizer that maps
    every word to "unknown", and a tokenizer from another model maps words to the
    wrong embeddings; both would run and return garbage without an error. Some models
    pad their embedding table (to a multiple of 64 or 128), so a tokenizer up to a few
    hundred tokens smaller than the vocabulary is fine.
    """
    slack = min(PADDED_VOCAB_SLACK, vocab_size // 50)
    if not vocab_size - slack <= len(tokenizer) <= vocab_size:
        raise ModelError(
            f"the tokenizer of {spec.label!r} has {len(tokenizer)} tokens but the model's vocabulary "
            f"has {vocab_size}: tokenizer files are missing or belong to another model"
        )


def text_token_limit(tokenizer: Any, max_position_embeddings: int) -> int:
    """How many tokens (special tokens included) the text encoder can see at once."""
    return min(tokenizer.model_max_length, max_position_embeddings)


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens of `text` as the model will receive it, special tokens included."""
    # verbose=False: an over-long text is reported by check_token_limit, not as a log warning.
    return len(tokenizer(text, truncation=False, verbose=False)["input_ids"])


def check_token_limit(tokenizer: Any, text: str, limit: int, name: str) -> None:
    """Reject, never truncate: a silently shortened prompt gives a result the user did not ask for."""
    count = count_tokens(tokenizer, text)
    if count > limit:
        raise InvalidInput(
            f"{name} has {count} tokens, more than the text encoder's limit of {limit}; shorten it"
        )
