"""The models visionq knows by name: per kind, a family, a default Hugging Face id and a folder.

Torch-free, like the rest of the contract: producers validate model names against it,
workers load by it. A name is ``kind/name`` (``caption/vit-gpt2``); the family says which
library classes load it (a worker still checks the model's own config, never the name).
`folder` is the model's sub-folder in a models directory, as `visionq models tiny DIR`
writes it and `--models DIR` reads it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    kind: str  # a JobKind value
    name: str  # unique within the kind
    family: str  # which pipeline code serves it (see docs/models.md)
    hf_id: str  # the default weights: a public Hugging Face id (any can be replaced by a folder)
    folder: str  # sub-folder in a models directory
    second_id: str | None = None  # a second model the family needs (owlv2-sam: SAM beside the detector)
    # A segment family's use of labels, checked at submit (a worker checks any model's again):
    # "required" (it finds what they name), "refused" (it finds its own classes), None (either).
    labels: str | None = None

    @property
    def full_name(self) -> str:
        return f"{self.kind}/{self.name}"


CATALOGUE: tuple[ModelEntry, ...] = (
    ModelEntry("caption", "blip", "blip", "Salesforce/blip-image-captioning-base", "caption"),
    ModelEntry("caption", "vit-gpt2", "vision-encoder-decoder", "nlpconnect/vit-gpt2-image-captioning",
               "caption-vit-gpt2"),
    ModelEntry("caption", "vlm", "vlm", "HuggingFaceTB/SmolVLM-256M-Instruct", "caption-vlm"),
    ModelEntry("segment", "clipseg", "clipseg", "CIDAS/clipseg-rd64-refined", "segment-prompted"),
    ModelEntry("segment", "segformer", "segformer", "nvidia/segformer-b0-finetuned-ade-512-512",
               "segment-semantic", labels="refused"),
    ModelEntry("segment", "owlv2-sam", "detect-segment", "google/owlv2-base-patch16-ensemble", "segment-owlv2-sam",
               second_id="facebook/sam-vit-base", labels="required"),
    ModelEntry("generate", "sd", "stable-diffusion", "stabilityai/sd-turbo", "generate"),
)

# What a worker loads per role today: the kind defaults. A segment job without labels runs
# the semantic model, so segment's default pipeline holds two models.
ROLE_MODELS: dict[str, str] = {
    "caption": "caption/blip",
    "segment": "segment/clipseg",  # masks for text labels
    "semantic": "segment/segformer",  # segment without labels
    "generate": "generate/sd",
}


def model_entry(full_name: str) -> ModelEntry:
    """The catalogue entry of ``kind/name``; KeyError names the known ones."""
    for entry in CATALOGUE:
        if entry.full_name == full_name:
            return entry
    known = ", ".join(entry.full_name for entry in CATALOGUE)
    raise KeyError(f"unknown model {full_name!r}; known: {known}")


def models_of(kind: str) -> list[ModelEntry]:
    return [entry for entry in CATALOGUE if entry.kind == kind]


# A model name becomes part of a queue name and a Redis key: short, lowercase, no separators.
MODEL_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,47}")


def default_model(kind: str) -> str:
    """The name of `kind`'s default model (``blip`` for caption): jobs that name no model run it."""
    return ROLE_MODELS[kind].split("/", 1)[1]


def model_queue(kind: str, name: str | None) -> str:
    """The Celery queue of `kind` jobs for model `name`: the kind's own queue for its default
    (None included), ``visionq.<kind>.<name>`` for any other, so only workers that loaded it take it."""
    if name is None or name == default_model(kind):
        return f"visionq.{kind}"
    return f"visionq.{kind}.{name}"


@dataclass(frozen=True)
class ModelRef:
    """Where a named model's weights come from: a Hugging Face id (or a folder) and a revision."""

    model_id: str
    revision: str | None = None

    @property
    def label(self) -> str:
        return self.model_id if self.revision is None else f"{self.model_id}@{self.revision}"


def parse_model_list(text: str) -> dict[str, ModelRef]:
    """``kind/name=hf_id[@revision],...`` (VISIONQ_MODELS) -> {"kind/name": ModelRef}; ValueError
    naming the bad entry. The kind defaults keep their own variables (VISIONQ_CAPTION_MODEL, ...)."""
    kinds = sorted({entry.kind for entry in CATALOGUE})
    roles = {name: role for role, name in ROLE_MODELS.items()}
    models: dict[str, ModelRef] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        full_name, equals, source = (s.strip() for s in part.partition("="))
        kind, slash, name = full_name.partition("/")
        if not equals or not slash or not source:
            raise ValueError(f"{part!r} must be kind/name=hf_id[@revision]")
        if kind not in kinds:
            raise ValueError(f"{part!r}: kind {kind!r} is not one of {', '.join(kinds)}")
        if not MODEL_NAME_PATTERN.fullmatch(name):
            raise ValueError(f"{part!r}: name {name!r} must be 1-48 of a-z, 0-9, - and _, starting with a letter or digit")
        if full_name in roles:
            raise ValueError(f"{part!r}: {full_name} is a default model; set VISIONQ_{roles[full_name].upper()}_MODEL instead")
        if full_name in models:
            raise ValueError(f"{full_name} is given twice")
        model_id, at, revision = source.partition("@")
        if not model_id or (at and not revision):
            raise ValueError(f"{part!r}: the weights must be hf_id or hf_id@revision")
        models[full_name] = ModelRef(model_id, revision or None)
    return models


# Role -> public Hugging Face id, and role -> sub-folder of a models directory.
DEFAULT_MODELS: dict[str, str] = {role: model_entry(name).hf_id for role, name in ROLE_MODELS.items()}
MODEL_DIR_NAMES: dict[str, str] = {role: model_entry(name).folder for role, name in ROLE_MODELS.items()}
