"""StreamSelector throughput: items per second at sliding-window store sizes 1k / 10k / 100k.

    python benchmarks/stream.py [--items 200000] [--dim 64] [--window 1024] [--out bench-results]

Items are d-dimensional vectors (the embedding is the identity, so the selector's own cost is
what is measured): novelty scoring against the store, top-k selection, store update.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, print_table, write_json  # noqa: E402

from curriculum.stream import StreamSelector  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--keep", type=float, default=0.25)
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args()
    data = np.random.default_rng(0).normal(size=(a.items, a.dim)).astype(np.float32)
    rows = []
    for size in (1_000, 10_000, 100_000):
        # the store only holds emitted items: prime it so every measured window searches a full store
        sel = StreamSelector(data, embed=lambda xs: np.stack(xs), window=a.window, keep=a.keep, store_size=size)
        n = 0
        for _ in sel:  # warm-up pass fills the store
            n += 1
        t = time.perf_counter()
        m = sum(1 for _ in sel)
        dt = time.perf_counter() - t
        rows.append({"store_size": size, "window": a.window, "keep": a.keep, "items_per_s": a.items / dt,
                     "emitted": m, "store_len": len(sel.store), "max_buffer": sel.max_buffer})
        print_table(rows[-1:], list(rows[-1]))
    text = print_table(rows, ["store_size", "window", "keep", "items_per_s", "emitted", "store_len", "max_buffer"],
                       f"StreamSelector (novelty, top-k), d={a.dim}")
    write_json(os.path.join(a.out, "stream.json"), {"machine": machine(), "rows": rows, "table": text})


if __name__ == "__main__":
    main()
