"""Export the query encoder into the index artifact, and the int8 parity gate (pipeline side; needs torch).

The service on CPU answers text queries from these files alone (`clipsearch.onnx_query`, no torch): the text
graph (`clipsearch.onnx_text.export_text_graph`: transformer, ln_final, EOT pooling, projection; dynamic batch
and length), the token and positional embedding tables (the cheap gather runs in numpy) and the BPE vocabulary.
They are exported from the very weights that embedded the images, so their identity is the artifact's model
identity (recorded in the spec and checked when they are added to the artifact).

int8: when `model.onnx_quantize: int8`, the graph is also quantised (dynamic int8) and measured against fp32 on
the evaluation queries: the minimum cosine between the two embeddings of a query, and the mean overlap of their
top-10 results on the index. Below `model.int8_min_cosine` or `model.int8_min_top10_overlap` the artifact ships
the fp32 graph only and the spec says why; otherwise it ships the int8 graph.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.encoder import ClipEncoder
from clipsearch.errors import ConfigError
from clipsearch.index.search import VectorIndex
from clipsearch.onnx_query import ArtifactTextEncoder
from clipsearch.onnx_text import export_text_graph, quantize_int8
from clipsearch.settings import ModelSettings
from clipsearch.textual import find_text_tower

log = logging.getLogger(__name__)

TEXT_GRAPH = "text_tower.onnx"
TOKEN_EMBEDDING = "text_token_embedding.npy"  # noqa: S105 - a file name
POSITIONAL_EMBEDDING = "text_positional_embedding.npy"
VOCAB = "bpe_simple_vocab_16e6.txt.gz"
SPEC = "spec.json"


@dataclass(frozen=True)
class Parity:
    min_cosine: float
    top10_overlap: float
    n_queries: int


def int8_parity(
    fp32: ArtifactTextEncoder, int8: ArtifactTextEncoder, texts: Sequence[str], index: VectorIndex
) -> Parity:
    """Minimum cosine between the fp32 and int8 embedding of each text, and mean top-10 overlap on `index`."""
    a = fp32.encode_text(list(texts))
    b = int8.encode_text(list(texts))
    cosine = np.sum(a * b, axis=1)
    k = min(10, len(index))
    _, rows_a = index.search(a, k)
    _, rows_b = index.search(b, k)
    overlap = [len(set(x.tolist()) & set(y.tolist())) / max(1, k) for x, y in zip(rows_a, rows_b, strict=True)]
    return Parity(float(cosine.min()), float(np.mean(overlap)), len(texts))


def _write_tables(encoder: ClipEncoder, out: Path) -> dict[str, Any]:
    tower = find_text_tower(encoder.model, encoder._tokenizer)
    if tower is None:
        raise ConfigError(
            f"{encoder.identity.arch} has no classic CLIP text tower (causal mask, EOT pooling, CLIP BPE); its "
            "query encoder cannot be exported and the service will run it in torch"
        )
    import open_clip.tokenizer
    import torch

    with torch.no_grad():
        table: Any = tower.token_embedding.weight  # an nn.Embedding's weight
        np.save(out / TOKEN_EMBEDDING, table.detach().float().cpu().numpy())
        np.save(out / POSITIONAL_EMBEDDING, tower.positional_embedding.detach().float().cpu().numpy())
    shutil.copyfile(open_clip.tokenizer.default_bpe(), out / VOCAB)
    export_text_graph(tower.transformer, tower.ln_final, tower.text_projection, tower.attn_mask, out / TEXT_GRAPH)
    return {"context_length": int(tower.attn_mask.shape[0]), "width": int(tower.positional_embedding.shape[1])}


def _files() -> dict[str, str]:
    return {
        "text_graph": TEXT_GRAPH,
        "token_embedding": TOKEN_EMBEDDING,
        "positional_embedding": POSITIONAL_EMBEDDING,
        "vocab": VOCAB,
    }


def load_dir(directory: Path, spec: dict[str, Any]) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in spec["files"].values()}


def export_query_encoders(
    encoder: ClipEncoder,
    out: Path,
    settings: ModelSettings,
    parity_texts: Sequence[str],
    index: VectorIndex,
) -> dict[str, Any]:
    """Write the query encoder files and `spec.json` to `out` (replaced); return the spec."""
    import onnx
    import onnxruntime
    import torch

    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file():
            old.unlink()
    text = _write_tables(encoder, out)
    spec: dict[str, Any] = {
        "model": encoder.identity.model_dump(mode="json"),
        "text": {**text, "precision": "fp32"},
        "files": _files(),
        "exported_with": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "int8_gate": {"requested": settings.onnx_quantize == "int8"},
    }
    if settings.onnx_quantize == "int8":
        gate = spec["int8_gate"]
        gate["floors"] = {"min_cosine": settings.int8_min_cosine, "top10_overlap": settings.int8_min_top10_overlap}
        with tempfile.TemporaryDirectory(prefix="clipsearch-int8-") as tmp:
            int8_path = Path(tmp) / TEXT_GRAPH
            quantize_int8(out / TEXT_GRAPH, int8_path)
            blobs = load_dir(out, spec)
            fp32 = ArtifactTextEncoder(spec, blobs)
            int8 = ArtifactTextEncoder(
                {**spec, "text": {**text, "precision": "int8"}}, {**blobs, TEXT_GRAPH: int8_path.read_bytes()}
            )
            parity = int8_parity(fp32, int8, parity_texts, index)
            gate.update(
                {
                    "min_cosine": round(parity.min_cosine, 6),
                    "top10_overlap": round(parity.top10_overlap, 4),
                    "n_queries": parity.n_queries,
                }
            )
            failed = []
            if parity.min_cosine < settings.int8_min_cosine:
                failed.append(f"min cosine {parity.min_cosine:.4f} < {settings.int8_min_cosine}")
            if parity.top10_overlap < settings.int8_min_top10_overlap:
                failed.append(f"top-10 overlap {parity.top10_overlap:.3f} < {settings.int8_min_top10_overlap}")
            gate["passed"] = not failed
            if failed:
                gate["shipped"] = "fp32"
                gate["reason"] = f"int8 below the parity floor on {parity.n_queries} evaluation queries: " + "; ".join(
                    failed
                )
                log.warning("%s: the artifact ships the fp32 text graph only", gate["reason"])
            else:
                shutil.copyfile(int8_path, out / TEXT_GRAPH)
                spec["text"]["precision"] = "int8"
                gate["shipped"] = "int8"
                gate["reason"] = (
                    f"int8 within the floors on {parity.n_queries} evaluation queries (min cosine "
                    f"{parity.min_cosine:.4f}, top-10 overlap {parity.top10_overlap:.3f})"
                )
                log.info("%s: the artifact ships the int8 text graph", gate["reason"])
    import json

    (out / SPEC).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return spec
