"""Image format sniffing by magic bytes (no decoding; torch- and worker-free)."""
from __future__ import annotations


def image_extension(data: bytes) -> str | None:
    """"jpg", "png" or "webp" from the first bytes, or None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None
