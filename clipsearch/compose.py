"""Term composition: a `Query`'s terms -> one unit query vector, and the echo of how each term was read.

The rule (DESIGN.md, "The query, as it grows"): the query vector is the **normalised weighted sum of the terms'
unit vectors**, q = normalise(sum_i w_i * v_i), where v_i is

- a text term: CLIP's text embedding (EOT-truncated; `truncated` says when it passed 77 tokens);
- an image term (uploaded bytes) or an image-URL term: CLIP's image embedding of the decoded, validated image
  (`clipsearch.image_input`; URLs fetched by `clipsearch.safe_fetch`);
- a photo-id term: the index's stored vector for that photo (no re-encode), which is what makes "more like this"
  cost one matrix product.

Negative weights push away: "beach" - "people" moves the query from the people direction. Every v_i is a unit
vector before weighting, so a weight means the same thing whatever the term's kind (a 2 on a text counts twice
an image's 1). Text and image vectors of CLIP live in one space but are not equally close to each other (the
"modality gap"); summing them is what rclip and clip-retrieval do, and it works because ranking only compares
photos with one another along the summed direction. If the weights cancel (e.g. `cat` and `-1:cat`), nothing
is left to search for and the query is refused (422).

Photo-id terms are excluded from their own results: "more like this" never answers with the photo itself.

`term_key` names a term's vector in caches and in the `encoded` mapping the service's micro-batcher hands to
`query_vector`: a text's key is the text itself (so a cache of text embeddings keeps working); other kinds get
a key that starts with a NUL character, which no typed text contains.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.image_input import ImageInputError, ImageLimits, QueryImage, load_query_image
from clipsearch.query import Query, QueryError, Term, UnknownPhotoError
from clipsearch.safe_fetch import FetchError, SafeFetcher

if TYPE_CHECKING:
    from clipsearch.index.artifact import IndexArtifact
    from clipsearch.types import Candidate

CANCEL_EPS = 1e-6  # a weighted sum shorter than this has no direction left


@dataclass(frozen=True)
class QueryVector:
    """An encoded query: the unit vector, whether a text was cut to CLIP's context length, and (for a composed
    query) how each term was read, the photos to leave out of the results and the time each stage took."""

    vector: np.ndarray
    truncated: bool
    terms: tuple[UnderstoodTerm, ...] = ()
    exclude: tuple[str, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict, compare=False)
    images: tuple[QueryImage, ...] = field(default=(), compare=False)  # positive image terms (the re-ranker's view)


@dataclass(frozen=True)
class UnderstoodTerm:
    """How one term was read: the response echoes these (`understood.terms`)."""

    kind: str  # text | image | image_url | photo_id
    weight: float
    share: float  # weight / sum of |weights|: the term's part of the query vector
    text: str | None = None
    photo_id: str | None = None
    image_url: str | None = None
    image: str | None = None  # what the image was: "PNG 640x480, 20512 bytes"
    truncated: bool = False  # a text longer than CLIP's 77-token context: only its beginning was used
    notes: tuple[str, ...] = ()  # e.g. "EXIF orientation applied", "first of 12 frames"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "weight": self.weight, "share": round(self.share, 4)}
        for name in ("text", "photo_id", "image_url", "image"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["truncated"] = self.truncated
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def term_key(term: Term) -> str:
    """The key of a term's unit vector (see the module docstring)."""
    if term.text is not None:
        return term.text
    if term.image is not None:
        return "\x00image:" + hashlib.sha256(term.image).hexdigest()
    if term.image_url is not None:
        return "\x00url:" + term.image_url
    return "\x00photo:" + str(term.photo_id)


def query_kind(query: Query) -> str:
    """The metrics label of a query: text, image (uploads and URLs), photo_id, or composed (anything else)."""
    kinds = {t.kind for t in query.terms}
    if len(query.terms) == 1:
        only = query.terms[0].kind
        return "image" if only == "image_url" else only
    if kinds <= {"text"} and all(t.weight > 0 for t in query.terms):
        return "text"
    return "composed"


class ImageQueryUnsupported(QueryError):  # noqa: N818
    """An image term reached an encoder without a vision tower (the torch-free replica serves text and photo-id
    terms only); the API answers 422 with this reason."""


def require_image_support(encoder: object, query: Query) -> None:
    """Refuse, naming the term, an image or image-URL term that `encoder` cannot encode. The torch-free CPU
    replica's encoder is the artifact's ONNX *text* tower (`clipsearch.onnx_query`): it has no
    `encode_query_images`; the service wraps it (`services.search.encoders.WithVisionTower`) to load the torch
    vision tower on the first image query where torch is installed (`can_encode_images`), else this refuses."""
    if getattr(encoder, "encode_query_images", None) is not None and getattr(encoder, "can_encode_images", True):
        return
    for i, term in image_terms(query):
        raise ImageQueryUnsupported(
            f"terms[{i}].{term.kind}: this replica serves text and photo-id queries only (its query encoder is "
            "the index's ONNX text tower and torch is not installed, so there is no vision tower); search by "
            "photo id, or ask a replica that loads the CLIP model"
        )


def image_terms(query: Query) -> list[tuple[int, Term]]:
    return [(i, t) for i, t in enumerate(query.terms) if t.image is not None or t.image_url is not None]


def gather_images(
    query: Query,
    limits: ImageLimits,
    fetcher: SafeFetcher | None,
    *,
    skip: Mapping[str, object] | None = None,
) -> dict[str, QueryImage]:
    """Decode (and for URLs, fetch) every image term not in `skip`; refusals name the term (`terms[1].image`).

    Blocking (network, decoding): the service calls it off the event loop, before the micro-batcher."""
    out: dict[str, QueryImage] = {}
    for i, term in image_terms(query):
        key = term_key(term)
        if key in out or (skip is not None and key in skip):
            continue
        where = f"terms[{i}].{term.kind}"
        try:
            if term.image is not None:
                data = term.image
            else:
                if fetcher is None:
                    raise FetchError("image URLs are not fetched here")
                data = fetcher.fetch(str(term.image_url)).data
            out[key] = load_query_image(data, limits, field=where)
        except FetchError as exc:
            raise exc.for_field(where) from None
        except ImageInputError as exc:
            raise exc.for_field(where) from None
    return out


def describe_image(image: QueryImage) -> tuple[str, tuple[str, ...]]:
    notes = []
    if image.oriented:
        notes.append("EXIF orientation applied")
    if image.frames > 1:
        notes.append(f"first of {image.frames} frames")
    return f"{image.source_format} {image.width}x{image.height}, {image.n_bytes} bytes", tuple(notes)


def compose(
    query: Query,
    vectors: Mapping[str, QueryVector],
    artifact: IndexArtifact,
    images: Mapping[str, QueryImage] | None = None,
    timings_ms: Mapping[str, float] | None = None,
) -> QueryVector:
    """The normalised weighted sum of the terms' unit vectors (text/image vectors from `vectors` by `term_key`,
    photo ids from the index), with the echo of every term and the photo ids to exclude."""
    total = np.zeros(artifact.manifest.dim, dtype=np.float64)
    scale = sum(abs(t.weight) for t in query.terms)
    understood: list[UnderstoodTerm] = []
    truncated = False
    exclude: list[str] = []
    shown: list[QueryImage] = []
    for i, term in enumerate(query.terms):
        key = term_key(term)
        notes: tuple[str, ...] = ()
        description = None
        term_truncated = False
        if term.photo_id is not None:
            try:
                vector = artifact.vector_of(term.photo_id)
            except KeyError:
                raise UnknownPhotoError(
                    f"terms[{i}].photo_id: photo {term.photo_id} is not in the served index"
                ) from None
            exclude.append(term.photo_id)
        else:
            try:
                qv = vectors[key]
            except KeyError:
                raise QueryError(f"terms[{i}]: no vector for this {term.kind} term") from None
            vector, term_truncated = qv.vector, qv.truncated
            truncated = truncated or term_truncated
            if images is not None and key in images:
                description, notes = describe_image(images[key])
                if term.weight > 0:
                    shown.append(images[key])
        v = np.asarray(vector, dtype=np.float64)
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm < CANCEL_EPS:
            raise QueryError(f"terms[{i}]: its vector is empty; drop the term")
        total += term.weight * (v / norm)
        understood.append(
            UnderstoodTerm(
                kind=term.kind,
                weight=term.weight,
                share=term.weight / scale,
                text=term.text,
                photo_id=term.photo_id,
                image_url=term.image_url,
                image=description,
                truncated=term_truncated,
                notes=notes,
            )
        )
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm < CANCEL_EPS:
        raise QueryError("terms: the weighted terms cancel out, nothing is left to search for; change a weight")
    return QueryVector(
        vector=(total / norm).astype(np.float32),
        truncated=truncated,
        terms=tuple(understood),
        exclude=tuple(dict.fromkeys(exclude)),
        timings_ms=dict(timings_ms or {}),
        images=tuple(shown),
    )


def encode_missing(
    encoder: Any,
    query: Query,
    known: Mapping[str, QueryVector],
    images: Mapping[str, QueryImage],
) -> tuple[dict[str, QueryVector], dict[str, float]]:
    """Encode the text and image terms `known` lacks: all texts in one pass, all images in one pass.
    Returns the new vectors and the stage timings (`encode` for texts, `image_encode` for images)."""
    out: dict[str, QueryVector] = {}
    timings: dict[str, float] = {}
    texts = list(dict.fromkeys(t.text for t in query.terms if t.text is not None and t.text not in known))
    if texts:
        t0 = time.perf_counter()
        vectors, flags = encoder.encode_text_with_flags(texts)
        out.update((text, QueryVector(vector=v, truncated=f)) for text, v, f in zip(texts, vectors, flags, strict=True))
        timings["encode"] = (time.perf_counter() - t0) * 1000.0
    keys = [k for k in dict.fromkeys(term_key(t) for _, t in image_terms(query)) if k not in known and k not in out]
    if keys:
        missing = [k for k in keys if k not in images]
        if missing:
            raise QueryError("an image term was not decoded before encoding")  # a caller bug, not user input
        t0 = time.perf_counter()
        vectors = encoder.encode_query_images([images[k].image for k in keys])
        out.update((k, QueryVector(vector=v, truncated=False)) for k, v in zip(keys, vectors, strict=True))
        timings["image_encode"] = (time.perf_counter() - t0) * 1000.0
    return out, timings


def without_excluded(pool: Sequence[Candidate], exclude: Sequence[str], n: int) -> list[Candidate]:
    """The first `n` candidates whose photo is not excluded, ranks renumbered from 1 (CLIP order kept)."""
    if not exclude:
        return list(pool[:n])
    from dataclasses import replace

    skip = set(exclude)
    kept = [c for c in pool if c.photo_id not in skip][:n]
    return [replace(c, rank=i + 1) for i, c in enumerate(kept)]
