"""Inputs for index artifacts in tests and benchmarks: the metadata frame, built one way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd


def metadata_frame(ids: Sequence[str], **columns: Any) -> pd.DataFrame:
    """An artifact metadata frame for `ids`: every contract column, each a scalar or a list; override any, add more.

    Defaults: `image_url` https://images.example/<id>, `description` "d", `photographer` "a", 400 x 300,
    no blur_hash.
    """
    ids = list(ids)
    data: dict[str, Any] = {
        "photo_id": ids,
        "image_url": [f"https://images.example/{i}" for i in ids],
        "description": "d",
        "photographer": "a",
        "width": 400,
        "height": 300,
        "blur_hash": None,
    }
    data.update(columns)
    return pd.DataFrame(data)
