"""The Unsplash Lite reader: shard discovery, typing, and clear errors on damaged or foreign zips."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd
import pytest

from clipsearch.errors import DataFormatError
from clipsearch.unsplash import (
    KINDS,
    SCHEMAS,
    list_shards,
    load_parquet_tables,
    photo_image_url,
    read_lite,
    read_table,
)
from clipsearch_devtools.unsplash_lite import build_fixture


def _shard(header: list[str], rows: list[list[str]]) -> bytes:
    lines = ["\t".join(header), *("\t".join(r) for r in rows)]
    return ("\n".join(lines) + "\n").encode()


def _minimal_zip(path: Path, overrides: dict[str, bytes | None] | None = None) -> Path:
    """A tiny valid zip: two photos and one row of every other kind; `overrides` replaces/removes members."""
    members: dict[str, bytes | None] = {}
    photo = {c: "" for c in SCHEMAS["photos"]}
    rows = []
    for pid in ("abcdefghijk", "bcdefghijkl"):
        photo.update(photo_id=pid, photo_image_url=f"https://images.unsplash.com/photo-{pid}", photo_featured="t")
        rows.append([photo[c] for c in SCHEMAS["photos"]])
    members["photos.tsv000"] = _shard(list(SCHEMAS["photos"]), rows)
    members["keywords.tsv000"] = _shard(list(SCHEMAS["keywords"]), [["abcdefghijk", "null", "", "12.5", "t"]])
    members["collections.tsv000"] = _shard(
        list(SCHEMAS["collections"]), [["abcdefghijk", "162213", "Nature", "2020-01-02 03:04:05.123"]]
    )
    members["conversions.tsv000"] = _shard(
        list(SCHEMAS["conversions"]), [["2022-06-01 10:00:00", "download", "NA", "abcdefghijk", "u1", "US"]]
    )
    members["colors.tsv000"] = _shard(
        list(SCHEMAS["colors"]), [["abcdefghijk", "0c0c0c", "12", "12", "12", "black", "0.5", "0.2"]]
    )
    members.update(overrides or {})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            if data is not None:
                zf.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def small_fixture(tmp_path_factory: pytest.TempPathFactory):
    return build_fixture(tmp_path_factory.mktemp("lite"), n_photos=40, seed=3, photo_shards=3)


def test_multi_shard_zip_reads_every_row_in_file_order(small_fixture) -> None:
    shards = list_shards(small_fixture.zip_path)
    assert [s.member for s in shards["photos"]] == ["photos.tsv000", "photos.tsv001", "photos.tsv002"]
    tables = read_lite(small_fixture.zip_path)
    assert tables.counts() == small_fixture.counts
    assert tables.photos["photo_id"].tolist() == small_fixture.photo_ids
    assert list(tables.photos.columns) == list(SCHEMAS["photos"])


def test_columns_are_typed(small_fixture) -> None:
    tables = read_lite(small_fixture.zip_path)
    photos, keywords, conversions = tables.photos, tables.keywords, tables.conversions
    assert str(photos["photo_submitted_at"].dtype) == "datetime64[ns, UTC]"
    assert str(photos["photo_featured"].dtype) == "boolean"
    assert set(photos["photo_featured"].dropna().unique()) <= {True, False}
    assert str(photos["photo_width"].dtype) == "Int64"
    assert str(photos["photo_aspect_ratio"].dtype) == "Float64"
    assert str(photos["photo_description"].dtype) == "string"
    assert str(keywords["suggested_by_user"].dtype) == "boolean"
    assert keywords["suggested_by_user"].any()
    assert not keywords["suggested_by_user"].all()
    assert conversions["converted_at"].min() >= pd.Timestamp("2022-05-01", tz="UTC")
    # CSV quoting inside a TAB-separated shard, and an embedded newline, survive
    descriptions = set(photos["photo_description"].dropna())
    assert 'She said "wow" at the view' in descriptions
    assert "two lines\nof description" in descriptions


def test_csv000_naming_in_a_subfolder(tmp_path: Path) -> None:
    info = build_fixture(tmp_path, n_photos=16, seed=1, ext="csv", subfolder="unsplash-research-dataset-lite-1.2.2")
    shards = list_shards(info.zip_path)
    assert shards["photos"][0].member == "unsplash-research-dataset-lite-1.2.2/photos.csv000"
    assert read_lite(info.zip_path).counts() == info.counts


def test_limit_keeps_first_photos_and_only_their_rows(small_fixture) -> None:
    full = read_lite(small_fixture.zip_path)
    cut = read_lite(small_fixture.zip_path, limit=15)  # crosses the first shard boundary (14 rows)
    kept = small_fixture.photo_ids[:15]
    assert cut.photos["photo_id"].tolist() == kept
    for kind in KINDS[1:]:
        table = getattr(cut, kind)
        assert set(table["photo_id"]) <= set(kept)
        expected = getattr(full, kind)
        assert len(table) == int(expected["photo_id"].isin(kept).sum())


def test_only_empty_fields_are_missing(tmp_path: Path) -> None:
    tables = read_lite(_minimal_zip(tmp_path / "lite.zip"))
    assert tables.keywords["keyword"].tolist() == ["null"]  # a keyword, not a missing value
    assert tables.conversions["keyword"].tolist() == ["NA"]
    assert tables.keywords["ai_service_1_confidence"].isna().all()
    assert tables.keywords["ai_service_2_confidence"].tolist() == [12.5]
    assert tables.collections["collection_id"].tolist() == ["162213"]


def test_older_release_without_blur_hash_gets_an_empty_column(tmp_path: Path) -> None:
    header = [c for c in SCHEMAS["photos"] if c != "blur_hash"]
    row = ["abcdefghijk" if c == "photo_id" else "https://x/y" if c == "photo_image_url" else "" for c in header]
    path = _minimal_zip(tmp_path / "old.zip", {"photos.tsv000": _shard(header, [row])})
    photos = read_table(path, "photos")
    assert list(photos.columns) == list(SCHEMAS["photos"])
    assert photos["blur_hash"].isna().all()


def test_unknown_extra_columns_are_kept_as_text(tmp_path: Path) -> None:
    header = [*SCHEMAS["colors"], "new_field"]
    path = _minimal_zip(
        tmp_path / "new.zip",
        {"colors.tsv000": _shard(header, [["abcdefghijk", "ffffff", "255", "255", "255", "white", "1", "1", "x"]])},
    )
    colors = read_table(path, "colors")
    assert colors["new_field"].tolist() == ["x"]


def test_missing_kind_names_the_kind(tmp_path: Path) -> None:
    path = _minimal_zip(tmp_path / "lite.zip", {"colors.tsv000": None})
    with pytest.raises(DataFormatError, match=r"no `colors` table"):
        read_lite(path)


def test_missing_required_column_names_column_and_file(tmp_path: Path) -> None:
    header = [c for c in SCHEMAS["photos"] if c != "photo_image_url"]
    path = _minimal_zip(tmp_path / "lite.zip", {"photos.tsv000": _shard(header, [["abcdefghijk"] + [""] * 29])})
    with pytest.raises(DataFormatError, match=r"photos\.tsv000 lacks required column\(s\) photo_image_url"):
        read_table(path, "photos")


def test_header_mismatch_between_shards(tmp_path: Path) -> None:
    good = list(SCHEMAS["keywords"])
    bad = [c for c in good if c != "ai_service_2_confidence"]
    path = _minimal_zip(
        tmp_path / "lite.zip",
        {"keywords.tsv001": _shard(bad, [["bcdefghijkl", "sky", "50", "f"]])},
    )
    with pytest.raises(DataFormatError, match=r"keywords\.tsv001 differs .*missing ai_service_2_confidence"):
        read_table(path, "keywords")


def test_duplicate_shard_in_two_folders_is_refused(tmp_path: Path) -> None:
    data = _shard(list(SCHEMAS["colors"]), [])
    path = _minimal_zip(tmp_path / "lite.zip", {"copy/colors.tsv000": data})
    with pytest.raises(DataFormatError, match="two files for shard 0 of `colors`"):
        list_shards(path)


def test_unparseable_values_are_reported(tmp_path: Path) -> None:
    rows = [["abcdefghijk", "ffffff", "red", "green", "blue", "white", "1", "1"]]
    path = _minimal_zip(tmp_path / "lite.zip", {"colors.tsv000": _shard(list(SCHEMAS["colors"]), rows)})
    with pytest.raises(DataFormatError, match=r"`colors\.red` are not a int"):
        read_table(path, "colors")


def test_unsafe_photo_id_is_refused(tmp_path: Path) -> None:
    rows = [["../../etc/passwd", "ffffff", "1", "1", "1", "white", "1", "1"]]
    path = _minimal_zip(tmp_path / "lite.zip", {"colors.tsv000": _shard(list(SCHEMAS["colors"]), rows)})
    with pytest.raises(DataFormatError, match="not an Unsplash id"):
        read_table(path, "colors")


def test_truncated_zip(small_fixture, tmp_path: Path) -> None:
    data = small_fixture.zip_path.read_bytes()
    path = tmp_path / "truncated.zip"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=r"truncated\.zip is not a readable zip .*truncated or corrupt"):
        read_lite(path)


def test_corrupted_member_fails_its_crc(tmp_path: Path) -> None:
    payload = _shard(list(SCHEMAS["colors"]), [["abcdefghijk", "ffffff", "1", "1", "1", "white", "1", "1"]] * 50)
    path = _minimal_zip(tmp_path / "lite.zip")
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("colors.tsv001", payload)
    raw = bytearray(path.read_bytes())
    at = raw.find(b"white\t1\t1\nabcdefghijk", raw.find(b"colors.tsv001")) + 2
    raw[at] ^= 0x01  # one flipped bit inside the stored member
    path.write_bytes(bytes(raw))
    with pytest.raises(DataFormatError, match="truncated or corrupt"):
        read_table(path, "colors")


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "page.zip"
    path.write_text("<html>Access denied</html>")
    with pytest.raises(DataFormatError, match="not a readable zip"):
        list_shards(path)


def test_parquet_round_trip_keeps_types(small_fixture, tmp_path: Path) -> None:
    tables = read_lite(small_fixture.zip_path, limit=10)
    tables.save_parquet(tmp_path)
    loaded = load_parquet_tables(tmp_path)
    for kind in KINDS:
        pd.testing.assert_frame_equal(getattr(loaded, kind), getattr(tables, kind))


def test_load_parquet_tables_says_to_run_download(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="Run the download stage"):
        load_parquet_tables(tmp_path)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://images.unsplash.com/photo-1", "https://images.unsplash.com/photo-1?w=400"),
        ("https://images.unsplash.com/photo-1?w=1080", "https://images.unsplash.com/photo-1?w=400"),
        (
            "https://images.unsplash.com/photo-1?ixid=abc&w=1080&q=80",
            "https://images.unsplash.com/photo-1?ixid=abc&q=80&w=400",
        ),
        (
            "http://127.0.0.1:8765/photos/x.jpg?fm=jpg&fit=max",
            "http://127.0.0.1:8765/photos/x.jpg?fm=jpg&fit=max&w=400",
        ),
    ],
)
def test_photo_image_url_sets_width(url: str, expected: str) -> None:
    assert photo_image_url(url, 400) == expected


def test_photo_image_url_rejects_bad_width() -> None:
    with pytest.raises(ValueError, match="positive"):
        photo_image_url("https://x/y", 0)


def test_missing_zip_says_to_run_download(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"does not exist\. Run the download stage"):
        read_table(tmp_path / "missing.zip", "photos")
