"""Job kinds and the Celery queue each one travels on."""
from __future__ import annotations

from enum import Enum


class JobKind(str, Enum):
    CAPTION = "caption"  # image (+ optional prompt prefix) -> text
    SEGMENT = "segment"  # image (+ optional text labels) -> masks and an overlay
    GENERATE = "generate"  # prompt -> images (diffusion)

    @property
    def queue(self) -> str:
        return f"visionq.{self.value}"

    @property
    def task_name(self) -> str:
        return f"visionq.run.{self.value}"


WEBHOOKS_QUEUE = "visionq.webhooks"
ALL_KINDS: tuple[JobKind, ...] = tuple(JobKind)


def parse_kinds(text: str) -> list[JobKind]:
    """Parse "caption,segment" into kinds; raises ValueError naming the unknown one."""
    kinds: list[JobKind] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            kinds.append(JobKind(part))
        except ValueError:
            known = ", ".join(k.value for k in JobKind)
            raise ValueError(f"unknown job kind {part!r}; known kinds: {known}") from None
    if not kinds:
        raise ValueError("no job kind given")
    return kinds
