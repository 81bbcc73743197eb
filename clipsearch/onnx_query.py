"""The query encoder an index artifact carries, run without torch: CLIP BPE tokens -> embedding gather in numpy
-> the exported text graph in ONNX Runtime -> L2-normalised vectors.

A CPU replica needs nothing else to answer text queries: no torch, no open_clip, no checkpoint. The pieces come
from the artifact (`clipsearch.query_encoders` writes them; `load_artifact(..., query_encoders=True)` verifies
their sha256 with the rest), and the encoder's identity is the artifact's own model identity, recorded by the
pipeline that exported the graph from the very weights that embedded the images.

The computation is the EOT-truncated one of `clipsearch.textual`: each batch runs only up to its longest
end-of-text position (CLIP's causal mask makes the padded tail irrelevant).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.bpe import ClipBpeTokenizer
from clipsearch.errors import ArtifactError
from clipsearch.identity import ModelIdentity

log = logging.getLogger(__name__)

INPUT_EMBEDDINGS = "embeddings"  # the graph's inputs and output, as clipsearch.onnx_text exports them
INPUT_EOT = "eot"
OUTPUT_FEATURES = "features"
FILE_KEYS = ("text_graph", "token_embedding", "positional_embedding", "vocab")
BATCH = 64


def _session(graph: bytes, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _npy(data: bytes, name: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ArtifactError(f"the artifact's {name} is not a readable .npy file ({exc})") from exc


class ArtifactTextEncoder:
    """Text queries -> unit vectors with the artifact's own text tower (ONNX Runtime, no torch)."""

    def __init__(self, spec: Mapping[str, Any], blobs: Mapping[str, bytes], threads: int | None = None) -> None:
        files = dict(spec.get("files", {}))
        missing = [key for key in FILE_KEYS if files.get(key) not in blobs]
        if missing:
            raise ArtifactError(f"the artifact's query encoder lacks {', '.join(missing)}; re-run the export stage")
        self.identity = ModelIdentity.model_validate(spec["model"])
        text = dict(spec.get("text", {}))
        self.precision = str(text.get("precision", "fp32"))
        self.name = f"artifact-onnx-{self.precision}"
        self.token_embedding = _npy(blobs[files["token_embedding"]], files["token_embedding"]).astype(np.float32)
        self.positional_embedding = _npy(blobs[files["positional_embedding"]], files["positional_embedding"]).astype(
            np.float32
        )
        context = int(text.get("context_length") or self.positional_embedding.shape[0])
        with tempfile.TemporaryDirectory(prefix="clipsearch-bpe-") as tmp:
            vocab = Path(tmp) / "vocab.txt.gz"
            vocab.write_bytes(blobs[files["vocab"]])
            try:
                self.tokenizer = ClipBpeTokenizer(vocab, context_length=context)
            except (OSError, gzip.BadGzipFile, EOFError) as exc:
                raise ArtifactError(f"the artifact's tokenizer vocabulary is unreadable ({exc})") from exc
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.session = _session(blobs[files["text_graph"]], threads or min(usable, 4))
        self.dim = self.identity.dim

    @property
    def context_length(self) -> int:
        return self.tokenizer.context_length

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        return self.tokenizer([texts] if isinstance(texts, str) else list(texts))

    def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
        out = np.empty((tokens.shape[0], self.dim), dtype=np.float32)
        if tokens.shape[0] == 0:
            return out
        eot = tokens.argmax(axis=1)  # the end-of-text id is the largest id: open_clip's pooling position
        order = np.argsort(eot, kind="stable")
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            length = int(eot[idx].max()) + 1
            x = self.token_embedding[tokens[idx, :length]] + self.positional_embedding[:length]
            feed = {INPUT_EMBEDDINGS: np.ascontiguousarray(x, dtype=np.float32), INPUT_EOT: eot[idx].astype(np.int64)}
            features = np.asarray(self.session.run([OUTPUT_FEATURES], feed)[0], dtype=np.float32)
            norms = np.linalg.norm(features, axis=1, keepdims=True)
            out[idx] = features / np.maximum(norms, 1e-12)
        return out

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_text_with_flags(texts)[0]

    def encode_text_with_flags(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        tokens, truncated = self.tokenize(texts)
        return self.encode_tokens(tokens), truncated

    def warmup(self) -> None:
        self.encode_text(["warm up", "a photo of a dog on the beach at sunset"])
