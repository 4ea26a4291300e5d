"""The gateway's bodies as OpenAPI describes them.

These models only document: `tasks.schemas` stays the one validator (the SDK and
the workers use it too), so a body is checked by exactly the same rules whichever
way it arrives. The documented bounds are the default `Limits`; where a rule spans
fields (a generate job's total work, a webhook host the SSRF guard refuses) only
the validator knows it, and a body the schema allows may still be answered
`400 invalid_input`.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from tasks.limits import DEFAULT_LIMITS as L, MAX_BATCH_JOBS

Text = Annotated[str, Field(max_length=L.max_prompt_chars, pattern=r"^[^\x00]*$")]
Image = Annotated[str, Field(
    min_length=6, max_length=L.max_inline_image_bytes, pattern=r"^(https?://|s3://|data:)",
    description="`data:<mime>;base64,<data>` (at most 7 MB of base64), an `https://` URL the workers fetch, "
                "or an `s3://` object under this tenant's prefix of the deployment's bucket "
                "(`s3://<bucket>/<prefix>/tenants/<tenant>/...`). With multipart/form-data, send the "
                "image as the `image` file part instead.",
)]
EventName = Literal["job.started", "job.progress", "job.succeeded", "job.failed", "job.canceled"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CaptionInput(_Strict):
    image: Image
    prompt: Text | None = Field(None, description="conditional captioning: the caption continues this text")
    max_new_tokens: int = Field(30, ge=1, le=L.max_new_tokens)
    num_beams: int = Field(1, ge=1, le=L.max_num_beams)


class SegmentInput(_Strict):
    image: Image
    labels: list[Annotated[str, Field(min_length=1, max_length=L.max_label_chars, pattern=r"^[^\x00]*$")]] | None = \
        Field(None, min_length=1, max_length=L.max_labels, description="one mask per label; none: the model's classes")
    threshold: float = Field(0.4, ge=0.0, le=1.0)


class GenerateInput(_Strict):
    prompt: Text = Field(min_length=1)
    negative_prompt: Text | None = None
    width: int = Field(512, ge=L.min_side, le=L.max_side, multiple_of=L.side_multiple)
    height: int = Field(512, ge=L.min_side, le=L.max_side, multiple_of=L.side_multiple)
    steps: int = Field(4, ge=1, le=L.max_steps)
    guidance_scale: float = Field(0.0, ge=0.0, le=L.max_guidance_scale)
    seed: int | None = Field(None, ge=0, le=L.max_seed)
    num_images: int = Field(1, ge=1, le=L.max_num_images)


class _JobOptions(_Strict):
    webhook: Annotated[str, Field(max_length=L.max_url_chars, pattern=r"^https?://")] | None = Field(
        None, description="called back with events signed with this tenant's webhook secret (Standard Webhooks)")
    webhook_events: list[EventName] | None = Field(
        None, min_length=1, description="default: job.succeeded, job.failed, job.canceled")
    priority: Literal["high", "normal", "low"] = "normal"
    model: str | None = Field(
        None, max_length=100, description="a model this deployment serves, by its name within the kind "
        "(e.g. vit-gpt2; caption/vit-gpt2 too); default: the kind's default (docs/models.md)")
    queue_timeout_s: float | None = Field(
        None, gt=0, description="seconds it may wait for a worker to start it before it fails `expired` "
        "(default VISIONQ_QUEUE_TIMEOUT_<KIND>_S; at most the job TTL)")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=L.max_key_chars,
        description="as the Idempotency-Key header (which it must equal if both are given): the same key and "
        "body within the job TTL return the same job, another body is 409 (in a batch: that job's slot)")


class CaptionJob(_JobOptions):
    kind: Literal["caption"]
    input: CaptionInput


class SegmentJob(_JobOptions):
    kind: Literal["segment"]
    input: SegmentInput


class GenerateJob(_JobOptions):
    kind: Literal["generate"]
    input: GenerateInput


JobBody = Annotated[Union[CaptionJob, SegmentJob, GenerateJob], Field(discriminator="kind")]


class UploadRequest(_JobOptions):
    """The `request` part of a multipart submit: the job as in the JSON body, its `input` without
    the image (the `image` part is the image); checked as the JSON body is."""

    kind: Literal["caption", "segment", "generate"]
    input: dict[str, Any] = Field(
        default_factory=dict, description="the kind's input (CaptionInput, SegmentInput) without `image`")


class BatchBody(_Strict):
    # Items are not held to JobBody here: each job stands alone, and one that is not a valid
    # body is answered in its own slot ({"error": ...}) while the others are queued.
    jobs: list[dict[str, Any]] = Field(
        min_length=1, max_length=MAX_BATCH_JOBS,
        description="job bodies as POST /v1/jobs takes them (JobBody); an invalid one is answered in its slot",
    )


class ErrorDetail(BaseModel):
    code: str = Field(description="an HTTP answer's: invalid_input, unauthorized, forbidden, not_found, conflict, "
                                  "payload_too_large, unsupported_media_type, rate_limited, unavailable, internal; "
                                  "a failed or canceled job's (its record's `error`): invalid_input, model_error, "
                                  "out_of_memory, timeout, storage_error, canceled, worker_lost, expired, internal")
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class FileRef(BaseModel):
    uri: str = Field(description="where it is stored: `s3://bucket/key`, or `file:///path` on local storage")
    url: str | None = Field(description="a link to download it: presigned (S3) or signed by the gateway "
                                        "(local storage); null where none can be made")
    content_type: str
    bytes: int
    sha256: str


# Outputs and metrics list what every worker of this version writes; they allow more (a model
# family's extras, such as a detector's box and score), so a newer worker never breaks a client.
class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class CaptionOutput(_Open):
    text: str


class Segment(_Open):
    label: str = Field(description="the prompt (labels given) or the model's class name")
    mask: FileRef = Field(description="a PNG, white where the label is")
    area: float = Field(ge=0.0, le=1.0, description="the mask's share of the image")


class SegmentOutput(_Open):
    segments: list[Segment]
    overlay: FileRef = Field(description="the image with its masks drawn on it (PNG)")


class GenerateOutput(_Open):
    images: list[FileRef]
    seed: int = Field(description="the seed used: the one asked for, or the one drawn")


class JobMetrics(_Open):
    """Milliseconds per stage (null where the stage did not run) and the batch the job ran in;
    empty until a worker takes the job."""

    queue_ms: float | None = None
    input_ms: float | None = None
    run_ms: float | None = None
    encode_ms: float | None = None
    upload_ms: float | None = None
    publish_ms: float | None = None
    total_ms: float | None = None
    batch_size: int | None = None


class JobRecord(BaseModel):
    """The job record, exactly as the SDK's `Job.to_dict()` and the webhooks' `data`."""

    model_config = ConfigDict(extra="allow")
    id: str
    kind: Literal["caption", "segment", "generate"]
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    created_at: str
    started_at: str | None
    completed_at: str | None
    progress: float
    input: dict[str, Any]
    output: CaptionOutput | SegmentOutput | GenerateOutput | None = Field(
        description="the kind's output once succeeded (caption: CaptionOutput, segment: SegmentOutput, "
                    "generate: GenerateOutput), else null")
    error: ErrorDetail | None
    metrics: JobMetrics
    worker: str | None
    model: str | None = Field(description="the model's name within the kind (blip, vit-gpt2)")
    model_id: str | None = Field(description="the weights that ran it: Hugging Face id or folder, @revision "
                                             "(null until a worker starts it)")
    attempt: int
    cancel_requested: bool = Field(description="a client asked to cancel it while it was running")
    idempotency_key: str | None
    priority: Literal["high", "normal", "low"]
    webhook: dict[str, Any] | None
    webhook_attempts: list[dict[str, Any]] = Field(description="every webhook delivery attempt (docs/webhooks.md)")
    tenant: str | None
    queue_timeout_s: float | None = Field(description="seconds it may wait queued before it fails expired")


class JobList(BaseModel):
    jobs: list[JobRecord]
    next_cursor: str | None = Field(description="pass as `cursor` for the next (older) page; null: no more")


class BatchResult(BaseModel):
    jobs: list[Union[JobRecord, ErrorBody]] = Field(description="in the order of the request: a record, or an error")


class QueueCounts(BaseModel):
    high: int
    normal: int
    low: int
    total: int


class ModelQueues(QueueCounts):
    live_workers: int = Field(description="ready or busy workers serving this model now")


class KindQueues(QueueCounts):
    """A kind's queued jobs (taken ones not counted), over all its models, and per model name."""

    oldest_age_s: float = Field(description="how long its oldest queued job has waited (0: none)")
    models: dict[str, ModelQueues]


class ServedModel(_Open):
    model_id: str = Field(description="Hugging Face id or folder, @revision when pinned")
    queue: str
    weights_mb: float | None = Field(None, description="estimated from the safetensors headers")


class WorkerHeartbeat(_Open):
    """A live worker's last heartbeat (`visionq workers --json`; docs/cli.md)."""

    name: str
    host: str
    pid: int
    started_at: str
    updated_at: str
    state: str = Field(description="loading, ready, busy or draining")
    kinds: list[str] = Field([], description="the kinds it consumes (the delivery worker: webhooks; a GPU "
                                             "worker's appear once its models are loaded)")
    device: str | None = Field(description="cpu, cuda:0, ...; null for the webhook delivery worker")
    jobs_done: int = Field(description="jobs ended (the delivery worker: delivery attempts)")
    memory_mb: dict[str, float] = Field(description="rss (its model process included), model_process_rss, "
                                                    "gpu_allocated, gpu_reserved")
    models: dict[str, ServedModel] | None = Field(None, description='"kind/name" -> what serves it (GPU workers)')


class Health(BaseModel):
    status: str


AUTH_ERRORS = (400, 401, 503)  # what any route with a key may answer
JOB_ERRORS = (*AUTH_ERRORS, 404)


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait before trying again"}}
# The headers an error answer carries (declared, so generated clients and validators know them).
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": 'Bearer realm="visionq"'}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,  # when the gateway knows how long (Redis: 5 s)
}


def error_responses(*statuses: int, described: dict[int, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI responses of these error statuses; `described` words a route's own."""
    words = {400: "invalid input", 401: "missing, unknown or revoked API key", 403: "forbidden",
             404: "no such job for this tenant", 409: "Idempotency-Key reused with another body",
             413: "request body too large", 415: "unsupported media type",
             429: "over this key's rate or queued-jobs limit (see Retry-After)",
             503: "Redis or storage unreachable", **(described or {})}
    return {s: {"model": ErrorBody, "description": words[s],
                **({"headers": _ERROR_HEADERS[s]} if s in _ERROR_HEADERS else {})} for s in statuses}
