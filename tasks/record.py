"""The job record (what `Client.get`, `visionq status --json` and result.json show) and FileRef."""
from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from tasks.errors import InvalidInput
from tasks.kinds import JobKind
from tasks.status import JobStatus


def utc_now() -> str:
    """ISO 8601 in UTC with milliseconds, e.g. 2026-11-29T10:00:00.123Z."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def ms_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round((parse_time(end) - parse_time(start)).total_seconds() * 1000, 3)


def new_job_id() -> str:
    return uuid.uuid4().hex


# What new_job_id makes. Ids become Redis keys and storage paths, and a message or
# record may come from any holder of the Redis credentials: "../../x" must never pass.
JOB_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def check_job_id(value: Any) -> str:
    """`value` if it is a job id as new_job_id makes them, else InvalidInput."""
    if not isinstance(value, str) or not JOB_ID_PATTERN.fullmatch(value):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidInput(f"job id {shown!r} is not 32 lowercase hex digits")
    return value


@dataclass(frozen=True)
class FileRef:
    uri: str  # s3://bucket/key or file:///path
    url: str | None  # presigned https URL (S3), None for local files
    content_type: str
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def described_by(value: Any) -> bool:
        """Whether `value`, a part of a record's output as JSON, is a FileRef's dict."""
        return isinstance(value, dict) and isinstance(value.get("uri"), str) and "sha256" in value


@dataclass
class JobRecord:
    id: str
    kind: JobKind
    status: JobStatus
    created_at: str
    started_at: str | None = None
    completed_at: str | None = None
    progress: float = 0.0
    input: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    worker: str | None = None
    model: str | None = None  # the model's name within the kind (blip, vit-gpt2), chosen at submit
    model_id: str | None = None  # what ran it: Hugging Face id (or folder), @revision when pinned
    attempt: int = 0
    cancel_requested: bool = False  # a client asked to cancel while it was running
    idempotency_key: str | None = None
    priority: str = "normal"  # high | normal | low
    webhook: dict[str, Any] | None = None  # {"url", "events"}; the secret is never here
    webhook_attempts: list[dict[str, Any]] = field(default_factory=list)  # every delivery attempt
    tenant: str | None = None  # the gateway tenant that submitted it; None from the direct-Redis SDK
    # Seconds it may wait queued before it fails `expired` (from created_at); None: no deadline.
    queue_timeout_s: float | None = None

    @property
    def is_final(self) -> bool:
        return self.status.is_final

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["status"] = self.status.value
        return data

    def to_json_fields(self) -> dict[str, Any]:
        """`to_dict()` without dataclasses.asdict's deep copy, for serializing at once (the job's
        hot path: the submit script, result.json): its values are the record's own objects."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["kind"], data["status"] = self.kind.value, self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        check_job_id(known.get("id"))
        known["kind"] = JobKind(known["kind"])
        known["status"] = JobStatus(known["status"])
        return cls(**known)
