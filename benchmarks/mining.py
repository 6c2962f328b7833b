"""Mining speed: in-batch miners at B = 256 / 1024 / 4096 (next to pytorch-metric-learning when
installed) and global hard negatives for 256 anchors over the store.

    python benchmarks/mining.py [--sizes 100000 1000000] [--batches 256 1024 4096] [--out bench-results]
                                [--device cuda] [--sections inbatch,global]

Same code as the ``inbatch`` and ``mining`` sections of ``curriculum bench``
(:mod:`curriculum.cli.bench_sections`): in-batch median ms, peak extra memory and whether ours and
PML return the same tuples; global latency (median of 10 batches, k=20) at the store's default
nprobe and at nprobe 16, with the recall of the negatives against exact search (same filter).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, write_json  # noqa: E402

from curriculum.cli.bench_sections import global_mining_section, inbatch_section, print_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--device", default="cpu", help="torch device of the in-batch section (e.g. cuda)")
    ap.add_argument("--sections", default="inbatch,global", help="inbatch, global or both (default)")
    a = ap.parse_args()
    parts = {p.strip() for p in a.sections.split(",")}
    if not parts or not parts <= {"inbatch", "global"}:
        ap.error(f"--sections: expected inbatch and/or global, got {a.sections!r}")
    rows = (inbatch_section(a.batches, device=a.device) if "inbatch" in parts else []) + (
        global_mining_section(a.sizes) if "global" in parts else [])
    text = print_table(rows, ["section", "what", "ms", "pml_ms", "same_output", "peak_extra_mb", "recall_vs_exact",
                                      "first_call_s"],
                       "Mining speed")
    name = "mining.json" if a.device == "cpu" else f"mining_{a.device.replace(':', '')}.json"
    write_json(os.path.join(a.out, name), {"machine": machine(), "rows": rows, "table": text})


if __name__ == "__main__":
    main()
