"""Image bytes we can trust: decode-verify, normalise to JPEG, and where each photo lives on disk.

The download stage, the embed stage and the service all read `data/images/<photo_id>.jpg`; a file that is
there is expected to decode. These helpers are the one definition of "decodes" (PIL `verify()` catches a
broken structure, a full `load()` catches truncated pixel data that `verify()` lets through).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIX = ".jpg"
JPEG_QUALITY = 90

# Unsplash photo ids are 10-11 characters of [A-Za-z0-9_-]; anything else must never become a file name.
_PHOTO_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ImageDecodeError(ValueError):
    """The bytes are not an image PIL can fully decode."""


@dataclass(frozen=True)
class DecodedImage:
    """What a successful decode tells us, and JPEG bytes ready to write."""

    jpeg: bytes
    width: int
    height: int
    source_format: str  # e.g. "JPEG", "PNG", "WEBP": what the server actually sent


def is_safe_photo_id(photo_id: str) -> bool:
    """True when `photo_id` can be used as a file name (no path separators, dots-only names or odd bytes)."""
    return bool(_PHOTO_ID.fullmatch(photo_id))


def image_path(images_dir: Path, photo_id: str) -> Path:
    """`<images_dir>/<photo_id>.jpg`. Raises ValueError for an id that is not a safe file name."""
    if not is_safe_photo_id(photo_id):
        raise ValueError(f"photo_id {photo_id!r} is not a safe file name")
    return images_dir / f"{photo_id}{IMAGE_SUFFIX}"


def decode_image(data: bytes) -> DecodedImage:
    """Fully decode `data`; return it as JPEG bytes (unchanged when it already is a JPEG).

    Non-JPEG input (a server that answered with PNG or WebP) is converted to RGB and re-encoded, so every
    file under `data/images/` is a JPEG whatever the origin sent.
    """
    if not data:
        raise ImageDecodeError("empty response body")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # structure and checksums; the image is unusable afterwards
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # pixel data: catches truncation that verify() does not
            fmt = img.format or "unknown"
            width, height = img.size
            if fmt == "JPEG":
                return DecodedImage(jpeg=data, width=width, height=height, source_format=fmt)
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a decodable image ({type(exc).__name__}: {exc})") from exc
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
    return DecodedImage(jpeg=out.getvalue(), width=width, height=height, source_format=fmt)


def is_valid_image_file(path: Path) -> bool:
    """True when `path` exists and decodes completely (the resume check of the download stage)."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    try:
        decode_image(data)
    except ImageDecodeError:
        return False
    return True
