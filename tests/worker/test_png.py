"""The worker's PNG encoder: the same pixels back through Pillow, for any size and supported mode."""
from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from worker.png import FAST_LEVEL, encode_png

CHANNELS = {"L": 1, "RGB": 3, "RGBA": 4}


def decoded(data: bytes) -> Image.Image:
    Image.open(io.BytesIO(data)).verify()  # chunk CRCs and structure
    return Image.open(io.BytesIO(data))


@settings(max_examples=60, deadline=None)
@given(mode=st.sampled_from(sorted(CHANNELS)), width=st.integers(1, 40), height=st.integers(1, 12),
       seed=st.integers(0, 2**32 - 1))
def test_fast_level_round_trips_every_pixel(mode: str, width: int, height: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, CHANNELS[mode]), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(axis=2) if mode == "L" else pixels, mode)
    back = decoded(encode_png(image, FAST_LEVEL))
    assert back.mode == mode and back.size == (width, height)
    assert np.array_equal(np.asarray(back), np.asarray(image))


def test_fast_level_is_smaller_than_raw_on_a_photo_like_image() -> None:
    yy, xx = np.mgrid[:256, :256]
    pixels = np.stack([xx, yy, (xx + yy) // 2], axis=2).astype(np.uint8)
    data = encode_png(Image.fromarray(pixels), FAST_LEVEL)
    assert len(data) < pixels.nbytes // 4  # deflated, not stored
    assert np.array_equal(np.asarray(decoded(data)), pixels)


@pytest.mark.parametrize(("mode", "level"), [("RGB", 6), ("L", 0), ("P", FAST_LEVEL), ("LA", FAST_LEVEL),
                                             ("I;16", FAST_LEVEL), ("1", FAST_LEVEL)])
def test_other_levels_and_modes_are_pillows_own(mode: str, level: int) -> None:
    image = Image.new(mode, (17, 9))
    image.putpixel((3, 4), 1)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level)
    assert encode_png(image, level) == buffer.getvalue()
