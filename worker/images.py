"""Untrusted image bytes to an RGB PIL image, or an InvalidInput that says why not.

Every check that can be made before pixels are decoded is: the byte count, the
format (by magic number, then by the one Pillow plugin allowed to parse it) and
the declared size, which ``Image.open`` reads without allocating the image. A
decompression bomb is therefore refused by our own limits, well under Pillow's
``MAX_IMAGE_PIXELS`` (which only warns at 89 Mpx and refuses at twice that).
"""
from __future__ import annotations

import io
import re
import struct

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from tasks.errors import InvalidInput
from tasks.images import format_list, format_name, image_extension, refused_format_reason, sniff_format, to_rgb
from tasks.limits import DEFAULT_LIMITS, Limits

__all__ = ["MAX_JPEG_SEGMENTS", "count_jpeg_scans", "decode_image", "reduced"]

# Pillow calls a JPEG carrying extra pictures (many phone cameras) "MPO"; its first
# frame is the JPEG's own picture.
_FORMAT_ALIASES = {"MPO": "JPEG"}
# What Pillow's parsers and decoders raise on broken files.
_CORRUPT = (OSError, SyntaxError, ValueError, EOFError, struct.error)
# JPEG markers that stand alone (no length field): TEM, RST0-7, SOI.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})
_SOS, _EOI = 0xDA, 0xD9
# Real JPEGs have tens of marker segments. Walking millions (a 20 MB file of empty
# comments) would cost seconds of Python, so the walk itself is bounded.
MAX_JPEG_SEGMENTS = 100_000
# Inside entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or RST0-7;
# any other byte after it (fill bytes 0xFF aside) is the next marker.
_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")
# Pillow's DecompressionBombError: "Image size (N pixels) exceeds limit of M pixels, ...".
_BOMB_PIXELS = re.compile(r"Image size \((\d+) pixels\)")


def decode_image(data: bytes, limits: Limits = DEFAULT_LIMITS, min_side: int | None = None) -> Image.Image:
    """The first frame of `data`, upright (EXIF orientation applied), in RGB.

    With `min_side` (the side a model resizes its input to), a picture at least twice that
    on both sides comes back scaled down by a whole factor, each side still at least
    `min_side`: a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's scaled decoding, as
    Pillow's `thumbnail` does), then any picture is box-averaged (`Image.reduce`). A 12 MP
    photo captioned at 384 px costs an eighth of the CPU (docs/performance.md, `inputs`), and
    the image processor's own resize still makes the model's exact input size from there.
    """
    _check_bytes(data, limits)
    if image_extension(data) == "jpg":
        _check_scans(data, limits)
    # Some libraries switch this process-wide flag on; a truncated upload must be
    # refused here, not decoded into a half-grey picture.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with _open(data, limits) as image:
            _check_size(image.size, limits)
            if min_side is not None:
                # Square, since the EXIF orientation is applied after: either side may end up the width.
                image.draft(None, (min_side, min_side))  # JPEG only; the others ignore it
            image.load()  # the current frame, which is the first: we never seek
            upright = to_rgb(ImageOps.exif_transpose(image))
            return upright if min_side is None else reduced(upright, min_side)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fired first (it runs inside Image.open), before _check_size saw the size.
        raise InvalidInput(_too_many_pixels(exc, limits)) from exc
    except InvalidInput:
        raise
    except _CORRUPT as exc:
        raise InvalidInput(f"image is truncated or corrupt ({exc})") from exc


def _check_bytes(data: bytes, limits: Limits) -> None:
    if not data:
        raise InvalidInput("image is empty (0 bytes)")
    if len(data) > limits.max_image_bytes:
        raise InvalidInput(f"image is {len(data)} bytes, over the {limits.max_image_bytes}-byte limit")


def _check_scans(data: bytes, limits: Limits) -> None:
    """Refuse a JPEG with more scans than the limit, counted without decoding."""
    scans = count_jpeg_scans(data)
    if scans > limits.max_jpeg_scans:
        raise InvalidInput(f"JPEG has {scans} scans, over the limit of {limits.max_jpeg_scans}")


def count_jpeg_scans(data: bytes, max_segments: int = MAX_JPEG_SEGMENTS) -> int:
    """Start-of-scan markers in the first picture of a JPEG (up to its EOI).

    Walks the marker segments by their lengths and jumps over each scan's
    entropy-coded data to the next real marker, so bytes inside compressed data
    or inside a segment (EXIF thumbnails) are never mistaken for markers. More
    than `max_segments` segments is InvalidInput.
    """
    scans, segments, position, size = 0, 0, 2, len(data)  # after SOI
    while position < size:
        segments += 1
        if segments > max_segments:
            raise InvalidInput(f"JPEG has more than {max_segments} marker segments; real images have tens")
        if data[position] != 0xFF:
            break  # not a marker where one must be: the decoder will call it corrupt
        while position < size and data[position] == 0xFF:  # fill bytes
            position += 1
        if position >= size:
            break
        marker = data[position]
        position += 1
        if marker == _EOI:
            break
        if marker in _STANDALONE_MARKERS:
            continue
        if position + 2 > size:
            break
        length = int.from_bytes(data[position:position + 2], "big")
        if length < 2:
            break
        position += length
        if marker == _SOS:
            scans += 1
            found = _NEXT_MARKER.search(data, position)
            position = found.start() if found else size
    return scans


def _open(data: bytes, limits: Limits) -> ImageFile.ImageFile:
    """A lazily opened image (header parsed, no pixels) in one of the allowed formats."""
    try:
        image = Image.open(io.BytesIO(data), formats=limits.image_formats)
    except UnidentifiedImageError:
        raise InvalidInput(_unidentified_reason(data, limits)) from None
    image_format = _FORMAT_ALIASES.get(image.format or "", image.format)
    if image_format not in limits.image_formats:
        image.close()
        raise InvalidInput(refused_format_reason(image_format or "unknown", limits.image_formats))
    return image


def _unidentified_reason(data: bytes, limits: Limits) -> str:
    """Why no allowed plugin would open `data`, from its magic number."""
    image_format = sniff_format(data)
    if image_format is None:
        return f"not a {format_list(limits.image_formats)} image"
    if image_format in limits.image_formats:
        return f"{format_name(image_format)} image is truncated or corrupt"
    return refused_format_reason(image_format, limits.image_formats)


def _too_many_pixels(exc: Exception, limits: Limits) -> str:
    """Pillow's refusal in our limit's words when ours is the lower one (the default: Pillow refuses
    at ~179 Mpx, we at 40), in Pillow's when an operator raised ours past it."""
    found = _BOMB_PIXELS.search(str(exc))
    if found and int(found.group(1)) > limits.max_image_pixels:
        return f"image is {found.group(1)} pixels, over the {limits.max_image_pixels}-pixel limit"
    return f"image has too many pixels to decode safely ({exc})"


def _check_size(size: tuple[int, int], limits: Limits) -> None:
    """Refuse on the declared size, before a single pixel is allocated."""
    width, height = size
    if max(width, height) > limits.max_image_side:
        raise InvalidInput(f"image is {width}x{height}, a side over the {limits.max_image_side}-pixel limit")
    if width * height > limits.max_image_pixels:
        raise InvalidInput(
            f"image is {width}x{height} = {width * height} pixels, over the {limits.max_image_pixels}-pixel limit"
        )


def reduced(image: Image.Image, min_side: int) -> Image.Image:
    """`image` box-averaged by the largest whole factor that keeps both sides >= min_side
    (itself when that factor is 1)."""
    factor = min(image.size) // min_side
    return image.reduce(factor) if factor >= 2 else image
