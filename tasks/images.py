"""Image format sniffing by magic bytes (no decoding; torch- and worker-free), how a refused
format is named, the same words at submit (SDK, gateway) and on the worker, and the one
conversion to RGB both sides make."""
from __future__ import annotations

import io
from typing import Any

from tasks.errors import InvalidInput

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")  # Pillow's names; what image_extension recognises
_EXTENSION_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
# Refused formats we can still name, told apart by magic number only: opening them
# would run parsers we do not otherwise need on bytes we are about to refuse.
_OTHER_SIGNATURES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"8BPS", "PSD"),
    (b"BM", "BMP"),
)
_FORMAT_NAMES = {"WEBP": "WebP"}


def image_extension(data: bytes) -> str | None:
    """"jpg", "png" or "webp" from the first bytes, or None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def sniff_format(data: bytes) -> str | None:
    """Pillow's name of the format ("JPEG", "GIF", ...) from the first bytes, or None."""
    extension = image_extension(data)
    if extension is not None:
        return _EXTENSION_FORMATS[extension]
    for signature, image_format in _OTHER_SIGNATURES:
        if data.startswith(signature):
            return image_format
    return None


def format_name(image_format: str) -> str:
    return _FORMAT_NAMES.get(image_format, image_format)


def format_list(formats: tuple[str, ...]) -> str:
    """("JPEG", "PNG", "WEBP") -> "JPEG, PNG or WebP"."""
    names = [format_name(f) for f in formats]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def refused_format_reason(image_format: str, formats: tuple[str, ...] = ACCEPTED_FORMATS) -> str:
    return f"{format_name(image_format)} images are not accepted, only {format_list(formats)}"


def accepted_extension(data: bytes, what: str = "image") -> str:
    """"jpg", "png" or "webp" for `data`, or InvalidInput saying why a submit refuses it (`what`:
    how to name it, e.g. its file): a format named by its magic number as the worker would name
    it, else not an image of an accepted format."""
    extension = image_extension(data)
    if extension is not None:
        return extension
    image_format = sniff_format(data)
    if image_format is None:
        raise InvalidInput(f"{what} is not a {format_list(ACCEPTED_FORMATS)} file")
    raise InvalidInput(f"{what}: {refused_format_reason(image_format)}")


_SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(image: Any) -> Any:
    """A PIL image in RGB, as every model takes it (the workers' decode, the SDK's PIL uploads)."""
    from PIL import Image

    if image.mode in _SIXTEEN_BIT_MODES:
        # A plain convert would clip 16-bit grey at 255 (all white); scale it instead.
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    if image.has_transparency_data:
        # Models take RGB; transparent pixels become white, as most viewers show them.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, "white")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


# Modes a PNG holds as they are (the workers convert them when they decode); any other (CMYK and
# YCbCr JPEGs, 16-bit variants, float images) is converted to RGB here, exactly as a worker would.
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}


def png_of(image: Any) -> bytes:
    """A PIL image as PNG bytes; InvalidInput for one no PNG can hold (empty, or a mode with no RGB)."""
    if image.width < 1 or image.height < 1:
        raise InvalidInput(f"PIL image is empty ({image.width}x{image.height} pixels)")
    buffer = io.BytesIO()
    try:
        (image if image.mode in _PNG_MODES else to_rgb(image)).save(buffer, format="PNG")
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"PIL image of mode {image.mode} cannot be stored as PNG: {exc}") from None
    return buffer.getvalue()
