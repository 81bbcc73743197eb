"""The cost arithmetic behind the README's re-rank cost table (so the table cannot drift from the settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipsearch.rerank.cost import estimate
from clipsearch.settings import RerankSettings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_default_estimates_and_the_readme_agree() -> None:
    models = RerankSettings().models
    default = estimate(models["gemini-3.5-flash-lite"])
    assert (default.image_tokens, default.input_tokens, default.output_tokens) == (2800, 3400, 280)
    assert default.cost_usd == pytest.approx(3400 * 0.30e-6 + 280 * 2.50e-6)
    readme = README.read_text()
    for name, profile in models.items():
        assert f"${estimate(profile).cost_usd:.5f}" in readme, name
    assert "1.7x over the $0.001 goal" in readme  # said plainly while the default misses it
    assert default.cost_usd > 0.001


def test_thinking_tokens_are_billed_as_output_and_unset_media_resolution_costs_high() -> None:
    profile = RerankSettings().models["gemini-3.5-flash-lite"]
    thinking = estimate(profile, thoughts_tokens=100)
    assert thinking.output_tokens == 380
    assert thinking.cost_usd == pytest.approx(estimate(profile).cost_usd + 100 * 2.50e-6)
    assert estimate(profile.model_copy(update={"media_resolution": None})).image_tokens == 11200
