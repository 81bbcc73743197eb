"""Drift check cost: `compute_drift` on 1000 x 512 live queries against 1000 x 512 references.

The service runs this every few minutes in a worker thread, so it must stay well under its interval; it was a
unit test whose only assertion was "under 20 s", which is a benchmark. The Evidently HTML report (t-SNE) is
timed separately with `--html`.

    python -m benchmarks.bench_drift [--rows 1000] [--repeats 3] [--html]
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import print_table, write_result
from clipsearch.drift import compute_drift
from clipsearch_devtools.vectors import embeddings

TARGET_S = 20.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--html", action="store_true", help="also build the Evidently report (t-SNE)")
    args = parser.parse_args()
    ref, cur = embeddings(args.rows, seed=1), embeddings(args.rows, seed=2, shift=0.5)
    rows = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        result, _ = compute_drift(ref, cur, html=args.html)
        rows.append({"seconds": round(time.perf_counter() - started, 3), "score": round(result.drift_score, 4)})
    best = min(r["seconds"] for r in rows)
    print_table(rows, ["seconds", "score"], f"compute_drift {args.rows}x512 vs {args.rows}x512 (html={args.html})")
    print(f"best {best:.3f} s (target < {TARGET_S:.0f} s): {'met' if best < TARGET_S else 'MISSED'}")
    write_result("drift", {"rows": args.rows, "html": args.html, "runs": rows, "best_s": best, "target_s": TARGET_S})


if __name__ == "__main__":
    main()
