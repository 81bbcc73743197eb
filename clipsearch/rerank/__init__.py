"""Re-rankers: reorder the index's top candidates. `NoopReranker` keeps CLIP order."""

from typing import TYPE_CHECKING

from clipsearch.rerank.base import NoopReranker, Reranker, clip_order

if TYPE_CHECKING:
    from clipsearch.rerank.gemini import GeminiReranker, build_reranker

__all__ = ["GeminiReranker", "NoopReranker", "Reranker", "build_reranker", "clip_order"]

_LAZY = {"GeminiReranker", "build_reranker"}


def __getattr__(name: str) -> object:
    """`GeminiReranker` and `build_reranker` load on first use: google-genai takes ~0.7 s to import."""
    if name in _LAZY:
        from clipsearch.rerank import gemini

        return getattr(gemini, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
