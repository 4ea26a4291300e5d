"""The bad-input corpus: hostile files, requests, URLs and forged messages, each with the
outcome the worker must reach (docs/security.md).

Most cases enter as raw queue messages or forged records, bypassing every check the SDK
makes, because that is what any holder of the Redis credentials can send. Run
``python -m tests.support.corpus DIR`` to write the corpus out (cases.json and one file
per uploaded image); tests/integration/test_bad_inputs.py runs it against a real worker.
"""
from __future__ import annotations

import base64
import io
import json
import math
import struct
import sys
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from tests.support.images import encode, png_bomb, scan_padded_jpeg, scene

# How a case enters: through the SDK (whose own checks may refuse it at submit), as a
# raw Celery message next to a record the SDK never validated, or as a forged record.
SDK, MESSAGE, RECORD = "sdk", "message", "record"
# Outcomes besides an error code: the job succeeds (odd but valid input), or the
# message is dropped without a write (forged ids: there is no valid record to fail).
SUCCEEDED, DROPPED = "succeeded", "dropped"

# Placeholders in a request's image, replaced when the case runs.
UPLOAD = "{upload}"  # the S3 URI the case's `upload` bytes were stored at
SERVER = "{server}"  # the hostile HTTP server (tests/integration/test_bad_inputs.py)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # caption | segment | generate
    entry: str  # SDK | MESSAGE | RECORD
    request: Any  # what the message carries (anything: entries other than SDK are not validated)
    expect: str  # an error code, SUCCEEDED or DROPPED
    fragment: str = ""  # words the error message must contain
    upload: bytes | None = None  # stored in the bucket, named by UPLOAD in the request
    job_id: Any = None  # RECORD: the id the forged message carries
    record_id: Any = None  # RECORD: the id written inside the forged record


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(size: tuple[int, int] = (32, 32), *extra_chunks: bytes) -> bytes:
    """A valid PNG with `extra_chunks` inserted right after IHDR."""
    data = encode(scene(*size))
    return data[:33] + b"".join(extra_chunks) + data[33:]


def _ztxt_bomb() -> bytes:
    """A zTXt chunk inflating to 64 MB of text from ~64 KB."""
    text = zlib.compress(b"A" * (64 * 1024 * 1024), 9)
    return _png((32, 32), _png_chunk(b"zTXt", b"Comment\x00\x00" + text))


def _bad_crc_png() -> bytes:
    data = bytearray(encode(scene(32, 32)))
    data[29] ^= 0xFF  # a byte of IHDR's CRC
    return bytes(data)


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose SOF header claims width x height."""
    data = bytearray(encode(scene(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    scene(48, 32).save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def _broken_exif_jpeg() -> bytes:
    """EXIF whose IFD offset points far outside the block."""
    exif = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 0x7FFFFFF0)
    data = encode(scene(48, 32), "JPEG")
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + data[2:]


def _data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _image_cases() -> list[Case]:
    good_png = encode(scene())
    good_jpeg = encode(scene(), "JPEG")
    bad = "invalid_input"
    files: list[tuple[str, bytes, str, str]] = [
        ("truncated-png", encode(scene(200, 200))[:400], bad, "truncated"),
        ("truncated-jpeg", good_jpeg[: len(good_jpeg) // 2], bad, "truncated"),
        ("header-only-webp", encode(scene(), "WEBP")[:30], bad, "truncated"),
        ("empty-file", b"", bad, "empty"),
        ("plain-text", b"hello, I am not an image at all", bad, "not a JPEG, PNG or WebP"),
        ("svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', bad,
         "not a JPEG, PNG or WebP"),
        ("polyglot-jpeg-html", b"\xff\xd8\xff\xe0<html><script>alert(1)</script></html>", bad, "corrupt"),
        ("polyglot-gif-js", b"GIF89a/*\x01\x00\x01\x00*/=1;alert(1)//", bad, "GIF images are not accepted"),
        ("gif", encode(scene(), "GIF"), bad, "GIF images are not accepted"),
        ("tiff", encode(scene(), "TIFF"), bad, "TIFF images are not accepted"),
        ("bmp", encode(scene(), "BMP"), bad, "BMP images are not accepted"),
        ("psd-magic", b"8BPS\x00\x01" + b"\x00" * 40, bad, "PSD images are not accepted"),
        # Pillow refuses these itself inside Image.open (over ~179 Mpx): the message is still ours.
        ("png-bomb", png_bomb(), bad, "900000000 pixels, over the 40000000-pixel limit"),
        ("png-bomb-sides-in-limit", png_bomb(15_000, 15_000), bad, "225000000 pixels, over the 40000000-pixel limit"),
        # Pillow only warns (89-179 Mpx); the worker's log stays free of the warning.
        ("png-bomb-pillow-warns-about", png_bomb(12_000, 12_000), bad, "12000x12000 = 144000000 pixels, over the"),
        ("png-long-side", png_bomb(20_000, 10), bad, "side over the 16384-pixel limit"),
        ("jpeg-bomb-header", _jpeg_declaring(60_000, 60_000), bad, "3600000000 pixels, over the 40000000-pixel limit"),
        ("png-ztxt-bomb", _ztxt_bomb(), bad, "corrupt"),
        ("png-bad-crc", _bad_crc_png(), bad, "corrupt"),
        ("scan-padded-jpeg", scan_padded_jpeg(20_000, (256, 256)), bad, "scans, over the limit of 100"),
        ("over-byte-cap", b"\x89PNG\r\n\x1a\n" + b"\x00" * (21 * 1024 * 1024), bad, "20971520"),
        # Odd but valid: decoded, converted to RGB, turned upright.
        ("cmyk-jpeg", encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"), SUCCEEDED, ""),
        ("sixteen-bit-png", encode(Image.new("I;16", (32, 32), 30000)), SUCCEEDED, ""),
        ("exif-rotated", _exif_jpeg(8), SUCCEEDED, ""),
        ("exif-broken-offset", _broken_exif_jpeg(), SUCCEEDED, ""),
    ]
    cases = [Case(f"file/{name}", "caption", MESSAGE, {"image": UPLOAD}, expect, fragment, upload=data)
             for name, data, expect, fragment in files]
    cases += [
        Case("inline/bomb", "caption", MESSAGE, {"image": _data_uri(png_bomb())}, bad, "pixels"),
        Case("inline/not-base64", "caption", MESSAGE, {"image": "data:image/png;base64,@@not base64@@"}, bad,
             "not valid base64"),
        Case("inline/no-base64-marker", "caption", MESSAGE, {"image": "data:image/png," + "A" * 40}, bad,
             "data URI of the form"),
        # 16 labels on 35 Mpx: one full-size mask per label is 560 M mask pixels.
        Case("segment/labels-x-pixels", "segment", MESSAGE,
             {"image": UPLOAD, "labels": [f"thing {n}" for n in range(16)]}, bad,
             "16 labels on a 7000x5000 image", upload=encode(Image.new("RGB", (7000, 5000), (90, 120, 200)))),
        Case("sdk/bytes-not-an-image", "caption", SDK, {"image": b"MZ\x90\x00 not an image"}, bad,
             "not a JPEG, PNG or WebP"),
        Case("sdk/good-png", "caption", SDK, {"image": good_png}, SUCCEEDED),
    ]
    return cases


def _request_cases() -> list[Case]:
    bad = "invalid_input"
    image = {"image": UPLOAD}
    rows: list[tuple[str, str, Any, str]] = [
        ("caption", "image-is-a-number", {"image": 12345}, "must be a URI string, got int"),
        ("caption", "image-missing", {}, "an image is needed"),
        ("caption", "request-is-a-list", [UPLOAD], "must be an object, got list"),
        ("caption", "request-is-null", None, "must be an object, got NoneType"),
        ("caption", "unknown-field", {**image, "trust_remote_code": True}, "unknown caption parameter(s): trust_remote_code"),
        ("caption", "beams-zero", {**image, "num_beams": 0}, "num_beams 0 is below the minimum 1"),
        ("caption", "tokens-huge", {**image, "max_new_tokens": 10**30}, "exceeds the maximum 256"),
        ("caption", "tokens-nan", {**image, "max_new_tokens": math.nan}, "must be an integer, got float"),
        ("caption", "prompt-is-an-object", {**image, "prompt": {"$ne": ""}}, "prompt must be a string, got dict"),
        ("caption", "prompt-with-nul", {**image, "prompt": "a photo of\x00"}, "NUL"),
        ("segment", "threshold-inf", {**image, "threshold": math.inf}, "threshold must be finite"),
        ("segment", "threshold-nan", {**image, "threshold": math.nan}, "threshold must be finite"),
        ("segment", "threshold-negative", {**image, "threshold": -0.5}, "outside [0.0, 1.0]"),
        ("segment", "labels-a-string", {**image, "labels": "cat"}, "labels must be a list of strings, got str"),
        ("segment", "labels-empty", {**image, "labels": []}, "must not be an empty list"),
        ("segment", "labels-seventeen", {**image, "labels": ["x"] * 17}, "17 labels exceed the limit 16"),
        ("segment", "label-a-number", {**image, "labels": [123]}, "labels[0] must be a string, got int"),
        ("segment", "label-huge", {**image, "labels": ["y" * 5000]}, "more than the limit 100"),
        ("generate", "prompt-empty", {"prompt": ""}, "prompt must not be empty"),
        ("generate", "prompt-blank", {"prompt": " \t\n "}, "prompt must not be empty"),
        ("generate", "prompt-huge", {"prompt": "fox " * 50_000}, "more than the limit 2000"),
        ("generate", "steps-bool", {"prompt": "x", "steps": True}, "steps must be an integer, got bool"),
        ("generate", "steps-huge", {"prompt": "x", "steps": 10**18}, "exceeds the maximum 100"),
        ("generate", "width-negative", {"prompt": "x", "width": -512}, "width -512 is below the minimum 64"),
        ("generate", "width-not-multiple", {"prompt": "x", "width": 100}, "not a multiple of 8"),
        ("generate", "seed-negative", {"prompt": "x", "seed": -1}, "seed -1 is below the minimum 0"),
        ("generate", "images-a-string", {"prompt": "x", "num_images": "4"}, "num_images must be an integer, got str"),
        ("generate", "guidance-nan", {"prompt": "x", "guidance_scale": math.nan}, "must be finite"),
        ("generate", "guidance-neg-inf", {"prompt": "x", "guidance_scale": -math.inf}, "must be finite"),
        ("generate", "work-over-cap", {"prompt": "x", "width": 2048, "height": 2048, "steps": 100, "num_images": 8},
         "pixel-steps exceeds the per-job limit"),
        ("generate", "unknown-fields", {"prompt": "x", "custom_pipeline": "evil", "scheduler": "x"},
         "unknown generate parameter(s): custom_pipeline, scheduler"),
    ]
    cases = [
        Case(f"request/{kind}-{name}", kind, MESSAGE, request, bad, fragment,
             upload=encode(scene()) if isinstance(request, dict) and request.get("image") == UPLOAD else None)
        for kind, name, request, fragment in rows
    ]
    cases += [
        Case("sdk/generate-work-over-cap", "generate", SDK,
             {"prompt": "x", "width": 2048, "height": 2048, "steps": 100, "num_images": 8}, bad,
             "pixel-steps exceeds the per-job limit"),
        Case("sdk/generate-nan-guidance", "generate", SDK, {"prompt": "x", "guidance_scale": math.nan}, bad,
             "must be finite"),
        # Terminal escapes in a prompt are the model's business (and stripped when printed).
        Case("request/generate-control-characters", "generate", MESSAGE,
             {"prompt": "fox\x1b[2J\x07\r", "width": 64, "height": 64, "steps": 1}, SUCCEEDED),
    ]
    return cases


def _url_cases() -> list[Case]:
    bad = "invalid_input"
    urls: list[tuple[str, str, str]] = [
        ("metadata", "http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("metadata-ipv6", "http://[fd00:ec2::254]/latest/", "cloud metadata"),
        ("private", "http://10.0.0.1/x.png", "private"),
        ("mapped-loopback", "http://[::ffff:127.0.0.2]/x.png", "loopback"),
        ("hex-loopback", "http://0x7f.2/x.png", "loopback"),
        ("decimal-private", "http://3232235777/x.png", "private"),
        ("loopback-name", "http://api.localhost./x.png", "refused"),
        ("redis-port", "http://93.184.216.34:6379/", "port 6379 is not allowed"),
        ("ssh-port", "https://93.184.216.34:22/", "port 22 is not allowed"),
        ("credentials", "http://user:secret@93.184.216.34/x.png", "credentials"),
        ("control-characters", "http://93.184.216.34/\x1b[2J.png", "control characters"),
        ("ftp", "ftp://93.184.216.34/x.png", "unsupported scheme"),
        ("gopher", "gopher://127.0.0.1:6379/_FLUSHALL", "unsupported scheme"),
        ("local-file", "file:///etc/passwd", "outside the storage folder"),
        ("other-bucket", "s3://other-team/hr/passport.png", "cannot be read"),
        ("own-bucket-other-prefix", "s3://visionq-test/elsewhere/secret.png", "cannot be read"),
        ("slow-headers", f"{SERVER}/drip-headers", "did not finish within"),
        ("silent-server", f"{SERVER}/silent", "did not finish within"),
        ("huge-body", f"{SERVER}/huge", "over the"),
        ("redirect-to-metadata", f"{SERVER}/redirect", "redirect"),
        ("reason-with-escapes", f"{SERVER}/escapes", "answered HTTP 500"),
    ]
    return [Case(f"url/{name}", "caption", MESSAGE, {"image": url}, bad, fragment) for name, url, fragment in urls]


def _forged_cases() -> list[Case]:
    request = {"image": UPLOAD}
    png = encode(scene())
    return [
        Case("forged/path-traversal-id", "caption", RECORD, request, DROPPED, upload=png,
             job_id="../../forged-a", record_id="../../forged-a"),
        Case("forged/record-id-differs", "caption", RECORD, request, DROPPED, upload=png,
             job_id="0123456789abcdef0123456789abcdef", record_id="../forged-b"),
        Case("forged/id-not-a-string", "caption", RECORD, request, DROPPED, upload=png, job_id=12345,
             record_id="forged-c"),
    ]


def cases() -> list[Case]:
    return _image_cases() + _request_cases() + _url_cases() + _forged_cases()


def write(directory: Path) -> int:
    """The corpus as files: cases.json (uploads by file name) and one file per upload."""
    directory.mkdir(parents=True, exist_ok=True)
    listing = []
    for case in cases():
        entry = asdict(case)
        if case.upload is not None:
            file_name = case.name.replace("/", "--") + ".bin"
            (directory / file_name).write_bytes(case.upload)
            entry["upload"] = file_name
        listing.append(entry)
    (directory / "cases.json").write_text(json.dumps(listing, indent=1, default=repr))
    return len(listing)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bad-inputs")
    print(f"{write(out)} cases written to {out}")
