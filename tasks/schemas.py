"""Request schemas: what each job kind accepts, validated against `Limits`.

`from_dict` is used on both sides: the SDK validates before enqueueing (a bad
parameter never reaches a queue) and the worker validates the message again
(a message can come from any producer).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Union
from urllib.parse import urlsplit

from tasks.errors import InvalidInput
from tasks.images import accepted_extension
from tasks.kinds import JobKind
from tasks.limits import DEFAULT_LIMITS, Limits

IMAGE_SCHEMES = ("s3://", "file://", "http://", "https://", "data:")


def _require_int(name: str, value: Any, low: int, high: int) -> int:
    # bool is an int subclass; True as a step count is a bug in the caller.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < low:
        raise InvalidInput(f"{name} {value} is below the minimum {low}")
    if value > high:
        raise InvalidInput(f"{name} {value} exceeds the maximum {high}")
    return value


def _require_float(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise InvalidInput(f"{name} must be finite, got {value!r}")
    if not low <= value <= high:
        raise InvalidInput(f"{name} {value} is outside [{low}, {high}]")
    return float(value)


def missing_local_image(image: Any) -> InvalidInput:
    """Why a submitter's image string that is no supported URI and names no file is refused."""
    text = str(image)[:200]
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        return InvalidInput(f"image URI {text[:80]!r} has an unsupported scheme; use a file path or one of "
                            + ", ".join(IMAGE_SCHEMES))
    return InvalidInput(f"image {text!r} is neither a URI nor an existing file")


def _require_text(name: str, value: Any, max_chars: int, *, allow_empty: bool = False) -> str:
    if value is None:
        raise InvalidInput(f"{name} is required")
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise InvalidInput(f"{name} must not be empty")
    if len(value) > max_chars:
        raise InvalidInput(f"{name} has {len(value)} characters, more than the limit {max_chars}")
    if "\x00" in value:
        raise InvalidInput(f"{name} contains a NUL character")
    check_unicode(name, value)
    return value


def check_unicode(name: str, value: str) -> None:
    """InvalidInput for text no UTF-8 can carry: a lone UTF-16 surrogate (JSON's "\\ud800"), which
    would pass here and fail every later step that encodes it (the record, a tokenizer)."""
    if value.isascii():  # nearly every string: checked without encoding it
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(f"{name} is not valid Unicode: a lone surrogate {value[exc.start]!r} at "
                           f"character {exc.start}") from None


def _optional_text(name: str, value: Any, max_chars: int) -> str | None:
    if value is None or value == "":
        return None
    return _require_text(name, value, max_chars)


def validate_image_uri(value: Any, limits: Limits) -> str:
    """An image reference as it travels in a message: a URI or inline base64 data."""
    if value is None:  # said so for every way in: SDK argument, JSON input.image, multipart part
        raise InvalidInput("an image is needed: a URI or data: URI as input.image, or (gateway) an `image` part")
    if not isinstance(value, str):
        raise InvalidInput(f"image must be a URI string, got {type(value).__name__}")
    if value.startswith("data:"):
        if len(value) > limits.max_inline_image_bytes:
            raise InvalidInput(
                f"inline image has {len(value)} bytes of base64, more than the limit "
                f"{limits.max_inline_image_bytes}; upload it to storage instead"
            )
        # Malformed base64, or bytes of no accepted image format, refused at submit (not by a worker).
        accepted_extension(decode_data_uri(value), "inline image")
        return value
    if len(value) > limits.max_url_chars:
        raise InvalidInput(f"image URI has {len(value)} characters, more than {limits.max_url_chars}")
    if not value.startswith(IMAGE_SCHEMES):
        raise InvalidInput(
            f"image URI {value[:80]!r} has an unsupported scheme; use one of "
            + ", ".join(IMAGE_SCHEMES)
        )
    if value.startswith("s3://") and "/" not in value[len("s3://"):].strip("/"):
        raise InvalidInput(f"image URI {value!r} names no key; expected s3://bucket/key")
    try:
        urlsplit(value)  # what every reader of it calls: refused here, not as a worker's internal error
    except ValueError as exc:  # an unclosed "[" (IPv6 literal), or a host NFKC makes unsafe
        raise InvalidInput(f"image URI {value[:80]!r} is not a valid URI: {exc}") from None
    return value


def decode_data_uri(uri: str) -> bytes:
    """Bytes of a ``data:[<mime>];base64,<data>`` URI."""
    header, sep, payload = uri.partition(",")
    if not sep or not header.endswith(";base64"):
        raise InvalidInput("inline image must be a data URI of the form data:<mime>;base64,<data>")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("inline image is not valid base64") from None


def describe_image_uri(uri: str) -> str:
    """The image as the job record shows it: inline bytes are replaced by their digest."""
    if uri.startswith("data:"):
        return "inline:sha256:" + hashlib.sha256(decode_data_uri(uri)).hexdigest()
    return uri


@dataclass(frozen=True)
class CaptionRequest:
    kind: ClassVar[JobKind] = JobKind.CAPTION
    image: str
    prompt: str | None = None  # conditional captioning: the caption continues this text
    max_new_tokens: int = 30
    num_beams: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> CaptionRequest:
        _reject_unknown(cls, data)
        return cls(
            image=validate_image_uri(data.get("image"), limits),
            prompt=_optional_text("prompt", data.get("prompt"), limits.max_prompt_chars),
            max_new_tokens=_require_int(
                "max_new_tokens", data.get("max_new_tokens", 30), 1, limits.max_new_tokens
            ),
            num_beams=_require_int("num_beams", data.get("num_beams", 1), 1, limits.max_num_beams),
        )


@dataclass(frozen=True)
class SegmentRequest:
    kind: ClassVar[JobKind] = JobKind.SEGMENT
    image: str
    labels: list[str] | None = None  # None: semantic segmentation over the model's classes
    threshold: float = 0.4

    @classmethod
    def from_dict(cls, data: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> SegmentRequest:
        _reject_unknown(cls, data)
        labels = data.get("labels")
        if labels is not None:
            if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
                raise InvalidInput(f"labels must be a list of strings, got {type(labels).__name__}")
            if not labels:
                raise InvalidInput("labels must not be an empty list; pass None for semantic classes")
            if len(labels) > limits.max_labels:
                raise InvalidInput(f"{len(labels)} labels exceed the limit {limits.max_labels}")
            labels = [
                _require_text(f"labels[{i}]", label, limits.max_label_chars)
                for i, label in enumerate(labels)
            ]
        return cls(
            image=validate_image_uri(data.get("image"), limits),
            labels=labels,
            threshold=_require_float("threshold", data.get("threshold", 0.4), 0.0, 1.0),
        )


@dataclass(frozen=True)
class GenerateRequest:
    kind: ClassVar[JobKind] = JobKind.GENERATE
    prompt: str
    negative_prompt: str | None = None
    width: int = 512
    height: int = 512
    steps: int = 4
    guidance_scale: float = 0.0  # SD-Turbo is trained without classifier-free guidance
    seed: int | None = None  # None: the worker draws one and reports it in the output
    num_images: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> GenerateRequest:
        _reject_unknown(cls, data)
        seed = data.get("seed")
        request = cls(
            prompt=_require_text("prompt", data.get("prompt"), limits.max_prompt_chars),
            negative_prompt=_optional_text(
                "negative_prompt", data.get("negative_prompt"), limits.max_prompt_chars
            ),
            width=_require_side("width", data.get("width", 512), limits),
            height=_require_side("height", data.get("height", 512), limits),
            steps=_require_int("steps", data.get("steps", 4), 1, limits.max_steps),
            guidance_scale=_require_float(
                "guidance_scale", data.get("guidance_scale", 0.0), 0.0, limits.max_guidance_scale
            ),
            seed=None if seed is None else _require_int("seed", seed, 0, limits.max_seed),
            num_images=_require_int("num_images", data.get("num_images", 1), 1, limits.max_num_images),
        )
        _check_generate_work(request, limits)
        return request


def _check_generate_work(request: GenerateRequest, limits: Limits) -> None:
    """Each limit alone allows 8 images x 100 steps x 2048^2; their product is capped."""
    work = request.width * request.height * request.steps * request.num_images
    if work > limits.max_generate_work:
        raise InvalidInput(
            f"{request.width}x{request.height} x {request.steps} steps x {request.num_images} images = "
            f"{work} pixel-steps exceeds the per-job limit {limits.max_generate_work}; "
            "ask for fewer pixels, steps or images (or split the job)"
        )


def check_image_work(request: JobRequest, size: tuple[int, int], limits: Limits) -> None:
    """The caps that need the decoded image's size: checked on the worker, before the model.

    Segment with labels makes one full-size mask per label, so its cost is labels x pixels.
    """
    if isinstance(request, SegmentRequest) and request.labels:
        width, height = size
        work = len(request.labels) * width * height
        if work > limits.max_segment_mask_pixels:
            raise InvalidInput(
                f"{len(request.labels)} labels on a {width}x{height} image = {work} mask pixels exceeds "
                f"the per-job limit {limits.max_segment_mask_pixels}; use fewer labels or a smaller image"
            )


def _require_side(name: str, value: Any, limits: Limits) -> int:
    side = _require_int(name, value, limits.min_side, limits.max_side)
    if side % limits.side_multiple:
        raise InvalidInput(f"{name} {side} is not a multiple of {limits.side_multiple}")
    return side


JobRequest = Union[CaptionRequest, SegmentRequest, GenerateRequest]
REQUEST_TYPES: dict[JobKind, type] = {
    JobKind.CAPTION: CaptionRequest,
    JobKind.SEGMENT: SegmentRequest,
    JobKind.GENERATE: GenerateRequest,
}


def _reject_unknown(cls: type, data: Any) -> None:
    if not isinstance(data, dict):
        raise InvalidInput(f"a {cls.kind.value} request must be an object, got {type(data).__name__}")
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise InvalidInput(f"unknown {cls.kind.value} parameter(s): {', '.join(sorted(unknown))}")


def parse_request(kind: JobKind | str, data: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> JobRequest:
    try:
        job_kind = JobKind(kind)
    except ValueError:
        raise InvalidInput(f"unknown job kind {kind!r}") from None
    return REQUEST_TYPES[job_kind].from_dict(data, limits)


def request_to_message(request: JobRequest) -> dict[str, Any]:
    """The request as the queue message carries it (inline image data included)."""
    # Its fields, not dataclasses.asdict: no deep copy of values that are only serialized.
    data = {f.name: getattr(request, f.name) for f in fields(request)}
    if data.get("labels") is not None:
        data["labels"] = list(data["labels"])  # a copy: the caller may change its message
    return data


def request_to_record(request: JobRequest) -> dict[str, Any]:
    """The request as the job record shows it: no inline bytes."""
    data = request_to_message(request)
    if "image" in data:
        data["image"] = describe_image_uri(data["image"])
    return data
