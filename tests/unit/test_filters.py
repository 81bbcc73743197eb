"""Metadata filters select exactly the rows a plain pandas reference selects: every field, AND across, OR within."""

from __future__ import annotations

import math
import random
from datetime import date

import numpy as np
import pandas as pd
import pytest

from clipsearch.index.filters import PhotoAttributes, distance_km, orientation_of
from clipsearch.query import Filters, GeoRadius, QueryError

N = 3000
COUNTRIES = ["Iceland", "Japan", "France", "Peru", None]
CITIES = {"Iceland": ["Reykjavik", "Vik"], "Japan": ["Tokyo", "Kyoto"], "France": ["Paris"], "Peru": ["Cusco"]}
CAMERAS = [
    ("Canon", "EOS R5"),
    ("FUJIFILM", "X-T4"),
    ("NIKON CORPORATION", "Z 6"),
    ("Apple", "iPhone 13"),
    (None, None),
]
COLOURS = ["blue", "navy", "white", "black", "green", "orange"]


def synthetic(n: int = N, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = random.Random(seed)
    rows, colours = [], []
    for i in range(n):
        country = rng.choice(COUNTRIES)
        make, model = rng.choice(CAMERAS)
        w, h = rng.choice([(4000, 3000), (3000, 4000), (2000, 2000), (2010, 2000), (6000, 2000), (None, None)])
        lat = rng.uniform(-60, 70) if country and rng.random() < 0.8 else None
        rows.append(
            {
                "photo_id": f"p{i:05d}",
                "image_url": f"https://x/{i}",
                "description": None,
                "photographer": None,
                "width": w,
                "height": h,
                "blur_hash": None,
                "photographer_username": rng.choice(["ann", "bob", "Cy", "dee"]),
                "country": country,
                "city": rng.choice(CITIES[country]) if country else None,
                "location_name": None,
                "latitude": lat,
                "longitude": rng.uniform(-170, 170) if lat is not None else None,
                "submitted_at": pd.Timestamp("2016-01-01", tz="UTC")
                + pd.Timedelta(seconds=rng.randint(0, 8 * 365 * 86400))
                if rng.random() < 0.95
                else None,
                "camera_make": make,
                "camera_model": model,
                "featured": rng.choice([True, False, None]),
                "downloads": rng.randint(0, 10_000),
            }
        )
        for colour in rng.sample(COLOURS, rng.randint(0, 3)):
            colours.append({"photo_id": f"p{i:05d}", "keyword": colour, "coverage": round(rng.random(), 3)})
    return pd.DataFrame(rows), pd.DataFrame(colours)


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame, PhotoAttributes]:
    meta, colours = synthetic()
    return meta, colours, PhotoAttributes(meta, colours)


def reference(meta: pd.DataFrame, colours: pd.DataFrame, f: Filters) -> list[int]:
    """Row by row, in plain Python: the definition every filter must match."""

    def low(v: object) -> str | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA else str(v).lower()

    out = []
    by_photo: dict[str, list[tuple[str, float]]] = {}
    for rec in colours.to_dict("records"):
        by_photo.setdefault(rec["photo_id"], []).append((rec["keyword"], rec["coverage"]))
    for i, r in enumerate(meta.to_dict("records")):
        w, h = r["width"], r["height"]
        if f.orientation:
            if w is None or h is None or (isinstance(w, float) and math.isnan(w)):
                continue
            ratio = w / h
            o = "square" if abs(ratio - 1) <= 0.05 else ("landscape" if ratio > 1 else "portrait")
            if o not in f.orientation:
                continue
        if f.colors and not any(
            k in {c.lower() for c in f.colors} and cov >= f.min_color_coverage
            for k, cov in by_photo.get(r["photo_id"], [])
        ):
            continue
        checks = [
            ("photographer", "photographer_username"),
            ("country", "country"),
            ("city", "city"),
            ("camera_make", "camera_make"),
            ("camera_model", "camera_model"),
        ]
        if any(getattr(f, name) and low(r[col]) not in {v.lower() for v in getattr(f, name)} for name, col in checks):
            continue
        if f.near is not None:
            if r["latitude"] is None or (isinstance(r["latitude"], float) and math.isnan(r["latitude"])):
                continue
            if distance_km(f.near.lat, f.near.lon, r["latitude"], r["longitude"]) > f.near.radius_km:
                continue
        ts = r["submitted_at"]
        if f.submitted_from or f.submitted_to:
            if ts is None or pd.isna(ts):
                continue
            if f.submitted_from and ts.date() < f.submitted_from:
                continue
            if f.submitted_to and ts.date() > f.submitted_to:
                continue
        if f.featured is not None and r["featured"] is not f.featured:
            continue
        if f.min_width is not None and not (w is not None and not math.isnan(w) and w >= f.min_width):
            continue
        if f.min_height is not None and not (h is not None and not math.isnan(h) and h >= f.min_height):
            continue
        out.append(i)
    return out


CASES = [
    Filters(orientation=["landscape"]),
    Filters(orientation=["portrait", "square"]),
    Filters(colors=["blue"], min_color_coverage=0.3),
    Filters(colors=["Blue", "navy"], min_color_coverage=0.0),
    Filters(photographer=["ANN"]),
    Filters(country=["iceland"], city=["Vik"]),
    Filters(country=["Japan", "Peru"], orientation=["landscape"], colors=["green"]),
    Filters(near=GeoRadius(lat=10, lon=20, radius_km=3000)),
    Filters(submitted_from=date(2021, 1, 1)),
    Filters(submitted_from=date(2018, 3, 1), submitted_to=date(2018, 3, 31)),
    Filters(camera_make=["fujifilm"], camera_model=["x-t4"]),
    Filters(featured=True, min_width=3000),
    Filters(featured=False, min_height=3500, orientation=["portrait"]),
    Filters(country=["Atlantis"]),  # a value nobody has: nothing, not an error
    Filters(camera_make=["Canon"], submitted_from=date(2020, 1, 1), colors=["white", "black"], photographer=["cy"]),
]


@pytest.mark.parametrize(
    "filters", CASES, ids=lambda f: ",".join(f.model_dump(exclude_none=True, exclude={"min_color_coverage"}))
)
def test_selection_equals_the_reference(data, filters: Filters) -> None:
    meta, colours, attrs = data
    selection = attrs.select(filters)
    assert selection is not None
    assert selection.rows.tolist() == reference(meta, colours, filters)
    assert selection.n_total == N


def test_random_combinations_equal_the_reference(data) -> None:
    meta, colours, attrs = data
    rng = random.Random(7)
    for _ in range(40):
        fields: dict[str, object] = {}
        if rng.random() < 0.4:
            fields["orientation"] = rng.sample(["landscape", "portrait", "square"], rng.randint(1, 2))
        if rng.random() < 0.4:
            fields["colors"] = rng.sample(COLOURS, rng.randint(1, 2))
            fields["min_color_coverage"] = rng.choice([0.0, 0.2, 0.5])
        if rng.random() < 0.3:
            fields["country"] = rng.sample([c for c in COUNTRIES if c], rng.randint(1, 2))
        if rng.random() < 0.3:
            fields["submitted_from"] = date(rng.randint(2016, 2023), rng.randint(1, 12), 1)
        if rng.random() < 0.3:
            fields["camera_make"] = [rng.choice(["canon", "apple", "FUJIFILM"])]
        if rng.random() < 0.2:
            fields["featured"] = rng.random() < 0.5
        if rng.random() < 0.2:
            fields["near"] = GeoRadius(lat=rng.uniform(-50, 50), lon=rng.uniform(-150, 150), radius_km=4000)
        if not fields:
            fields["min_width"] = 2500
        f = Filters(**fields)
        selection = attrs.select(f)
        assert selection is not None
        assert selection.rows.tolist() == reference(meta, colours, f), f


def test_empty_filters_select_nothing_special(data) -> None:
    assert data[2].select(Filters()) is None


def test_orientation_from_the_aspect_ratio() -> None:
    codes = orientation_of([4000, 3000, 2000, 2090, 0, np.nan], [3000, 4000, 2000, 2000, 100, 10])
    assert codes.tolist() == [0, 1, 2, 2, -1, -1]


def test_a_filter_on_metadata_the_artifact_lacks_names_the_field() -> None:
    meta, _ = synthetic(50)
    old = PhotoAttributes(
        meta[["photo_id", "image_url", "description", "photographer", "width", "height", "blur_hash"]]
    )
    with pytest.raises(QueryError, match=r"filters\.country"):
        old.select(Filters(country=["Iceland"]))
    with pytest.raises(QueryError, match=r"filters\.colors"):
        old.select(Filters(colors=["blue"]))
    assert old.select(Filters(orientation=["landscape"])) is not None  # from width/height, which every index has


def test_facets_count_orientation_and_top_colour(data) -> None:
    meta, colours, attrs = data
    rows = np.arange(0, N, 3, dtype=np.int64)
    facets = attrs.facets(rows)
    assert sum(facets["orientation"].values()) == int((attrs.orientation.codes[rows] >= 0).sum())
    top = colours.sort_values(["photo_id", "coverage"], ascending=[True, False], kind="stable").drop_duplicates(
        "photo_id"
    )
    chosen = set(meta["photo_id"].iloc[rows])
    expected = top[top["photo_id"].isin(chosen)]["keyword"].value_counts().to_dict()
    assert facets["color"] == {k: v for k, v in expected.items()}


def test_cli_filter_pairs_build_filters_and_name_bad_fields() -> None:
    from clipsearch.query import filters_from_pairs

    f = filters_from_pairs(
        ["orientation=landscape", "orientation=square", "color=blue,navy", "near=64.1,-21.9,50", "featured=true"]
    )
    assert f.orientation == ["landscape", "square"]
    assert f.colors == ["blue", "navy"]
    assert f.featured is True
    assert f.near == GeoRadius(lat=64.1, lon=-21.9, radius_km=50)
    for pairs, named in (
        (["orientaton=landscape"], "filters.orientaton: unknown filter"),
        (["orientation=diagonal"], "filters.orientation.0"),
        (["min_width=wide"], "filters.min_width"),
        (["near=1,2"], "filters.near"),
        (["submitted_from=last year"], "filters.submitted_from"),
        (["landscape"], "write key=value"),
    ):
        with pytest.raises(QueryError, match=named):
            filters_from_pairs(pairs)
