"""Mining speed: in-batch miners at B = 256 / 1024 / 4096 and global hard negatives over the store.

    python benchmarks/mining.py [--sizes 100000 1000000] [--out bench-results]

In-batch: median time of each miner (and the peak extra memory of its tensors, measured with
torch's CPU allocator profiler when available, else estimated from the largest intermediate).
Global: latency of ``HardNegativeMiner.negatives`` for 256 anchors (k=20) against stores of
100k and 1M clustered vectors (d=128, the store's auto index), and the recall of the mined
negatives against exact search with the same label filter.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, print_table, write_json  # noqa: E402

import curriculum as cl  # noqa: E402
from curriculum.data import clustered  # noqa: E402
from curriculum.mining import BatchHardMiner, HardNegativeMiner, MultiSimilarityMiner, SemiHardMiner  # noqa: E402


def median_time(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def peak_mb(fn) -> float:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    peak = 0
    cur = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        cur += max(e.cpu_memory_usage, 0)
        peak = max(peak, cur)
    return peak / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args()
    rows = []
    g = torch.Generator().manual_seed(0)
    for b in a.batches:
        emb = torch.randn(b, 128, generator=g)
        lab = torch.randint(0, max(2, b // 8), (b,), generator=g)
        for name, miner in (("batch-hard", BatchHardMiner()), ("semi-hard", SemiHardMiner(0.2)),
                            ("multi-similarity", MultiSimilarityMiner(0.1))):
            t = median_time(lambda: miner(emb, lab), 5 if b <= 1024 else 2)
            rows.append({"bench": "in-batch", "what": f"{name} B={b}", "ms": t * 1e3, "peak_mb": peak_mb(lambda: miner(emb, lab))})
            print_table(rows[-1:], list(rows[-1]))
    for n in a.sizes:
        x, lab = clustered(n, 128, n_clusters=max(10, n // 1000), seed=0)
        labels = lab % 10
        store = cl.EmbeddingStore(128, metric="cosine")
        store.add(x, labels=labels)
        miner = HardNegativeMiner(store, k=20)
        anchors = np.random.default_rng(1).choice(n, 256, replace=False)
        miner.negatives(anchors)  # builds the index when the store is past the exact threshold
        ts = []
        for r in range(10):
            batch = np.random.default_rng(100 + r).choice(n, 256, replace=False)
            t = time.perf_counter()
            got = miner.negatives(batch)
            ts.append(time.perf_counter() - t)
        # recall against exact search with the same filter
        exact = cl.EmbeddingStore(128, metric="cosine", index="flat")
        exact.add(x, labels=labels)
        ref = HardNegativeMiner(exact, k=20).negatives(batch)
        rec = np.mean([len(set(a_[a_ >= 0]) & set(b_)) / 20 for a_, b_ in zip(got.ids, ref.ids)])
        rows.append({"bench": "global", "what": f"256 anchors, k=20, N={n} ({store.active_index})",
                     "ms": float(np.median(ts)) * 1e3, "recall_vs_exact": float(rec)})
        print_table(rows[-1:], list(rows[-1]))
        del store, exact
    text = print_table(rows, ["bench", "what", "ms", "peak_mb", "recall_vs_exact"], "Mining speed")
    write_json(os.path.join(a.out, "mining.json"), {"machine": machine(), "rows": rows, "table": text})


if __name__ == "__main__":
    main()
