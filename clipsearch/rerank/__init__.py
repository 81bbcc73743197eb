"""Re-rankers: reorder the index's top candidates. `NoopReranker` keeps CLIP order."""

from clipsearch.rerank.base import NoopReranker, Reranker, clip_order

__all__ = ["NoopReranker", "Reranker", "clip_order"]
