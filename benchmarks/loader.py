"""Wrapped loader throughput against the same plain DataLoader (same dataset, batch, workers).

    python benchmarks/loader.py [--batches 200] [--workers 2] [--rounds 5] [--out bench-results]

The dataset is Fashion-MNIST (digits when absent) with a per-item tensor transform, the usual
shape of an image pipeline. Rounds are interleaved (plain, wrapped, wrapped+feedback,
wrapped+feedback+background rescoring, ...) and the median batches/s of each is reported with
its ratio to plain. Goal: the wrapped loader keeps >= 97% of the plain loader's throughput.
Same code as the ``loader`` section of ``curriculum bench``
(:func:`curriculum.cli.bench_sections.loader_section`).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, write_json  # noqa: E402

from curriculum.cli.bench_sections import loader_section, print_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args()
    rows = loader_section(a.batches, a.batch_size, a.workers, a.rounds)
    text = print_table(rows, ["what", "batches_per_s", "ratio_to_plain", "spread"],
                       f"{rows[0]['data']}: batch {a.batch_size}, {a.workers} workers, median of {a.rounds} rounds x "
                       f"{a.batches} batches")
    write_json(os.path.join(a.out, "loader.json"), {"machine": machine(), "rows": rows, "table": text})


if __name__ == "__main__":
    main()
