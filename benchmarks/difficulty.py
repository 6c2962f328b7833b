"""Seconds to score N samples with each geometry difficulty score, at each N (default 1M).

    python benchmarks/difficulty.py [--n 250000 1000000 2000000] [--synthetic] [--dim 128] [--k 10]
                                    [--out bench-results]

The pool has the same modes at every N: the Fashion-MNIST CNN-128 features (10 classes, N reached
by augmented copies of the images) or, with ``--synthetic`` or without the images, 100 clustered
modes in ``--dim`` dimensions.

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
    ap.add_argument("--n", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--synthetic", action="store_true", help="100 clustered modes instead of the CNN features")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args()
    rows = scores_section(a.n, a.dim, a.k, real=not a.synthetic)
    text = print_table(rows, ["data", "N", "what", "seconds", "end_to_end_s", "peak_extra_mb"],
                       "Geometry difficulty scores")
    write_json(os.path.join(a.out, "difficulty.json"), {"machine": machine(), "n": a.n, "dim": a.dim, "rows": rows,
                                                         "table": text})


if __name__ == "__main__":
    main()
