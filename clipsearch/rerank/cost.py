"""What one re-ranked request should cost on each configured model: the README's cost table and the re-rank
benchmark use this arithmetic; the service itself bills real `usage_metadata` counts, not these estimates.

Image tokens (Gemini API docs, read 2026-12-02 from stored copies): Gemini 2.x bills an image with both sides
<= 384 px as 258 tokens; Gemini 3.x bills by `media_resolution`, at most 280 / 560 / 1120 tokens per image
for low / medium / high, and an image without a setting as high. Prices are the profile's (`rerank.models`).
"""

from __future__ import annotations

from dataclasses import dataclass

from clipsearch.settings import GeminiModelProfile

GEMINI_2_SMALL_IMAGE_TOKENS = 258
GEMINI_3_IMAGE_TOKENS = {"low": 280, "medium": 560, "high": 1120}
# One request at the defaults (10 candidates, 128 px thumbnails), from the prompt the re-ranker builds:
# ~2,460 characters of instructions, request JSON, candidate headers and response schema at ~4 characters a
# token, and an answer of ten {"id", "reason" (<= 12 words)} objects, ~980 characters of JSON.
TEXT_TOKENS = 600
OUTPUT_TOKENS = 280
CANDIDATES = 10


@dataclass(frozen=True)
class CostEstimate:
    image_tokens: int
    input_tokens: int
    output_tokens: int
    cost_usd: float


def image_tokens_per_thumbnail(profile: GeminiModelProfile) -> int:
    """Tokens one thumbnail (both sides <= 384 px) costs on this model."""
    if profile.media_resolution is not None:
        return GEMINI_3_IMAGE_TOKENS[profile.media_resolution]
    if profile.thinking_level is not None:  # a Gemini 3.x model left at its default resolution (high)
        return GEMINI_3_IMAGE_TOKENS["high"]
    return GEMINI_2_SMALL_IMAGE_TOKENS


def estimate(
    profile: GeminiModelProfile,
    *,
    images: int = CANDIDATES,
    text_tokens: int = TEXT_TOKENS,
    output_tokens: int = OUTPUT_TOKENS,
    thoughts_tokens: int = 0,
) -> CostEstimate:
    """Tokens and dollars of one re-ranked request; thinking tokens are billed as output."""
    image = images * image_tokens_per_thumbnail(profile)
    inputs = image + text_tokens
    outputs = output_tokens + thoughts_tokens
    cost = (inputs * profile.price_input_per_mtok + outputs * profile.price_output_per_mtok) / 1e6
    return CostEstimate(image_tokens=image, input_tokens=inputs, output_tokens=outputs, cost_usd=cost)
