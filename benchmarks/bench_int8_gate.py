"""What the int8 parity gate measures on ViT-B-32 (random weights here: no pretrained checkpoint can be fetched).

Runs the export stage's own code (`clipsearch.query_encoders.export_query_encoders` with `onnx_quantize: int8`)
on the benchmark queries against a 25K synthetic index, and prints the gate's verdict: minimum cosine between
the fp32 and int8 embeddings of each query, mean top-10 overlap of their results, the floors and what ships.
On real weights the figures differ (outlier channels); the pipeline measures them on the evaluation queries.

    python -m benchmarks.bench_int8_gate
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from benchmarks.common import QUERIES, structured_vectors, write_result
from clipsearch.encoder import ClipEncoder
from clipsearch.index.search import ExactIndex
from clipsearch.query_encoders import export_query_encoders
from clipsearch.settings import ModelSettings


def main() -> None:
    encoder = ClipEncoder(ModelSettings(arch="ViT-B-32", pretrained="random", device="cpu")).load()
    index = ExactIndex(structured_vectors(25_000, encoder.dim))
    texts = [f"{q} {suffix}" for q in QUERIES for suffix in ("", "at night", "in black and white")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        spec = export_query_encoders(encoder, Path(tmp), ModelSettings(onnx_quantize="int8"), texts, index)
    gate = spec["int8_gate"]
    print(f"exported + quantised + measured in {time.perf_counter() - started:.0f} s")
    print(
        f"int8 gate on {gate['n_queries']} queries: min cosine {gate['min_cosine']}, top-10 overlap "
        f"{gate['top10_overlap']} (floors {gate['floors']}): ships {gate['shipped']}; {gate['reason']}"
    )
    print(f"wrote {write_result('int8_gate', {'arch': 'ViT-B-32', 'weights': 'random', 'gate': gate})}")


if __name__ == "__main__":
    main()
