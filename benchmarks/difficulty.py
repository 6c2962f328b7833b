"""Seconds to score N x d samples with each geometry difficulty score (default 1M x 128).

    python benchmarks/difficulty.py [--n 1000000] [--dim 128] [--k 10] [--out bench-results]

The kNN graph is computed once (timed on its own) and shared by the kNN-based scores, as in
real use; each score's end-to-end time is graph + its own work. Same code as the ``scores``
section of ``curriculum bench`` (:func:`curriculum.cli.bench_sections.scores_section`).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, write_json  # noqa: E402

from curriculum.cli.bench_sections import print_table, scores_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args()
    rows = scores_section(a.n, a.dim, a.k)
    text = print_table(rows, ["what", "seconds", "end_to_end_s", "peak_extra_mb"],
                       f"Geometry difficulty scores, N={a.n}, d={a.dim}, clustered data")
    write_json(os.path.join(a.out, "difficulty.json"), {"machine": machine(), "n": a.n, "dim": a.dim, "rows": rows,
                                                         "table": text})


if __name__ == "__main__":
    main()
