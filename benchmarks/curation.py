"""How ``curate()`` grows with N on a pool whose modes stay the same (default 100 modes in 128-d,
sizes falling 100x from head to tail, at 250k / 1M / 2M rows), curated to 10% with default
arguments: seconds, peak memory and balance beside random subsets.

    python benchmarks/curation.py [--sizes 250000 1000000 2000000] [--modes 100] [--dim 128] [--out bench-results]

The pools of the ``curation`` section of ``curriculum bench`` (:func:`curriculum.cli.bench_curation.mode_pool`).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, write_json  # noqa: E402

from curriculum.cli.bench_curation import curation_scaling  # noqa: E402
from curriculum.cli.bench_sections import print_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000, 2_000_000])
    ap.add_argument("--modes", type=int, default=100)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args()
    rows = curation_scaling(a.sizes, a.modes, a.dim)
    text = print_table(rows, ["set", "n", "seconds", "peak_mb", "max_min", "random_max_min", "effective",
                              "rare_share", "rare_x_random"], "curate() against N, the modes fixed")
    write_json(os.path.join(a.out, "curation_scaling.json"), {"machine": machine(), "rows": rows, "table": text})


if __name__ == "__main__":
    main()
