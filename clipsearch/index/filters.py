"""Metadata filters -> an exact allowed-row selection, plus the per-photo attributes that sort and facet.

`PhotoAttributes` holds, for every row of the artifact, the fields a `clipsearch.query.Filters` can name, as
plain numpy arrays built once when the artifact loads (a million photos: ~40 MB):

- categorical fields (photographer username, country, city, camera make, camera model, orientation) as integer
  codes over a lower-cased vocabulary, with an inverted list per value (rows grouped by code), so "country =
  Iceland" is a slice, not a scan;
- colours (Unsplash Lite's `colors` table: one photo has several colour keywords, each with an `ai_coverage`)
  as one row list per colour keyword, sorted by coverage, so "blue covering at least 30%" is a slice too;
- numeric fields (width, height, submitted_at, latitude/longitude, featured, downloads) as arrays.

`select(filters)` returns the sorted rows that satisfy every field (AND across fields, OR within one field's
list). It starts from the smallest inverted list the filter names (its size is known before anything is read)
and tests the remaining fields on those rows only; with no listable field it tests the whole column. The
result is exact by construction; `tests/unit/test_filters.py` checks it against a pandas reference.

Orientation comes from the aspect ratio: square within `SQUARE_TOLERANCE` of 1, landscape wider, portrait
taller; photos without a size have none and never match an orientation filter. String matching is
case-insensitive and exact ("Canon" matches "canon", not "Canon EOS"). A photo missing a field never matches
a filter on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from clipsearch.query import Filters, QueryError

Rows = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

ORIENTATIONS = ("landscape", "portrait", "square")
SQUARE_TOLERANCE = 0.05  # |width / height - 1| at most this is "square"
EARTH_RADIUS_KM = 6371.0088
NS_PER_DAY = 86_400 * 1_000_000_000
MISSING_TIME = np.iinfo(np.int64).min

# metadata.parquet columns that feed filters and sorts (optional: an older artifact lacks them).
FILTER_COLUMNS = (
    "photographer_username",
    "country",
    "city",
    "location_name",
    "latitude",
    "longitude",
    "submitted_at",
    "camera_make",
    "camera_model",
    "featured",
    "downloads",
)
COLOR_COLUMNS = ("photo_id", "keyword", "coverage")

# Filters field -> the metadata column it needs (None: derived from width/height or the colors file).
_FIELD_COLUMNS: dict[str, str] = {
    "photographer": "photographer_username",
    "country": "country",
    "city": "city",
    "near": "latitude",
    "submitted_from": "submitted_at",
    "submitted_to": "submitted_at",
    "camera_make": "camera_make",
    "camera_model": "camera_model",
    "featured": "featured",
}


def orientation_of(width: npt.ArrayLike, height: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """Codes into ORIENTATIONS (-1 when the size is unknown)."""
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = w / h
    codes = np.full(ratio.shape, -1, dtype=np.int8)
    known = np.isfinite(ratio) & (w > 0) & (h > 0)
    codes[known & (ratio > 1 + SQUARE_TOLERANCE)] = 0
    codes[known & (ratio < 1 - SQUARE_TOLERANCE)] = 1
    codes[known & (np.abs(ratio - 1) <= SQUARE_TOLERANCE)] = 2
    return codes


def _norm(value: object) -> str | None:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip().lower()
    return text or None


class _Categorical:
    """Integer codes over a lower-cased vocabulary and the rows grouped by code (an inverted list per value)."""

    def __init__(self, values: Sequence[object]) -> None:
        normalised = [_norm(v) for v in values]
        vocab = sorted({v for v in normalised if v is not None})
        self.vocab: dict[str, int] = {v: i for i, v in enumerate(vocab)}
        self.codes = np.fromiter((self.vocab.get(v, -1) if v else -1 for v in normalised), np.int32, len(normalised))
        self._from_codes()

    @classmethod
    def from_codes(cls, codes: npt.NDArray[np.integer], names: Sequence[str]) -> _Categorical:
        self = cls.__new__(cls)
        self.vocab = {name: i for i, name in enumerate(names)}
        self.codes = np.asarray(codes, dtype=np.int32)
        self._from_codes()
        return self

    def _from_codes(self) -> None:
        present = np.flatnonzero(self.codes >= 0)
        order = np.argsort(self.codes[present], kind="stable")
        self._rows = present[order].astype(np.int64)
        counts = np.bincount(self.codes[present], minlength=len(self.vocab))
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def wanted(self, values: Sequence[str]) -> npt.NDArray[np.int32]:
        codes = {self.vocab[v] for v in (_norm(x) for x in values) if v is not None and v in self.vocab}
        return np.array(sorted(codes), dtype=np.int32)

    def size(self, values: Sequence[str]) -> int:
        return int(sum(self._offsets[c + 1] - self._offsets[c] for c in self.wanted(values)))

    def rows(self, values: Sequence[str]) -> Rows:
        parts = [self._rows[self._offsets[c] : self._offsets[c + 1]] for c in self.wanted(values)]
        if not parts:
            return np.empty(0, np.int64)
        return parts[0] if len(parts) == 1 else np.sort(np.concatenate(parts))

    def test(self, rows: Rows | None, values: Sequence[str]) -> Mask:
        codes = self.codes if rows is None else self.codes[rows]
        wanted = self.wanted(values)
        if wanted.size == 1:
            return codes == wanted[0]
        return np.isin(codes, wanted)


class _Colors:
    """Per colour keyword: the rows that have it, sorted by coverage (descending), and those coverages."""

    def __init__(self, rows: npt.NDArray[np.int64], keywords: Sequence[object], coverage: npt.ArrayLike, n: int):
        self.n = n
        cov = np.nan_to_num(np.asarray(coverage, dtype=np.float32), nan=0.0)
        cat = _Categorical(keywords)
        self.vocab = cat.vocab
        self._rows: list[Rows] = []
        self._cov: list[npt.NDArray[np.float32]] = []
        # Top colour of each photo (largest coverage), for facets.
        self.top = np.full(n, -1, dtype=np.int32)
        best = np.full(n, -1.0, dtype=np.float32)
        for code in range(len(cat.vocab)):
            members = np.flatnonzero(cat.codes == code)
            order = members[np.argsort(-cov[members], kind="stable")]
            self._rows.append(rows[order])
            self._cov.append(cov[order])
        if len(rows):
            order = np.lexsort((-cov, rows))  # per row, the largest coverage first
            first = np.ones(len(rows), dtype=bool)
            first[1:] = rows[order][1:] != rows[order][:-1]
            chosen = order[first]
            self.top[rows[chosen]] = np.where(cat.codes[chosen] >= 0, cat.codes[chosen], -1)
            best[rows[chosen]] = cov[chosen]
        self.names = sorted(self.vocab, key=self.vocab.__getitem__)

    def _slices(self, values: Sequence[str], min_coverage: float) -> list[Rows]:
        out = []
        for value in {v for v in (_norm(x) for x in values) if v is not None}:
            code = self.vocab.get(value)
            if code is None:
                continue
            # coverages are descending: the rows with coverage >= min_coverage are a prefix
            end = int(np.searchsorted(-self._cov[code], -np.float32(min_coverage), side="right"))
            out.append(self._rows[code][:end])
        return out

    def size(self, values: Sequence[str], min_coverage: float) -> int:
        return int(sum(len(s) for s in self._slices(values, min_coverage)))

    def rows(self, values: Sequence[str], min_coverage: float) -> Rows:
        parts = self._slices(values, min_coverage)
        if not parts:
            return np.empty(0, np.int64)
        return np.unique(np.concatenate(parts))

    def test(self, rows: Rows | None, values: Sequence[str], min_coverage: float) -> Mask:
        mask = np.zeros(self.n, dtype=bool)
        mask[self.rows(values, min_coverage)] = True
        return mask if rows is None else mask[rows]


class _Predicate(Protocol):
    def size(self) -> int | None:
        """Rows it selects, when an inverted list knows it without reading them; None for scan-only fields."""
        ...

    def rows(self) -> Rows: ...

    def test(self, rows: Rows | None) -> Mask: ...


@dataclass
class _Listed:
    """A field answered from an inverted list (categorical values or colours)."""

    field: _Categorical | _Colors
    values: Sequence[str]
    min_coverage: float = 0.0

    def size(self) -> int | None:
        if isinstance(self.field, _Colors):
            return self.field.size(self.values, self.min_coverage)
        return self.field.size(self.values)

    def rows(self) -> Rows:
        if isinstance(self.field, _Colors):
            return self.field.rows(self.values, self.min_coverage)
        return self.field.rows(self.values)

    def test(self, rows: Rows | None) -> Mask:
        if isinstance(self.field, _Colors):
            return self.field.test(rows, self.values, self.min_coverage)
        return self.field.test(rows, self.values)


@dataclass
class _Scanned:
    """A field tested value by value (ranges, flags, distance)."""

    column: npt.NDArray[np.generic]
    check: object  # callable(values) -> mask

    def size(self) -> int | None:
        return None

    def rows(self) -> Rows:
        return np.flatnonzero(self.test(None)).astype(np.int64)

    def test(self, rows: Rows | None) -> Mask:
        values = self.column if rows is None else self.column[rows]
        return self.check(values)  # type: ignore[operator]


@dataclass(frozen=True)
class Selection:
    """The rows (sorted, unique) that satisfy a filter, out of `n_total` photos."""

    rows: Rows
    n_total: int

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def selectivity(self) -> float:
        return len(self) / self.n_total if self.n_total else 0.0

    def mask(self) -> Mask:
        mask = np.zeros(self.n_total, dtype=bool)
        mask[self.rows] = True
        return mask


class PhotoAttributes:
    """Filterable, sortable and facetable attributes of every row of an artifact (see module docstring)."""

    def __init__(self, metadata: pd.DataFrame, colors: pd.DataFrame | None = None) -> None:
        n = len(metadata)
        self.n = n
        self.available: set[str] = {c for c in FILTER_COLUMNS if c in metadata.columns}
        self.width = _ints(metadata["width"]) if "width" in metadata.columns else np.full(n, -1, np.int64)
        self.height = _ints(metadata["height"]) if "height" in metadata.columns else np.full(n, -1, np.int64)
        orient = orientation_of(
            np.where(self.width > 0, self.width, np.nan), np.where(self.height > 0, self.height, np.nan)
        )
        self.orientation = _Categorical.from_codes(orient, ORIENTATIONS)
        self._categorical: dict[str, _Categorical] = {}
        for field_name, column in (
            ("photographer", "photographer_username"),
            ("country", "country"),
            ("city", "city"),
            ("camera_make", "camera_make"),
            ("camera_model", "camera_model"),
        ):
            if column in metadata.columns:
                self._categorical[field_name] = _Categorical(metadata[column].tolist())
        self.submitted_ns = (
            _times(metadata["submitted_at"]) if "submitted_at" in metadata.columns else np.full(n, MISSING_TIME)
        )
        self.latitude = _floats(metadata["latitude"]) if "latitude" in metadata.columns else np.full(n, np.nan)
        self.longitude = _floats(metadata["longitude"]) if "longitude" in metadata.columns else np.full(n, np.nan)
        self.featured = _flags(metadata["featured"]) if "featured" in metadata.columns else np.full(n, -1, np.int8)
        self.downloads = _ints(metadata["downloads"]) if "downloads" in metadata.columns else np.full(n, -1, np.int64)
        self.colors: _Colors | None = None
        if colors is not None:
            row_of = {str(pid): i for i, pid in enumerate(metadata["photo_id"].astype(str).tolist())}
            known = colors["photo_id"].astype(str).map(row_of)
            keep = known.notna().to_numpy()
            self.colors = _Colors(
                np.asarray(known[keep], dtype=np.int64),
                colors["keyword"][keep].tolist(),
                pd.to_numeric(colors["coverage"][keep], errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan),
                n,
            )

    # ------------------------------------------------------------------------------------------ selection

    def select(self, filters: Filters) -> Selection | None:
        """The rows that satisfy `filters` (None when the filters are empty: every row is allowed)."""
        if filters.is_empty():
            return None
        predicates = self._predicates(filters)
        listed = [(p.size(), i) for i, p in enumerate(predicates) if p.size() is not None]
        rows: Rows | None = None
        rest = list(range(len(predicates)))
        if listed:
            _, driver = min(listed)
            rows = predicates[driver].rows()
            rest.remove(driver)
        for i in rest:
            if rows is not None and rows.size == 0:
                break
            mask = predicates[i].test(rows)
            rows = np.flatnonzero(mask).astype(np.int64) if rows is None else rows[mask]
        assert rows is not None
        return Selection(rows=rows, n_total=self.n)

    def _need(self, field_name: str) -> None:
        column = _FIELD_COLUMNS.get(field_name)
        if column is not None and column not in self.available:
            raise QueryError(
                f"filters.{field_name}: the served index carries no {column} metadata (it was built before "
                "filters existed); rebuild it with `dvc repro build_index`"
            )

    def _predicates(self, f: Filters) -> list[_Predicate]:
        preds: list[_Predicate] = []
        if f.orientation:
            preds.append(_Listed(self.orientation, list(f.orientation)))
        if f.colors:
            if self.colors is None:
                raise QueryError(
                    "filters.colors: the served index carries no colour data (colors.parquet); rebuild it with "
                    "`dvc repro build_index`"
                )
            preds.append(_Listed(self.colors, list(f.colors), f.min_color_coverage))
        for name in ("photographer", "country", "city", "camera_make", "camera_model"):
            values = getattr(f, name)
            if values:
                self._need(name)
                preds.append(_Listed(self._categorical[name], list(values)))
        if f.near is not None:
            self._need("near")
            lat0, lon0, radius = math.radians(f.near.lat), math.radians(f.near.lon), f.near.radius_km
            coords = np.stack([self.latitude, self.longitude], axis=1)
            preds.append(_Scanned(coords, lambda c: _within(c, lat0, lon0, radius)))
        if f.submitted_from is not None or f.submitted_to is not None:
            self._need("submitted_from")
            lo = _day_start(f.submitted_from) if f.submitted_from else MISSING_TIME + 1
            hi = _day_start(f.submitted_to) + NS_PER_DAY if f.submitted_to else np.iinfo(np.int64).max
            preds.append(_Scanned(self.submitted_ns, lambda t: (t >= lo) & (t < hi) & (t != MISSING_TIME)))
        if f.featured is not None:
            self._need("featured")
            want = 1 if f.featured else 0
            preds.append(_Scanned(self.featured, lambda v: v == want))
        if f.min_width is not None:
            min_w = f.min_width
            preds.append(_Scanned(self.width, lambda w: w >= min_w))
        if f.min_height is not None:
            min_h = f.min_height
            preds.append(_Scanned(self.height, lambda h: h >= min_h))
        return preds

    # ------------------------------------------------------------------------------------ sorts and facets

    def facets(self, rows: Rows, top_colors: int = 8) -> dict[str, dict[str, int]]:
        """Counts per orientation and per top colour (a photo's largest-coverage colour) over `rows`."""
        out: dict[str, dict[str, int]] = {}
        counts = np.bincount(self.orientation.codes[rows] + 1, minlength=len(ORIENTATIONS) + 1)[1:]
        out["orientation"] = {name: int(c) for name, c in zip(ORIENTATIONS, counts, strict=True) if c}
        if self.colors is not None:
            codes = self.colors.top[rows]
            codes = codes[codes >= 0]
            per = np.bincount(codes, minlength=len(self.colors.names))
            best = np.argsort(-per, kind="stable")[:top_colors]
            out["color"] = {self.colors.names[c]: int(per[c]) for c in best if per[c]}
        return out


def _ints(column: pd.Series) -> npt.NDArray[np.int64]:
    return pd.to_numeric(column, errors="coerce").fillna(-1).to_numpy(dtype=np.int64)


def _floats(column: pd.Series) -> npt.NDArray[np.float64]:
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _flags(column: pd.Series) -> npt.NDArray[np.int8]:
    values = column.astype("boolean")
    return np.where(values.isna().to_numpy(), -1, values.fillna(False).to_numpy(dtype=bool).astype(np.int8)).astype(
        np.int8
    )


def _times(column: pd.Series) -> npt.NDArray[np.int64]:
    stamps = pd.to_datetime(column, errors="coerce", utc=True)
    ns = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    ns[stamps.isna().to_numpy()] = MISSING_TIME
    return ns


def _day_start(day: date) -> int:
    return int(datetime.combine(day, time(0), tzinfo=UTC).timestamp()) * 1_000_000_000


def _within(coords: npt.NDArray[np.float64], lat0: float, lon0: float, radius_km: float) -> Mask:
    """Great-circle (haversine) distance <= radius; rows without coordinates are outside."""
    lat, lon = np.radians(coords[:, 0]), np.radians(coords[:, 1])
    a = np.sin((lat - lat0) / 2) ** 2 + np.cos(lat0) * np.cos(lat) * np.sin((lon - lon0) / 2) ** 2
    with np.errstate(invalid="ignore"):
        distance = 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))
    return np.nan_to_num(distance, nan=np.inf) <= radius_km


def distance_km(lat0: float, lon0: float, lat: float, lon: float) -> float:
    """Great-circle distance between two points (the reference the tests use)."""
    p0, p1 = math.radians(lat0), math.radians(lat)
    a = math.sin((p1 - p0) / 2) ** 2 + math.cos(p0) * math.cos(p1) * math.sin(math.radians(lon - lon0) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, max(0.0, a))))
