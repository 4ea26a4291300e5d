"""Small images, good and bad, built in the tests (nothing is downloaded)."""
from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageDraw


def scene(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    image = Image.new("RGB", (width, height), (40 + seed * 20 % 200, 120, 200))
    draw = ImageDraw.Draw(image)
    draw.ellipse([width // 2, 4, width // 2 + 20, 24], fill=(250, 220, 40))
    draw.rectangle([8, height // 2, 40, height - 4], fill=(170, 50, 40))
    return image


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid PNG header declaring a huge size; decoding it would need ~2.7 GB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + width * 3) * 4)  # a few rows; the rest is missing
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def scan_padded_jpeg(extra_scans: int, size: tuple[int, int] = (64, 64)) -> bytes:
    """A valid progressive JPEG followed by `extra_scans` empty AC scans of its first
    component. libjpeg decodes every one of them over the whole picture, so the
    decoding time grows with scans x pixels (20,000 scans on a 0.27 MB file: 78 s)."""
    progressive = io.BytesIO()
    Image.effect_noise(size, 64).convert("RGB").save(progressive, "JPEG", progressive=True, quality=80)
    # SOS: one component (id 1, tables 0/0), spectral selection 1..63, no approximation.
    empty_scan = b"\xff\xda" + struct.pack(">H", 8) + bytes([1, 1, 0x00, 1, 63, 0x00])
    body = progressive.getvalue()
    assert body.endswith(b"\xff\xd9")
    return body[:-2] + empty_scan * extra_scans + b"\xff\xd9"
