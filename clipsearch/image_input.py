"""Query images are hostile input: decode them under caps, or refuse them with a reason (a 4xx, never a 500).

An uploaded image, an image fetched from a URL and a file given to the CLI all pass through `load_query_image`:

- a cap on bytes (`inputs.max_image_bytes`; HTTP 413) before anything is parsed;
- the format must be JPEG, PNG, WebP or GIF (PIL is told to try only those parsers; anything else is 422);
- a cap on pixels (`inputs.max_image_pixels`), checked on the header's width x height *before* the pixel data
  is decoded, so a small file that inflates to gigapixels (a decompression bomb) is refused cheaply (422);
- the first frame only (animated GIF/WebP), decoded completely: truncated or corrupt data is 422 with PIL's reason;
- EXIF orientation applied (a phone photo taken upright is seen upright, as every viewer shows it);
- transparent pixels composited onto white, then RGB (what CLIP's preprocessing expects).

Large JPEGs are decoded at a reduced DCT scale (`draft`) that still leaves at least `DRAFT_MIN_SIDE` pixels on
the short side, and any decoded image is then scaled to at most `KEEP_MAX_SIDE` pixels a side: CLIP looks at
224 px, so keeping 24 MP in memory (or decoding all of it) would only cost time and memory.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, field

from PIL import Image, ImageOps, UnidentifiedImageError

from clipsearch.errors import ClipsearchError
from clipsearch.settings import InputSettings

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
DRAFT_MIN_SIDE = 448  # a JPEG is decoded at the smallest DCT scale keeping at least this many pixels a side
KEEP_MAX_SIDE = 1024  # decoded images larger than this are scaled down once (CLIP's input is 224 px)
THUMBNAIL_PX = 256  # the re-ranker's view of a query image (capped again by rerank.thumbnail_px)
THUMBNAIL_QUALITY = 85


class ImageInputError(ClipsearchError):
    """An image the service will not use; `status` is the HTTP status to answer (413 or 422), `field` names
    the input (e.g. `terms[1].image`)."""

    def __init__(self, message: str, *, status: int = 422, field: str = "image") -> None:
        super().__init__(f"{field}: {message}")
        self.reason = message
        self.status = status
        self.field = field

    def for_field(self, field: str) -> ImageInputError:
        """The same refusal, naming the input it came from."""
        return ImageInputError(self.reason, status=self.status, field=field)


@dataclass(frozen=True)
class ImageLimits:
    """The caps a query image must meet (from `InputSettings`)."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000

    @classmethod
    def from_settings(cls, settings: InputSettings) -> ImageLimits:
        return cls(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)


@dataclass
class QueryImage:
    """A decoded, validated query image: RGB pixels upright, where it came from and what it was."""

    image: Image.Image
    sha256: str
    source_format: str
    width: int  # as stored in the file (before EXIF rotation)
    height: int
    n_bytes: int
    frames: int = 1
    oriented: bool = False  # True when an EXIF orientation was applied
    _thumbnail: bytes | None = field(default=None, repr=False)

    def thumbnail(self, px: int = THUMBNAIL_PX) -> bytes:
        """A small JPEG of the image (what the re-ranker is shown), made once."""
        if self._thumbnail is None:
            thumb = self.image.copy()
            thumb.thumbnail((px, px), Image.Resampling.BILINEAR)
            out = io.BytesIO()
            thumb.save(out, format="JPEG", quality=THUMBNAIL_QUALITY)
            self._thumbnail = out.getvalue()
        return self._thumbnail

    def describe(self) -> str:
        extra = f", first of {self.frames} frames" if self.frames > 1 else ""
        return f"{self.source_format} {self.width}x{self.height}, {self.n_bytes} bytes{extra}"


def load_query_image(data: bytes, limits: ImageLimits | None = None, *, field: str = "image") -> QueryImage:
    """Validate and decode `data` (see the module docstring); raises `ImageInputError` with the reason."""
    limits = limits or ImageLimits()
    if not data:
        raise ImageInputError("empty; send the bytes of a JPEG, PNG, WebP or GIF image", field=field)
    if len(data) > limits.max_bytes:
        raise ImageInputError(f"{len(data)} bytes; the limit is {limits.max_bytes} bytes", status=413, field=field)
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            fmt = img.format or "unknown"
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageInputError(f"{fmt} header says {width}x{height} pixels", field=field)
            if width * height > limits.max_pixels:
                raise ImageInputError(
                    f"{width}x{height} = {width * height} pixels; the limit is {limits.max_pixels} "
                    "(a larger image could exhaust memory when decoded)",
                    field=field,
                )
            frames = int(getattr(img, "n_frames", 1) or 1)
            if frames > 1:
                img.seek(0)
            if fmt == "JPEG":
                scale = min(width, height) // DRAFT_MIN_SIDE
                if scale >= 2:
                    img.draft("RGB", (max(1, width // scale), max(1, height // scale)))
            img.load()  # the pixel data: truncation and corruption surface here
            orientation = img.getexif().get(0x0112, 1)
            upright = ImageOps.exif_transpose(img) if orientation not in (None, 1) else img
            rgb = _to_rgb(upright)
            if max(rgb.size) > KEEP_MAX_SIDE:  # CLIP sees 224 px: keep memory and the thumbnail's cost bounded
                rgb.thumbnail((KEEP_MAX_SIDE, KEEP_MAX_SIDE), Image.Resampling.LANCZOS)
    except ImageInputError:
        raise
    except UnidentifiedImageError:
        raise ImageInputError(
            "not a JPEG, PNG, WebP or GIF image (the bytes match none of these formats)", field=field
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(f"refused as a decompression bomb ({exc})", field=field) from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise ImageInputError(
            f"could not be decoded ({type(exc).__name__}: {exc}); is it truncated?", field=field
        ) from None
    return QueryImage(
        image=rgb,
        sha256=digest,
        source_format=fmt,
        width=width,
        height=height,
        n_bytes=len(data),
        frames=frames,
        oriented=orientation not in (None, 1),
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB pixels; transparency composited onto white (a transparent logo is seen on white, not black)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")
