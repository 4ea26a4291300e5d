"""Encoding output images as PNG, fast at the level the worker ships with.

A worker's CPU goes to its outputs' PNGs more than to anything else it does around the model
(DESIGN: encoding is often longer than the model). Pillow chooses a filter for every row by
trying five of them (libpng's adaptive heuristic), and has no option to choose one: on a
512x512 photo that choice is about half of its level-1 encode. At level 1 the worker
writes every row with PNG's Sub filter instead, as OpenCV's and imagecodecs' speed settings do,
and deflates it with ISA-L (the `isal` package: Intel's SIMD deflate, the zlib stream PNG
requires). The benchmark's photo-like image at 512 px: 2.3 ms and 375 KB, where zlib's level 1
(run-length strategy) took 5.6 ms for 419 KB and Pillow's level 1 takes 17.6 ms for 373 KB; at
1024 px 9 ms against 22 and 70. Other levels (VISIONQ_PNG_COMPRESS_LEVEL, for smaller files)
and other image modes go through Pillow. numpy and ISA-L release the interpreter lock here, as
Pillow's encoder does, so the model thread keeps running meanwhile.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from isal import isal_zlib
from PIL import Image

FAST_LEVEL = 1
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SUB_FILTER = 1  # each byte minus the same byte of the pixel to its left (PNG spec, 9.2)
_FORMATS = {"L": (1, 0), "RGB": (3, 2), "RGBA": (4, 6)}  # mode: (bytes per pixel, PNG colour type)


def encode_png(image: Image.Image, compress_level: int) -> bytes:
    if compress_level == FAST_LEVEL and image.mode in _FORMATS:
        return _sub_filtered_png(image)
    # Pillow's default level 6 takes ~4x longer than level 1 on a 512x512 image
    # (50-60 ms, more than many models) for files only 15-40 % smaller.
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def _sub_filtered_png(image: Image.Image) -> bytes:
    bytes_per_pixel, colour_type = _FORMATS[image.mode]
    width, height = image.size
    rows = np.asarray(image).reshape(height, width * bytes_per_pixel)
    filtered = np.empty((height, 1 + width * bytes_per_pixel), np.uint8)
    filtered[:, 0] = _SUB_FILTER  # every row starts with its filter type
    filtered[:, 1:1 + bytes_per_pixel] = rows[:, :bytes_per_pixel]  # nothing to the left of the first pixel
    # uint8 arithmetic wraps modulo 256, as the filter is defined
    np.subtract(rows[:, bytes_per_pixel:], rows[:, :-bytes_per_pixel], out=filtered[:, 1 + bytes_per_pixel:])
    data = isal_zlib.compress(filtered, FAST_LEVEL)  # a zlib stream, 32 KiB window, as PNG's IDAT needs
    # 8 bits a sample, deflate, adaptive filter types (here all Sub), no interlace
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
