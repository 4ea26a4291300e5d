"""decode_image on a corpus built here with Pillow: the good, the broken, the hostile.

image_extension (tasks/images.py) is tested here too, next to the decoder it feeds.
"""
from __future__ import annotations

import io
import random
import struct
import zlib

import pytest
from PIL import Image, ImageFile

from tasks.errors import InvalidInput
from tasks.images import image_extension
from tasks.limits import Limits
from tests.support.corpus import SUCCEEDED, UPLOAD, Case, cases
from tests.support.images import scan_padded_jpeg
from worker.images import count_jpeg_scans, decode_image

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def encode(image: Image.Image, image_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **params)
    return buffer.getvalue()


def noise(size: tuple[int, int] = (128, 128)) -> Image.Image:
    """Incompressible pixels, so that cutting the file cuts image data."""
    return Image.frombytes("RGB", size, random.Random(0).randbytes(size[0] * size[1] * 3))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's header)."""
    data = bytearray(encode(Image.new("1", (8, 8)), "PNG"))
    # Signature (8), IHDR length (4) and type (4), then width and height; the CRC
    # after the 13 IHDR bytes covers type and data.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def close_to(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any image's pixels get decoded."""

    def load(self):
        raise AssertionError(f"pixels of a {self.size} image were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


# --- image_extension -------------------------------------------------------------


@pytest.mark.parametrize(("image_format", "extension"), [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")])
def test_image_extension_names_allowed_formats(image_format: str, extension: str) -> None:
    assert image_extension(encode(Image.new("RGB", (4, 4)), image_format)) == extension


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GIF89a" + b"\0" * 20,
        b"RIFF\x24\x00\x00\x00WAVEfmt ",
        b"\xff\xd8",
        b"\x89PNG\r\n",
        b"hello world",
    ],
)
def test_image_extension_is_none_for_anything_else(data: bytes) -> None:
    assert image_extension(data) is None


# --- good images ------------------------------------------------------------------


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_allowed_formats_decode_to_rgb(image_format: str) -> None:
    image = decode_image(encode(Image.new("RGB", (40, 30), RED), image_format))
    assert (image.mode, image.size) == ("RGB", (40, 30))
    assert close_to(image.getpixel((20, 15)), RED)


def test_decoded_image_is_detached_from_the_input() -> None:
    image = decode_image(encode(Image.new("RGB", (8, 8), RED), "PNG"))
    assert image.copy().tobytes() == image.tobytes()  # usable after decode_image returned
    assert getattr(image, "fp", None) is None


def test_exif_orientation_is_applied() -> None:
    # Left half red, right half blue, stored sideways: orientation 6 means "turn 90° clockwise".
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright = decode_image(encode(image, "JPEG", quality=95, exif=exif))
    assert upright.size == (20, 40)
    assert close_to(upright.getpixel((10, 5)), RED, 40)  # the left edge is now the top
    assert close_to(upright.getpixel((10, 35)), BLUE, 40)


def quadrants(size: tuple[int, int]) -> Image.Image:
    """Red, blue, white and black quarters: where each lands shows scale and orientation."""
    width, height = size
    image = Image.new("RGB", size, RED)
    image.paste(BLUE, (width // 2, 0, width, height // 2))
    image.paste(WHITE, (0, height // 2, width // 2, height))
    image.paste((0, 0, 0), (width // 2, height // 2, width, height))
    return image


def assert_quadrants(image: Image.Image) -> None:
    width, height = image.size
    for (x, y), color in {(0.25, 0.25): RED, (0.75, 0.25): BLUE, (0.25, 0.75): WHITE, (0.75, 0.75): (0, 0, 0)}.items():
        assert close_to(image.getpixel((int(x * width), int(y * height))), color, 40), (x, y)


@pytest.mark.parametrize(("image_format", "size", "min_side", "expected"), [
    ("JPEG", (1600, 1200), 200, (400, 300)),  # decoded at 1/4 (1/6 is no JPEG scale); 300 // 200 = 1: no box
    ("JPEG", (1600, 1200), 100, (200, 150)),  # 1/8 at decode, then nothing left to reduce
    ("JPEG", (3200, 2400), 100, (134, 100)),  # 1/8 at decode (400x300), then a box average by 3
    ("PNG", (900, 600), 100, (150, 100)),  # no scaled decoding: a box average by 6
    ("WEBP", (800, 400), 100, (200, 100)),  # by 4
    ("JPEG", (300, 300), 200, (300, 300)),  # under twice min_side: as it is
    ("PNG", (64, 48), 100, (64, 48)),  # smaller than min_side: as it is, never enlarged
])
def test_a_large_picture_decodes_scaled_down_to_at_least_min_side(
    image_format: str, size: tuple[int, int], min_side: int, expected: tuple[int, int],
) -> None:
    data = encode(quadrants(size), image_format, **({} if image_format == "PNG" else {"quality": 95}))
    image = decode_image(data, min_side=min_side)
    assert image.size == expected and image.mode == "RGB"
    assert_quadrants(image)
    assert decode_image(data).size == size  # without min_side: every pixel


def test_a_scaled_down_jpeg_is_still_turned_upright() -> None:
    # Stored 1600x800 sideways (orientation 6): upright it is 800 wide, 1600 tall.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(quadrants((1600, 800)), "JPEG", quality=95, exif=exif)
    image = decode_image(data, min_side=100)
    assert image.size == (100, 200)  # decoded at 1/8, then turned
    assert image.size == tuple(side // 8 for side in decode_image(data).size)


def test_min_side_leaves_the_limits_on_the_declared_size(no_pixel_decoding: None) -> None:
    with pytest.raises(InvalidInput, match="pixel limit"):
        decode_image(png_declaring(4000, 3000), Limits(max_image_pixels=10_000_000), min_side=100)


@pytest.mark.parametrize(("image_format", "params"), [("PNG", {}), ("WEBP", {"lossless": True})])
def test_animations_give_their_first_frame(image_format: str, params: dict[str, object]) -> None:
    frames = [Image.new("RGB", (16, 16), color) for color in (RED, BLUE, WHITE)]
    data = encode(frames[0], image_format, save_all=True, append_images=frames[1:], duration=100, **params)
    assert Image.open(io.BytesIO(data)).n_frames == 3  # the corpus really is animated
    image = decode_image(data)
    assert image.mode == "RGB"
    assert close_to(image.getpixel((8, 8)), RED)


def test_multi_picture_jpeg_decodes_as_jpeg_first_picture() -> None:
    # Pillow names JPEGs with extra pictures (phone cameras) "MPO".
    data = encode(Image.new("RGB", (16, 16), RED), "MPO", save_all=True, append_images=[Image.new("RGB", (16, 16), BLUE)])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert close_to(decode_image(data).getpixel((8, 8)), RED)


@pytest.mark.parametrize(
    ("image", "image_format", "expected"),
    [
        (Image.new("RGBA", (8, 8), (255, 0, 0, 255)), "PNG", RED),
        (Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "PNG", WHITE),  # transparent on white
        (Image.new("RGBA", (8, 8), (0, 0, 0, 128)), "PNG", (127, 127, 127)),
        (Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "WEBP", WHITE),
        (Image.new("LA", (8, 8), (100, 255)), "PNG", (100, 100, 100)),
        (Image.new("LA", (8, 8), (100, 0)), "PNG", WHITE),
        (Image.new("L", (8, 8), 77), "PNG", (77, 77, 77)),
        (Image.new("L", (8, 8), 77), "JPEG", (77, 77, 77)),
        (Image.new("1", (8, 8), 1), "PNG", WHITE),
        (Image.new("RGB", (8, 8), (0, 128, 255)).quantize(4), "PNG", (0, 128, 255)),
        (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", RED),
        (Image.new("I;16", (8, 8), 65535), "PNG", WHITE),
        # A plain convert would clip 16-bit grey to white; it is scaled instead.
        (Image.new("I;16", (8, 8), 32768), "PNG", (128, 128, 128)),
        (Image.new("I;16", (8, 8), 0), "PNG", (0, 0, 0)),
    ],
    ids=lambda value: getattr(value, "mode", str(value)),
)
def test_modes_are_converted_to_rgb(image: Image.Image, image_format: str, expected: tuple[int, int, int]) -> None:
    data = encode(image, image_format)
    assert Image.open(io.BytesIO(data)).mode == image.mode  # the file really carries that mode
    decoded = decode_image(data)
    assert decoded.mode == "RGB"
    assert close_to(decoded.getpixel((4, 4)), expected, 3)


def test_palette_with_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 255, 0, 0])
    data = encode(image, "PNG", transparency=1)
    assert decode_image(data).getpixel((4, 4)) == WHITE


# --- bad bytes ----------------------------------------------------------------------


def test_empty_data_is_refused() -> None:
    with pytest.raises(InvalidInput, match="image is empty"):
        decode_image(b"")


def test_random_bytes_are_not_an_image() -> None:
    with pytest.raises(InvalidInput, match="^not a JPEG, PNG or WebP image$"):
        decode_image(random.Random(1).randbytes(4096))


def test_byte_cap_is_checked_first(no_pixel_decoding: None) -> None:
    data = encode(noise(), "PNG")
    with pytest.raises(InvalidInput, match=f"image is {len(data)} bytes, over the 1000-byte limit"):
        decode_image(data, Limits(max_image_bytes=1000))


@pytest.mark.parametrize(("image_format", "name"), [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_other_formats_are_refused_by_name(image_format: str, name: str) -> None:
    data = encode(Image.new("RGB", (8, 8), RED), image_format)
    with pytest.raises(InvalidInput, match=f"^{name} images are not accepted, only JPEG, PNG or WebP$"):
        decode_image(data)


@pytest.mark.parametrize(("image_format", "name"), [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF")])
def test_a_submit_names_a_refused_format_as_the_worker_does(image_format: str, name: str) -> None:
    from producer.client import inline_image

    data = encode(Image.new("RGB", (8, 8), RED), image_format)
    with pytest.raises(InvalidInput, match=f"^image: {name} images are not accepted, only JPEG, PNG or WebP$"):
        inline_image(data)
    with pytest.raises(InvalidInput, match="^image is not a JPEG, PNG or WebP file$"):
        inline_image(b"<html>not an image</html>")


def test_formats_follow_the_limits() -> None:
    data = encode(Image.new("RGB", (8, 8), RED), "PNG")
    with pytest.raises(InvalidInput, match="^PNG images are not accepted, only JPEG$"):
        decode_image(data, Limits(image_formats=("JPEG",)))


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_images_are_refused(image_format: str, keep: float) -> None:
    data = encode(noise(), image_format, quality=90)
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        decode_image(data[: int(len(data) * keep)])


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_a_bare_header_is_refused_as_truncated(image_format: str) -> None:
    data = encode(noise((16, 16)), image_format)
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        decode_image(data[:40])


def test_truncated_images_stay_refused_when_a_library_allows_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = encode(noise(), "JPEG", quality=90)
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_corrupt_png_chunk_is_refused() -> None:
    data = bytearray(encode(noise((32, 32)), "PNG"))
    data[40] ^= 0xFF  # inside IDAT: its CRC no longer matches
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        decode_image(bytes(data))


# --- size limits, checked on the declared size ---------------------------------------


def test_decompression_bomb_is_refused_before_decoding(no_pixel_decoding: None) -> None:
    # 8000 x 8000 one-bit pixels compress to a few kB; as RGB they would take 192 MB.
    data = encode(Image.new("1", (8000, 8000)), "PNG")
    assert len(data) < 100_000
    with pytest.raises(InvalidInput, match="8000x8000 = 64000000 pixels, over the 40000000-pixel limit"):
        decode_image(data)


def test_pixel_limit_does_not_depend_on_pillows(monkeypatch: pytest.MonkeyPatch, no_pixel_decoding: None) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own guard off
    with pytest.raises(InvalidInput, match="7000x7000 = 49000000 pixels, over the 40000000-pixel limit"):
        decode_image(png_declaring(7000, 7000))


def test_pillows_own_bomb_error_becomes_invalid_input(no_pixel_decoding: None) -> None:
    # Limits raised past Pillow's: Pillow refuses 400 Mpx on open, which must still read as bad input.
    limits = Limits(max_image_pixels=10**9, max_image_side=100_000)
    with pytest.raises(InvalidInput, match="too many pixels to decode safely .*400000000 pixels"):
        decode_image(png_declaring(20_000, 20_000), limits)


def test_a_huge_declared_size_is_refused_with_default_limits(no_pixel_decoding: None) -> None:
    # Pillow's guard fires inside Image.open, before ours sees the size: the message is still ours.
    with pytest.raises(InvalidInput, match="^image is 900000000 pixels, over the 40000000-pixel limit$"):
        decode_image(png_declaring(30_000, 30_000))
    with pytest.raises(InvalidInput, match="^image is 225000000 pixels, over the 40000000-pixel limit$"):
        decode_image(png_declaring(15_000, 15_000))  # both sides under the side limit


def test_a_side_over_the_limit_is_refused(no_pixel_decoding: None) -> None:
    data = encode(Image.new("1", (20_000, 8)), "PNG")
    with pytest.raises(InvalidInput, match="image is 20000x8, a side over the 16384-pixel limit"):
        decode_image(data)


def test_limits_are_the_callers(no_pixel_decoding: None) -> None:
    data = encode(Image.new("RGB", (100, 50)), "PNG")
    with pytest.raises(InvalidInput, match="100x50 = 5000 pixels, over the 4999-pixel limit"):
        decode_image(data, Limits(max_image_pixels=4999))
    with pytest.raises(InvalidInput, match="a side over the 99-pixel limit"):
        decode_image(data, Limits(max_image_side=99))


def test_an_image_at_the_limits_decodes() -> None:
    data = encode(Image.new("RGB", (100, 50), RED), "PNG")
    assert decode_image(data, Limits(max_image_pixels=5000, max_image_side=100)).size == (100, 50)


# --- JPEG scans ------------------------------------------------------------------


def test_baseline_and_progressive_jpegs_have_few_scans() -> None:
    image = noise((64, 64))
    assert count_jpeg_scans(encode(image, "JPEG")) == 1
    assert 1 < count_jpeg_scans(encode(image, "JPEG", progressive=True)) <= 20


def test_markers_inside_exif_and_entropy_data_are_not_counted() -> None:
    # An EXIF block holding SOS-looking bytes, and noise whose compressed data is
    # full of stuffed 0xFF00 bytes: neither is a scan.
    exif = Image.Exif()
    exif[0x010E] = "\xff\xda\x00\x08" * 50  # ImageDescription
    data = encode(noise((256, 256)), "JPEG", exif=exif.tobytes(), quality=100)
    assert b"\xff\x00" in data
    assert count_jpeg_scans(data) == 1


def test_only_the_first_picture_of_a_multi_picture_jpeg_counts() -> None:
    frames = [Image.new("RGB", (16, 16), RED), Image.new("RGB", (16, 16), BLUE)]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    assert count_jpeg_scans(data) == 1


SCAN_PADDED = scan_padded_jpeg(5_000)


def test_scan_padded_jpeg_is_refused_before_decoding(no_pixel_decoding: None) -> None:
    data = SCAN_PADDED
    with pytest.raises(InvalidInput, match=r"JPEG has 50\d\d scans, over the limit of 100"):
        decode_image(data)


def test_scan_padded_jpeg_is_a_jpeg_the_decoder_would_work_through() -> None:
    # Without our limit the padded file decodes (slowly, scan after scan): the
    # refusal above is what keeps it from the decoder, not a parse failure.
    data = scan_padded_jpeg(300)
    assert count_jpeg_scans(data) > 300
    assert decode_image(data, Limits(max_jpeg_scans=10_000)).size == (64, 64)


def test_a_flood_of_marker_segments_is_refused_without_walking_it_all(no_pixel_decoding: None) -> None:
    data = encode(noise((16, 16)), "JPEG")
    flood = data[:2] + b"\xff\xfe\x00\x02" * 1_000_000 + data[2:]  # a million empty comments, 4 MB
    with pytest.raises(InvalidInput, match="JPEG has more than 100000 marker segments"):
        decode_image(flood)
    assert count_jpeg_scans(data[:2] + b"\xff\xfe\x00\x02" * 100 + data[2:]) == 1


def test_scan_limit_is_the_callers() -> None:
    data = encode(noise((64, 64)), "JPEG", progressive=True)
    scans = count_jpeg_scans(data)
    assert decode_image(data, Limits(max_jpeg_scans=scans)).size == (64, 64)
    with pytest.raises(InvalidInput, match=f"JPEG has {scans} scans, over the limit of {scans - 1}"):
        decode_image(data, Limits(max_jpeg_scans=scans - 1))


# The corpus's image files (tests/support/corpus.py), decoded here without a worker.
# The integration test sends the same files through a real one.
CORPUS_FILES = [c for c in cases() if c.name.startswith("file/") and c.name != "file/over-byte-cap"]


@pytest.mark.parametrize("case", CORPUS_FILES, ids=lambda case: case.name)
def test_corpus_files_reach_their_documented_outcome(case: Case) -> None:
    assert case.request == {"image": UPLOAD} and case.upload is not None
    if case.expect == SUCCEEDED:
        assert decode_image(case.upload).mode == "RGB"
        return
    with pytest.raises(InvalidInput) as caught:
        decode_image(case.upload)
    assert case.fragment.lower() in caught.value.message.lower()
