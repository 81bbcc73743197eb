"""Every CLIPSEARCH_<SECTION>__<FIELD> that a manifest, the Dockerfile, a workflow or the docs set names a real
setting: the service refuses unknown keys at start, so a typo here would be a crash loop on the cluster."""

from __future__ import annotations

import re
from pathlib import Path

from clipsearch.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("k8s", "Dockerfile", ".github", "docs", "README.md", "terraform")
VARIABLE = re.compile(r"CLIPSEARCH_([A-Z0-9]+)__([A-Z0-9_]+)")


def _files() -> list[Path]:
    files: list[Path] = []
    for name in SOURCES:
        path = REPO / name
        files += [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return files


def test_every_settings_variable_in_deployment_artefacts_exists() -> None:
    seen: dict[str, Path] = {}
    for file in _files():
        for match in VARIABLE.finditer(file.read_text(errors="replace")):
            seen.setdefault(match.group(0), file)
    assert seen, "no CLIPSEARCH_ settings variables found: the scan is broken"
    bad = []
    for name, file in sorted(seen.items()):
        section, field = (part.lower() for part in VARIABLE.fullmatch(name).groups())  # type: ignore[union-attr]
        model = Settings.model_fields.get(section)
        if model is None or field not in model.annotation.model_fields:  # type: ignore[union-attr]
            bad.append(f"{name} in {file.relative_to(REPO)}")
    assert not bad, "unknown settings variables: " + "; ".join(bad)
