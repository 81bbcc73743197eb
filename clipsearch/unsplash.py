"""Reader for the Unsplash Lite zip: five kinds of tab-separated shards, returned as typed pandas tables.

The zip (https://unsplash.com/data/lite/latest, or `/data/lite/<version>`) holds `photos.tsv000`,
`photos.tsv001`, ... (newer releases name them `photos.csv000`; still TAB separated, CSV quoting), the same
for keywords, collections, conversions and colors. Each shard repeats the header line. Files may sit in the
zip root or in a sub-folder. Columns and types follow the dataset's own docs (DOCS.md and the psql
`create_tables.sql` of github.com/unsplash/datasets).

Everything is read as text first (so a keyword "null" or "NA" stays a keyword, only an empty field is
missing) and then cast per column: timestamps -> UTC datetimes, numbers -> nullable numerics, `t`/`f` ->
nullable booleans, text -> pandas `string`. Known columns an older release lacks (e.g. `blur_hash` before
1.2.0) are added empty, so every table has the same schema whatever the release.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pandas as pd

from clipsearch.errors import DataFormatError
from clipsearch.fileio import atomic_path
from clipsearch.images import is_safe_photo_id

Kind = Literal["photos", "keywords", "collections", "conversions", "colors"]
KINDS: tuple[Kind, ...] = ("photos", "keywords", "collections", "conversions", "colors")

ColumnType = Literal["str", "int", "float", "bool", "timestamp"]

# Every documented column, in file order, with its type.
SCHEMAS: dict[Kind, dict[str, ColumnType]] = {
    "photos": {
        "photo_id": "str",
        "photo_url": "str",
        "photo_image_url": "str",
        "photo_submitted_at": "timestamp",
        "photo_featured": "bool",
        "photo_width": "int",
        "photo_height": "int",
        "photo_aspect_ratio": "float",
        "photo_description": "str",
        "photographer_username": "str",
        "photographer_first_name": "str",
        "photographer_last_name": "str",
        "exif_camera_make": "str",
        "exif_camera_model": "str",
        "exif_iso": "int",
        "exif_aperture_value": "str",
        "exif_focal_length": "str",
        "exif_exposure_time": "str",
        "photo_location_name": "str",
        "photo_location_latitude": "float",
        "photo_location_longitude": "float",
        "photo_location_country": "str",
        "photo_location_city": "str",
        "stats_views": "int",
        "stats_downloads": "int",
        "ai_description": "str",
        "ai_primary_landmark_name": "str",
        "ai_primary_landmark_latitude": "float",
        "ai_primary_landmark_longitude": "float",
        "ai_primary_landmark_confidence": "float",
        "blur_hash": "str",
    },
    "keywords": {
        "photo_id": "str",
        "keyword": "str",
        "ai_service_1_confidence": "float",
        "ai_service_2_confidence": "float",
        "suggested_by_user": "bool",
    },
    "collections": {
        "photo_id": "str",
        "collection_id": "str",  # an opaque id: newer releases use non-numeric ids
        "collection_title": "str",
        "photo_collected_at": "timestamp",
    },
    "conversions": {
        "converted_at": "timestamp",
        "conversion_type": "str",
        "keyword": "str",
        "photo_id": "str",
        "anonymous_user_id": "str",
        "conversion_country": "str",
    },
    "colors": {
        "photo_id": "str",
        "hex": "str",
        "red": "int",
        "green": "int",
        "blue": "int",
        "keyword": "str",
        "ai_coverage": "float",
        "ai_score": "float",
    },
}

# The columns the pipeline cannot work without; a shard lacking one is refused.
REQUIRED: dict[Kind, tuple[str, ...]] = {
    "photos": ("photo_id", "photo_image_url"),
    "keywords": ("photo_id", "keyword", "suggested_by_user"),
    "collections": ("photo_id", "collection_id"),
    "conversions": ("converted_at", "keyword", "photo_id", "anonymous_user_id"),
    "colors": ("photo_id", "hex"),
}

_PANDAS_DTYPE: dict[ColumnType, str] = {
    "str": "string",
    "int": "Int64",
    "float": "Float64",
    "bool": "boolean",
    "timestamp": "datetime64[ns, UTC]",
}
_TRUE = frozenset({"t", "true", "1", "yes"})
_FALSE = frozenset({"f", "false", "0", "no"})
# Above this share of non-empty values that do not parse as the column's type, the file is not what we think.
_MAX_UNPARSEABLE = 0.05
_CHUNK_ROWS = 200_000

# photos.tsv000, photos.csv001, photos.tsv (1.4.1 ships unsharded names): kind, extension, shard number.
_SHARD_NAME = re.compile(r"^(?P<kind>[a-z]+)\.(?P<ext>tsv|csv)(?P<shard>\d*)$")


@dataclass(frozen=True)
class Shard:
    """One member of the zip that holds part of a table."""

    member: str  # the name inside the zip, folder included
    kind: Kind
    number: int


@dataclass
class LiteTables:
    """The five Unsplash Lite tables, typed (see `SCHEMAS`)."""

    photos: pd.DataFrame
    keywords: pd.DataFrame
    collections: pd.DataFrame
    conversions: pd.DataFrame
    colors: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        """The tables by kind name, in `KINDS` order."""
        return {kind: getattr(self, kind) for kind in KINDS}

    def counts(self) -> dict[str, int]:
        """Row count per kind."""
        return {kind: len(df) for kind, df in self.tables().items()}

    def save_parquet(self, directory: Path) -> dict[str, Path]:
        """Write `<directory>/<kind>.parquet` for each kind (temp file then rename); return the paths."""
        directory.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        for kind, df in self.tables().items():
            path = directory / f"{kind}.parquet"
            with atomic_path(path, durable=False) as tmp:
                df.to_parquet(tmp, index=False)
            written[kind] = path
        return written


def load_parquet_tables(directory: Path) -> LiteTables:
    """Read the tables the download stage wrote (`data/lite/<kind>.parquet`)."""
    frames: dict[str, pd.DataFrame] = {}
    for kind in KINDS:
        path = directory / f"{kind}.parquet"
        if not path.is_file():
            raise DataFormatError(
                f"{path} is missing. Run the download stage first (`dvc repro download` or "
                f"`python -m training.download`)."
            )
        frames[kind] = pd.read_parquet(path)
    return LiteTables(**frames)


def photo_image_url(url: str, width: int) -> str:
    """`url` with its `w=` query parameter set to `width` (added or replaced); other parameters are kept.

    Unsplash image URLs are dynamic: `?w=400` returns the photo resized to 400 px wide.
    """
    if width < 1:
        raise ValueError(f"width must be positive, got {width}")
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "w"]
    query.append(("w", str(width)))
    return urlunsplit(parts._replace(query=urlencode(query)))


def list_shards(zip_path: Path) -> dict[Kind, list[Shard]]:
    """The shards of each kind in `zip_path`, in shard order. Kinds with no shard map to an empty list."""
    with _open_zip(zip_path) as zf:
        names = zf.namelist()
    found: dict[Kind, dict[int, Shard]] = {kind: {} for kind in KINDS}
    for member in names:
        path = PurePosixPath(member)
        if member.endswith("/") or any(part.startswith("__MACOSX") for part in path.parts):
            continue
        match = _SHARD_NAME.match(path.name)
        if not match or match["kind"] not in SCHEMAS:
            continue
        kind: Kind = match["kind"]
        number = int(match["shard"] or 0)
        previous = found[kind].get(number)
        if previous is not None:
            raise DataFormatError(
                f"{zip_path} holds two files for shard {number} of `{kind}`: {previous.member} and {member}. "
                "Use the zip exactly as Unsplash publishes it (one copy of each shard)."
            )
        found[kind][number] = Shard(member=member, kind=kind, number=number)
    return {kind: [found[kind][n] for n in sorted(found[kind])] for kind in KINDS}


def read_table(
    zip_path: Path,
    kind: Kind,
    *,
    limit: int | None = None,
    photo_ids: Collection[str] | None = None,
) -> pd.DataFrame:
    """Read all shards of `kind` from the zip into one typed table.

    `limit` keeps the first N rows in file order (shard by shard); `photo_ids` keeps only rows of those
    photos (filtered while reading, so a large table never sits in memory whole).
    """
    if kind not in SCHEMAS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    shards = list_shards(zip_path)[kind]
    if not shards:
        raise DataFormatError(
            f"{zip_path} has no `{kind}` table (no {kind}.tsv000 / {kind}.csv000 file in the zip). "
            "This is not an Unsplash Lite zip, or an incomplete one: check dataset.url and download it again."
        )
    wanted = set(photo_ids) if photo_ids is not None else None
    header: list[str] | None = None
    parts: list[pd.DataFrame] = []
    rows = 0
    for shard in shards:
        for chunk, shard_header in _read_shard(zip_path, shard):
            if header is None:
                header = shard_header
                _check_required(zip_path, shard, header)
            elif shard_header != header:
                raise DataFormatError(
                    f"{zip_path}: the header of {shard.member} differs from the first `{kind}` shard "
                    f"({_describe_difference(header, shard_header)}). The zip mixes releases or is damaged: "
                    "download it again."
                )
            if wanted is not None:
                chunk = chunk[chunk["photo_id"].isin(wanted)]
            if limit is not None:
                chunk = chunk.iloc[: limit - rows]
            parts.append(chunk)
            rows += len(chunk)
            if limit is not None and rows >= limit:
                break
        if limit is not None and rows >= limit:
            break
    assert header is not None  # at least one shard was read
    raw = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=header, dtype=object)
    return _typed(raw, kind, zip_path)


def read_lite(zip_path: Path, *, limit: int | None = None) -> LiteTables:
    """Read all five tables; with `limit`, photos are the first N in file order and the rest only theirs."""
    photos = read_table(zip_path, "photos", limit=limit)
    duplicated = photos["photo_id"].duplicated()
    if duplicated.any():
        dupes = ", ".join(photos.loc[duplicated, "photo_id"].astype(str).head(5))
        raise DataFormatError(f"{zip_path}: photo_id values repeat in `photos` ({dupes}); the zip is damaged.")
    ids = set(photos["photo_id"].astype(str)) if limit is not None else None
    others = {kind: read_table(zip_path, kind, photo_ids=ids) for kind in KINDS if kind != "photos"}
    return LiteTables(photos=photos, **others)


def read_all(zip_path: Path) -> dict[str, pd.DataFrame]:
    """All five tables, complete, by kind name."""
    return read_lite(zip_path).tables()


# --- internals -------------------------------------------------------------------------------------------


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    if not zip_path.is_file():
        raise DataFormatError(f"{zip_path} does not exist. Run the download stage to fetch Unsplash Lite.")
    try:
        return zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataFormatError(_corrupt_message(zip_path, exc)) from exc


def _corrupt_message(zip_path: Path, exc: BaseException) -> str:
    return (
        f"{zip_path} is not a readable zip ({type(exc).__name__}: {exc}); it is probably truncated or corrupt. "
        "Delete it and run the download again; if it keeps happening, check that dataset.url serves the "
        "Unsplash Lite zip and pin dataset.sha256 to catch a bad mirror."
    )


def _read_shard(zip_path: Path, shard: Shard) -> Iterator[tuple[pd.DataFrame, list[str]]]:
    """Yield (chunk of raw text columns, header) for one shard; translate zip and parse errors."""
    try:
        with _open_zip(zip_path) as zf, zf.open(shard.member) as fh:
            reader = pd.read_csv(
                fh,
                sep="\t",
                header=0,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                encoding="utf-8",
                chunksize=_CHUNK_ROWS,
            )
            with reader:  # a header-only shard still yields one empty chunk that carries the header
                for chunk in reader:
                    yield chunk, [str(c) for c in chunk.columns]
    except DataFormatError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataFormatError(_corrupt_message(zip_path, exc)) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataFormatError(
            f"{zip_path}: {shard.member} is empty (not even a header line). Download the zip again."
        ) from exc
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataFormatError(
            f"{zip_path}: {shard.member} is not a tab-separated Unsplash Lite table ({exc}). "
            "Download the zip again; if it persists, the release format changed and the reader needs updating."
        ) from exc


def _check_required(zip_path: Path, shard: Shard, header: list[str]) -> None:
    missing = [c for c in REQUIRED[shard.kind] if c not in header]
    if missing:
        raise DataFormatError(
            f"{zip_path}: {shard.member} lacks required column(s) {', '.join(missing)} "
            f"(found: {', '.join(header) or 'no header'}). This is not an Unsplash Lite `{shard.kind}` table; "
            "check dataset.url and download the zip again."
        )


def _describe_difference(first: list[str], other: list[str]) -> str:
    missing = [c for c in first if c not in other]
    extra = [c for c in other if c not in first]
    if not missing and not extra:
        return "same columns in another order"
    bits = []
    if missing:
        bits.append(f"missing {', '.join(missing)}")
    if extra:
        bits.append(f"extra {', '.join(extra)}")
    return "; ".join(bits)


def _typed(raw: pd.DataFrame, kind: Kind, zip_path: Path) -> pd.DataFrame:
    """Cast known columns to their types, add known columns the release lacks, keep unknown ones as text."""
    schema = SCHEMAS[kind]
    out: dict[str, pd.Series] = {}
    for column, ctype in schema.items():
        if column in raw.columns:
            out[column] = _cast(raw[column], ctype, kind, column, zip_path)
        else:
            out[column] = pd.Series(pd.NA, index=raw.index, dtype=_PANDAS_DTYPE[ctype])
    for column in raw.columns:
        if column not in schema:
            out[str(column)] = raw[column].astype("string")
    typed = pd.DataFrame(out, index=raw.index)
    bad_ids = ~typed["photo_id"].fillna("").map(is_safe_photo_id).astype(bool)
    if bad_ids.any():
        sample = ", ".join(repr(v) for v in typed.loc[bad_ids, "photo_id"].head(3))
        raise DataFormatError(
            f"{zip_path}: `{kind}` has {int(bad_ids.sum())} row(s) whose photo_id is empty or not an Unsplash id "
            f"({sample}). The table is damaged or not Unsplash Lite: download the zip again."
        )
    return typed


def _cast(values: pd.Series, ctype: ColumnType, kind: Kind, column: str, zip_path: Path) -> pd.Series:
    text = values.astype("string").str.strip()
    text = text.mask(text == "")
    if ctype == "str":
        return values.astype("string")
    if ctype == "bool":
        lowered = text.str.lower()
        result = pd.Series(pd.NA, index=values.index, dtype="boolean")
        result[lowered.isin(_TRUE).fillna(False).astype(bool)] = True
        result[lowered.isin(_FALSE).fillna(False).astype(bool)] = False
    elif ctype == "timestamp":
        result = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    else:
        numbers = pd.to_numeric(text, errors="coerce")
        if ctype == "int":
            whole = numbers.where(numbers.isna() | (numbers == numbers.round()))
            result = whole.astype("Float64").astype("Int64")
        else:
            result = numbers.astype("Float64")
    _check_parse_rate(text, result, kind, column, ctype, zip_path)
    return result


def _check_parse_rate(
    text: pd.Series, result: pd.Series, kind: Kind, column: str, ctype: ColumnType, zip_path: Path
) -> None:
    present = text.notna()
    n_present = int(present.sum())
    if n_present == 0:
        return
    failed = present & result.isna()
    n_failed = int(failed.sum())
    if n_failed / n_present > _MAX_UNPARSEABLE:
        sample = ", ".join(repr(v) for v in text[failed].head(3))
        raise DataFormatError(
            f"{zip_path}: {n_failed} of {n_present} values in `{kind}.{column}` are not a {ctype} ({sample}). "
            "The columns are shifted or the release format changed: download the zip again, and if it "
            "persists update clipsearch.unsplash.SCHEMAS."
        )
