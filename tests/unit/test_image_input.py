"""Query images are hostile input: formats, caps on bytes and pixels, first frame, EXIF orientation, refusals."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from clipsearch.image_input import ImageInputError, ImageLimits, load_query_image


def encoded(fmt: str, size: tuple[int, int] = (40, 30), color=(200, 30, 30), mode: str = "RGB", **save) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format=fmt, **save)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_the_four_formats_decode_to_rgb(fmt: str) -> None:
    img = load_query_image(encoded(fmt))
    assert img.source_format == fmt
    assert img.image.mode == "RGB"
    assert img.image.size == (40, 30)
    assert (img.width, img.height) == (40, 30)
    assert len(img.sha256) == 64
    thumb = img.thumbnail(16)
    assert Image.open(io.BytesIO(thumb)).format == "JPEG"


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    img = load_query_image(out.getvalue())
    assert img.frames == 3
    pixel = img.image.getpixel((10, 10))
    assert isinstance(pixel, tuple)
    r, g, b = pixel[:3]
    assert r > 200
    assert g < 50
    assert b < 50
    assert "first of 3 frames" in img.describe()


def test_exif_orientation_is_applied() -> None:
    base = Image.new("RGB", (60, 20), (10, 200, 10))
    exif = base.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = io.BytesIO()
    base.save(out, format="JPEG", exif=exif.tobytes())
    img = load_query_image(out.getvalue())
    assert img.oriented
    assert img.image.size == (20, 60)  # shown upright, as every viewer shows it
    assert (img.width, img.height) == (60, 20)  # as stored


def test_transparency_is_composited_onto_white() -> None:
    img = load_query_image(encoded("PNG", mode="RGBA", color=(0, 0, 0, 0)))
    assert img.image.getpixel((1, 1)) == (255, 255, 255)


def test_byte_cap_is_413_before_parsing() -> None:
    data = encoded("PNG", size=(64, 64))
    with pytest.raises(ImageInputError) as info:
        load_query_image(data, ImageLimits(max_bytes=len(data) - 1), field="terms[0].image")
    assert info.value.status == 413
    assert str(info.value).startswith("terms[0].image:")
    assert "limit is" in str(info.value)


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` (a decompression bomb's shape): IHDR + a little IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    idat = zlib.compress(row * 4, 9)  # far fewer rows than claimed: never decoded anyway
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_pixel_cap_refuses_a_decompression_bomb_before_decoding() -> None:
    bomb = _png_header_only(8_000, 8_000)  # 64 megapixels claimed in a few kB
    assert len(bomb) < 10_000
    with pytest.raises(ImageInputError) as info:
        load_query_image(bomb, ImageLimits(max_pixels=40_000_000))
    assert info.value.status == 422
    assert "8000x8000 = 64000000 pixels; the limit is 40000000" in info.value.reason
    giant = _png_header_only(50_000, 50_000)  # 2.5 gigapixels: PIL itself refuses it when opening
    with pytest.raises(ImageInputError) as info:
        load_query_image(giant, ImageLimits(max_pixels=200_000_000))
    assert info.value.status == 422
    assert "decompression bomb" in info.value.reason


def test_truncated_image_is_422_with_the_reason() -> None:
    data = encoded("PNG", size=(200, 200), color=(1, 2, 3))
    noisy = Image.effect_noise((300, 300), 80).convert("RGB")
    out = io.BytesIO()
    noisy.save(out, format="JPEG", quality=90)
    jpeg = out.getvalue()
    for cut in (data[: len(data) // 2], jpeg[: len(jpeg) // 2]):
        with pytest.raises(ImageInputError) as info:
            load_query_image(cut)
        assert info.value.status == 422
        assert "truncated" in info.value.reason or "decoded" in info.value.reason


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, this is text", b"\xff\xd8\xff\xe0 not really a jpeg", encoded("BMP"), encoded("TIFF")],
    ids=["empty", "text", "fake-jpeg", "bmp", "tiff"],
)
def test_non_images_and_other_formats_are_422(data: bytes) -> None:
    with pytest.raises(ImageInputError) as info:
        load_query_image(data)
    assert info.value.status == 422
    assert info.value.reason


def test_large_jpeg_is_decoded_at_a_reduced_scale() -> None:
    img = load_query_image(encoded("JPEG", size=(4000, 3000)))
    assert (img.width, img.height) == (4000, 3000)
    assert min(img.image.size) >= 448
    assert img.image.size[0] < 4000
