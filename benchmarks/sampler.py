"""CurriculumSampler throughput: indices per second for N = 1M and 10M, every strategy.

    python benchmarks/sampler.py [--sizes 1000000 10000000] [--out bench-results]

``epoch_indices`` is the vectorised draw of a whole epoch; ``iter`` is the Python iterator a
DataLoader consumes (measured on the first 1M indices). Same code as the ``sampler`` section of
``curriculum bench`` (:func:`curriculum.cli.bench_sections.sampler_section`).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, write_json  # noqa: E402

from curriculum.cli.bench_sections import print_table, sampler_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args()
    rows = sampler_section(a.sizes, a.batch_size)
    text = print_table(rows, ["N", "what", "setup_s", "epoch_indices_per_s", "iter_indices_per_s",
                              "batch_sampler_indices_per_s"], f"CurriculumSampler, batch {a.batch_size}")
    write_json(os.path.join(a.out, "sampler.json"), {"machine": machine(), "rows": rows, "table": text})


if __name__ == "__main__":
    main()
