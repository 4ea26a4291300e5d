"""The models visionq knows by name: per kind, a family, a default Hugging Face id and a folder.

Torch-free, like the rest of the contract: producers validate model names against it,
workers load by it. A name is ``kind/name`` (``caption/vit-gpt2``); the family says which
library classes load it (a worker still checks the model's own config, never the name).
`folder` is the model's sub-folder in a models directory, as `visionq models tiny DIR`
writes it and `--models DIR` reads it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    kind: str  # a JobKind value
    name: str  # unique within the kind
    family: str  # which pipeline code serves it (see docs/models.md)
    hf_id: str  # the default weights: a public Hugging Face id (any can be replaced by a folder)
    folder: str  # sub-folder in a models directory
    second_id: str | None = None  # a second model the family needs (owlv2-sam: SAM beside the detector)

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
               "segment-semantic"),
    ModelEntry("segment", "owlv2-sam", "detect-segment", "google/owlv2-base-patch16-ensemble", "segment-owlv2-sam",
               second_id="facebook/sam-vit-base"),
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


# Role -> public Hugging Face id, and role -> sub-folder of a models directory.
DEFAULT_MODELS: dict[str, str] = {role: model_entry(name).hf_id for role, name in ROLE_MODELS.items()}
MODEL_DIR_NAMES: dict[str, str] = {role: model_entry(name).folder for role, name in ROLE_MODELS.items()}
