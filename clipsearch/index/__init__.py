"""The index artifact (vectors + ids + metadata + manifest) and the search structures over it."""

from clipsearch.index.artifact import (
    FORMAT_VERSION,
    IndexArtifact,
    IndexSpec,
    Manifest,
    add_reference_queries,
    load_artifact,
    read_manifest,
    with_reference_queries,
    write_artifact,
)
from clipsearch.index.search import (
    ExactIndex,
    FaissHnswIndex,
    FaissIvfIndex,
    VectorIndex,
    build_index,
    load_index,
)

__all__ = [
    "FORMAT_VERSION",
    "ExactIndex",
    "FaissHnswIndex",
    "FaissIvfIndex",
    "IndexArtifact",
    "IndexSpec",
    "Manifest",
    "VectorIndex",
    "add_reference_queries",
    "build_index",
    "load_artifact",
    "load_index",
    "read_manifest",
    "with_reference_queries",
    "write_artifact",
]
