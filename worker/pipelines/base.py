"""The shape every pipeline shares, and the pieces they hand back to the runtime.

A pipeline is loaded once per worker process (`load`), warmed up with one real
inference (`warm_up`), then called once per job (`run`). It never touches Redis
or storage: it returns a `PipelineResult` whose images the runtime encodes and
uploads, so I/O stays in one place and can overlap with the next inference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from PIL import Image

# Called with a fraction 0..1 as the job advances. It may raise JobCanceled (the
# job was canceled) to stop the pipeline at that point; pipelines let it propagate.
ProgressCallback = Callable[[float], None]


@dataclass(frozen=True)
class FileSlot:
    """Placeholder in a pipeline's output for a file the runtime stores.

    `name` is the file name under ``jobs/<job id>/`` (e.g. "mask-0.png"); the
    runtime replaces the slot by the stored file's FileRef dict.
    """

    name: str


@dataclass
class PipelineResult:
    output: dict[str, Any]  # the job's output, with FileSlot where files go
    images: dict[str, Image.Image] = field(default_factory=dict)  # FileSlot.name -> image
    model: str | None = None  # which model ran, when a pipeline holds more than one


@dataclass(frozen=True)
class ModelSpec:
    """Which weights to load: a Hugging Face id or a local folder, plus a revision."""

    model_id: str
    revision: str | None = None

    @property
    def label(self) -> str:
        return f"{self.model_id}@{self.revision}" if self.revision else self.model_id


class Pipeline(Protocol):
    model_label: str  # shown in the job record's `model`

    def warm_up(self) -> None: ...

    def run(self, request: Any, image: Image.Image | None, progress: ProgressCallback) -> PipelineResult: ...
