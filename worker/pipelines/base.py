"""The shape every pipeline shares, and the pieces they hand back to the runtime.

A pipeline is loaded once per worker process (`load`), warmed up with one real
inference (`warm_up`), then called with batches of jobs (`run_batch`); a single
job is a batch of one (`run_one`, the one place that says so). It never touches
Redis or storage: it returns a `PipelineResult` per job whose images the runtime
encodes and uploads, so I/O stays in one place and can overlap with the next
inference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Hashable, Protocol

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

    def batch_key(self, request: Any) -> Hashable | None:
        """Jobs with equal keys may share one `run_batch` call; None: this job runs alone. A function
        of the request alone (worker/model_process.py calls it without an instance)."""

    def run_batch(self, requests: list[Any], images: list[Image.Image | None],
                  progress: ProgressCallback) -> list[PipelineResult]:
        """One result per request, in order. `progress` reports the batch's advance below 1.0
        (it may raise JobCanceled to stop); the finishing 1.0 is the caller's checkpoint."""


# A pipeline may split run_batch in three (all optional; worker/batching.py):
#   preprocess(request, image) -> model_input   per job, on the job's task thread;
#   infer_batch(requests, model_inputs, progress) -> outputs   the model's part, one output per
#       request: what batches, and all that runs on the model thread (or in the model process,
#       worker/model_process.py, so outputs are plain data: text, tensors);
#   finish(request, image, output) -> PipelineResult   the job's own post-processing (masks,
#       overlays), back on its task thread: the next batch does not wait for this one's per-job work.


def input_side(pipeline: Pipeline) -> int | None:
    """The side the pipeline's model resizes every input image to, where the pipeline says so
    (`input_side`) and its output does not depend on the picture's own size (caption): the
    worker then decodes a large picture only about that large (worker/images.py). None: the
    whole picture (segment masks and overlays are drawn at the input's size)."""
    return getattr(pipeline, "input_side", None)


def resized_side(image_processor: Any) -> int | None:
    """The side a Hugging Face image processor resizes every image to (the larger of a fixed
    height and width, or the shortest edge), or None when it keeps sizes or tiles images (VLMs)."""
    if not getattr(image_processor, "do_resize", False):
        return None
    size = getattr(image_processor, "size", None)
    get = size.get if isinstance(size, dict) else partial(getattr, size)
    height, width, shortest = get("height", None), get("width", None), get("shortest_edge", None)
    if height and width:
        return max(int(height), int(width))
    return int(shortest) if shortest else None


def preprocess(pipeline: Pipeline, request: Any, image: Image.Image | None) -> Any:
    """What `infer_batch` takes for this job. A pipeline may offer `preprocess(request, image)`, per
    job (resizing and normalising the image into the model's pixels): the worker calls it on the
    job's task thread, before the job goes to the model thread. Without it, the image itself."""
    own = getattr(pipeline, "preprocess", None)
    return image if own is None else own(request, image)


def infer_batch(pipeline: Pipeline, requests: list[Any], model_inputs: list[Any],
                progress: ProgressCallback, on_start: Callable[[], None] | None = None) -> list[Any]:
    """The pipeline's `infer_batch` (on `preprocess`'s outputs) where it has one; else run_batch's
    results, with nothing left to finish. `on_start`: called when the batch starts running, for a
    pipeline that queues batches (`queues_batches`: the model process's)."""
    infer = getattr(pipeline, "infer_batch", None)
    if on_start is not None:
        return infer(requests, model_inputs, progress, on_start=on_start)
    if infer is not None:
        return infer(requests, model_inputs, progress)
    return pipeline.run_batch(requests, model_inputs, progress)


def finish(pipeline: Pipeline, request: Any, image: Image.Image | None, output: Any) -> PipelineResult:
    """The job's result from its share of `infer_batch`: the pipeline's `finish` where it has one."""
    own = getattr(pipeline, "finish", None)
    return output if own is None else own(request, image, output)


def run_parts(pipeline: Pipeline, requests: list[Any], images: list[Image.Image | None],
              progress: ProgressCallback) -> list[PipelineResult]:
    """run_batch for a pipeline split in three: each job's preprocess, one infer_batch, each job's finish."""
    inputs = [preprocess(pipeline, request, image) for request, image in zip(requests, images)]
    outputs = infer_batch(pipeline, requests, inputs, progress)
    return [finish(pipeline, request, image, output) for request, image, output in zip(requests, images, outputs)]


def run_one(pipeline: Pipeline, request: Any, image: Image.Image | None,
            progress: ProgressCallback) -> PipelineResult:
    """One job: a batch of one, then the job's final checkpoint (1.0 may raise JobCanceled)."""
    result = pipeline.run_batch([request], [image], progress)[0]
    progress(1.0)
    return result


def no_progress(fraction: float) -> None:
    """For batches of several jobs: each job's checkpoint comes after the batch."""
