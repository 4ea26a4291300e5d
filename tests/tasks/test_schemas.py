from __future__ import annotations

import base64

import pytest

from tasks.errors import ErrorCode, InvalidInput
from tasks.limits import Limits
from tasks.schemas import (
    CaptionRequest, GenerateRequest, SegmentRequest, check_image_work, parse_request, request_to_record,
)

IMAGE = "s3://bucket/inputs/abc.png"


def test_defaults_are_valid() -> None:
    assert CaptionRequest.from_dict({"image": IMAGE}) == CaptionRequest(image=IMAGE)
    assert SegmentRequest.from_dict({"image": IMAGE}).labels is None
    request = GenerateRequest.from_dict({"prompt": "a fox"})
    assert (request.width, request.height, request.steps, request.seed) == (512, 512, 4, None)


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"prompt": "x", "width": 4000}, "width 4000 exceeds the maximum 2048"),
        ({"prompt": "x", "width": 100}, "width 100 is not a multiple of 8"),
        ({"prompt": "x", "height": 32}, "height 32 is below the minimum 64"),
        ({"prompt": "x", "steps": 0}, "steps 0 is below the minimum 1"),
        ({"prompt": "x", "steps": "4"}, "steps must be an integer, got str"),
        ({"prompt": "x", "steps": True}, "steps must be an integer, got bool"),
        ({"prompt": "x", "num_images": 9}, "num_images 9 exceeds the maximum 8"),
        ({"prompt": "x", "guidance_scale": float("nan")}, "guidance_scale must be finite"),
        ({"prompt": "x", "seed": -1}, "seed -1 is below the minimum 0"),
        ({"prompt": "x" * 2001}, "prompt has 2001 characters, more than the limit 2000"),
        ({"prompt": "   "}, "prompt must not be empty"),
        ({"prompt": 42}, "prompt must be a string"),
        ({"steps": 4}, "prompt is required"),
        ({"prompt": "a\x00b"}, "NUL"),
        ({"prompt": "x", "colour": "red"}, "unknown generate parameter(s): colour"),
    ],
)
def test_generate_rejects(params: dict, fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        GenerateRequest.from_dict(params)
    assert fragment in str(caught.value)
    assert caught.value.code is ErrorCode.INVALID_INPUT
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"image": IMAGE, "labels": "car"}, "labels must be a list of strings"),
        ({"image": IMAGE, "labels": []}, "must not be an empty list"),
        ({"image": IMAGE, "labels": ["x"] * 17}, "17 labels exceed the limit 16"),
        ({"image": IMAGE, "labels": ["car", ""]}, "labels[1] must not be empty"),
        ({"image": IMAGE, "labels": ["y" * 101]}, "labels[0] has 101 characters"),
        ({"image": IMAGE, "labels": [3]}, "labels[0] must be a string"),
        ({"image": IMAGE, "threshold": 1.5}, "threshold 1.5 is outside [0.0, 1.0]"),
        ({"image": "ftp://host/x.png"}, "unsupported scheme"),
        ({"image": "s3://bucket-only"}, "names no key"),
        ({"image": "s3://[bucket/key.png"}, "is not a valid URI"),
        ({"image": "http://[::1/x.png"}, "is not a valid URI"),
        ({"image": 7}, "image must be a URI string"),
        ({}, "an image is needed"),
        ({"image": None}, "an image is needed"),
    ],
)
def test_segment_rejects(params: dict, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=None) as caught:
        SegmentRequest.from_dict(params)
    assert fragment in str(caught.value)


def test_caption_limits() -> None:
    with pytest.raises(InvalidInput, match="max_new_tokens 1000 exceeds the maximum 256"):
        CaptionRequest.from_dict({"image": IMAGE, "max_new_tokens": 1000})
    with pytest.raises(InvalidInput, match="num_beams 0 is below the minimum 1"):
        CaptionRequest.from_dict({"image": IMAGE, "num_beams": 0})


def test_inline_image_capped_and_checked() -> None:
    small = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n....").decode()
    assert CaptionRequest.from_dict({"image": small}).image == small
    with pytest.raises(InvalidInput, match="inline image is not a JPEG, PNG or WebP file"):  # at submit
        CaptionRequest.from_dict({"image": "data:image/png;base64,AAAA"})
    with pytest.raises(InvalidInput, match="inline image: GIF"):
        CaptionRequest.from_dict({"image": "data:image/gif;base64," + base64.b64encode(b"GIF89a....").decode()})
    limits = Limits(max_inline_image_bytes=100)
    big = "data:image/png;base64," + "A" * 200
    with pytest.raises(InvalidInput, match="upload it to storage instead"):
        CaptionRequest.from_dict({"image": big}, limits)
    with pytest.raises(InvalidInput, match="not valid base64"):
        CaptionRequest.from_dict({"image": "data:image/png;base64,@@@"})
    with pytest.raises(InvalidInput, match="data URI of the form"):
        CaptionRequest.from_dict({"image": "data:image/png,rawbytes"})


def test_text_no_utf8_can_carry_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"prompt is not valid Unicode: a lone surrogate '\\ud800' at character 2"):
        GenerateRequest.from_dict({"prompt": "a \ud800 fox"})
    with pytest.raises(InvalidInput, match=r"labels\[1\] is not valid Unicode"):
        parse_request("segment", {"image": IMAGE, "labels": ["car", "\udc80"]})
    assert GenerateRequest.from_dict({"prompt": "un renard roux, 狐, 🦊"}).prompt.endswith("🦊")


def test_record_never_carries_inline_bytes() -> None:
    inline = "data:image/png;base64," + base64.b64encode(b"\xff\xd8\xffimage-bytes").decode()
    record = request_to_record(CaptionRequest.from_dict({"image": inline}))
    assert record["image"].startswith("inline:sha256:")
    assert "base64" not in str(record)


def test_parse_request_unknown_kind() -> None:
    with pytest.raises(InvalidInput, match="unknown job kind 'paint'"):
        parse_request("paint", {})
    with pytest.raises(InvalidInput, match="must be an object"):
        parse_request("caption", ["not", "a", "dict"])  # type: ignore[arg-type]


# --- work per job -----------------------------------------------------------------


@pytest.mark.parametrize(
    "side, steps, images",
    [(512, 100, 1), (1024, 50, 4), (2048, 4, 1), (2048, 16, 4), (64, 100, 8)],
)
def test_documented_generate_jobs_fit_the_work_cap(side: int, steps: int, images: int) -> None:
    request = GenerateRequest.from_dict({"prompt": "a fox", "width": side, "height": side,
                                         "steps": steps, "num_images": images})
    assert request.num_images == images


@pytest.mark.parametrize("side, steps, images", [(2048, 100, 8), (2048, 100, 1), (1024, 100, 4)])
def test_generate_work_over_the_cap_is_refused_naming_its_factors(side: int, steps: int, images: int) -> None:
    work = side * side * steps * images
    with pytest.raises(InvalidInput, match=(
        f"{side}x{side} x {steps} steps x {images} images = {work} pixel-steps exceeds the per-job limit 268435456"
    )):
        GenerateRequest.from_dict({"prompt": "a fox", "width": side, "height": side,
                                   "steps": steps, "num_images": images})


def test_generate_work_cap_is_the_limits() -> None:
    params = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2}
    GenerateRequest.from_dict(params, Limits(max_generate_work=64 * 64 * 2))
    with pytest.raises(InvalidInput, match="exceeds the per-job limit 8191"):
        GenerateRequest.from_dict(params, Limits(max_generate_work=64 * 64 * 2 - 1))


def segment(labels: int) -> SegmentRequest:
    return SegmentRequest.from_dict({"image": IMAGE, "labels": [f"thing {n}" for n in range(labels)]})


def test_sixteen_labels_on_four_megapixels_fit() -> None:
    check_image_work(segment(16), (2048, 2048), Limits())
    check_image_work(segment(1), (6000, 6000), Limits())  # 36 Mpx, one mask


def test_sixteen_labels_on_forty_megapixels_are_refused_after_decoding() -> None:
    with pytest.raises(InvalidInput, match=(
        "16 labels on a 8000x5000 image = 640000000 mask pixels exceeds the per-job limit 134217728"
    )):
        check_image_work(segment(16), (8000, 5000), Limits())


def test_image_work_ignores_kinds_without_per_label_masks() -> None:
    check_image_work(SegmentRequest.from_dict({"image": IMAGE}), (8000, 5000), Limits())
    check_image_work(CaptionRequest.from_dict({"image": IMAGE}), (8000, 5000), Limits())


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        ("ftp://example.com/x.png", "image URI 'ftp://example.com/x.png' has an unsupported scheme"),
        ("/no/such/cat.png", "is neither a URI nor an existing file"),
    ],
)
def test_a_submitters_image_that_is_no_uri_and_no_file_says_which(image: str, fragment: str) -> None:
    from tasks.schemas import missing_local_image

    assert fragment in missing_local_image(image).message
