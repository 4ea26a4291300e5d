"""Job kinds and the Celery queue each one travels on."""
from __future__ import annotations

from enum import StrEnum


class JobKind(StrEnum):
    CAPTION = "caption"  # image (+ optional prompt prefix) -> text
    SEGMENT = "segment"  # image (+ optional text labels) -> masks and an overlay
    GENERATE = "generate"  # prompt -> images (diffusion)

    @property
    def queue(self) -> str:
        return f"visionq.{self.value}"

    @property
    def task_name(self) -> str:
        return f"visionq.run.{self.value}"


class Priority(StrEnum):
    """Within a kind, higher first; FIFO within one priority.

    Strict: a worker always takes a queued high job before any normal one, so a
    constant stream of high jobs starves low ones (by design: low is for backfill).
    """

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def level(self) -> int:
        # kombu's Redis transport keeps one list per level and BRPOPs lower levels first.
        return _PRIORITY_LEVELS[self]


_PRIORITY_LEVELS = {Priority.HIGH: 0, Priority.NORMAL: 3, Priority.LOW: 6}
PRIORITY_STEPS = sorted(_PRIORITY_LEVELS.values())
_KOMBU_PRIORITY_SEPARATOR = "\x06\x16"


def queue_list_key(kind: JobKind, priority: Priority, prefix: str) -> str:
    """The Redis list holding `kind` jobs of `priority` on the kind's own queue (its default model)."""
    return priority_list_key(kind.queue, priority, prefix)


def priority_list_key(queue: str, priority: Priority, prefix: str) -> str:
    """The Redis list of `queue` holding its jobs of `priority` (kombu's naming, our key prefix)."""
    level = priority.level
    name = queue if level == 0 else f"{queue}{_KOMBU_PRIORITY_SEPARATOR}{level}"
    return f"{prefix}:{name}"


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
