"""The jobs the benchmarks submit, each both a service submit and a direct call.

One definition per case keeps the baseline honest: the direct loop parses the
very parameters the SDK sends, and runs them on the same image bytes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from producer.client import Client
from producer.job import Job
from tasks.kinds import JobKind
from tasks.limits import Limits
from tasks.schemas import JobRequest, parse_request


@dataclass(frozen=True)
class JobSpec:
    case: str  # as printed
    kind: JobKind
    params: dict[str, Any] = field(default_factory=dict)  # SDK keyword arguments, image aside
    slow: bool = False  # ~200 ms or more a job: fewer jobs per burst

    @property
    def needs_image(self) -> bool:
        return self.kind is not JobKind.GENERATE

    def submit(self, client: Client, image: str | bytes) -> Job:
        if self.kind is JobKind.CAPTION:
            return client.caption(image, **self.params)
        if self.kind is JobKind.SEGMENT:
            return client.segment(image, **self.params)
        return client.generate(**self.params)

    def request(self, image_uri: str, limits: Limits) -> JobRequest:
        """The request a worker parses from this job's message."""
        data = dict(self.params)
        if self.needs_image:
            data["image"] = image_uri
        return parse_request(self.kind, data, limits)


# The tiny models' jobs. generate at 128 px: the tiny VAE takes ~2 s at 512 px on
# one core, which would measure the VAE and nothing else.
CAPTION = JobSpec("caption (tiny BLIP)", JobKind.CAPTION, {"max_new_tokens": 30})
SEGMENT = JobSpec("segment 2 labels (tiny CLIPSeg)", JobKind.SEGMENT, {"labels": ["cat", "sky"]})
SEMANTIC = JobSpec("segment semantic (tiny SegFormer)", JobKind.SEGMENT, {"labels": None})
GENERATE = JobSpec(
    "generate 128px 4 steps (tiny SD)", JobKind.GENERATE,
    {"prompt": "a watercolor fox", "width": 128, "height": 128, "steps": 4, "seed": 7},
)


def standin(cost_ms: float) -> JobSpec:
    """A job for the fixed-cost stand-in model (it serves segment; see bench/pipelines.py)."""
    return JobSpec(f"stand-in {cost_ms:g} ms model", JobKind.SEGMENT, {}, slow=cost_ms >= 200)
