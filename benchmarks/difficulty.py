"""Seconds to score N x d samples with each geometry difficulty score (default 1M x 128).

    python benchmarks/difficulty.py [--n 1000000] [--dim 128] [--k 10] [--out bench-results]

The kNN graph is computed once (timed on its own) and shared by the kNN-based scores, as in
real use; each score's end-to-end time is graph + its own work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, peak_rss_mb, print_table, write_json  # noqa: E402

import curriculum as cl  # noqa: E402
from curriculum.data import clustered  # noqa: E402
from curriculum.difficulty import (class_margin, knn_distance, label_disagreement, label_entropy,  # noqa: E402
                                   near_duplicates, prototype_distance)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args()
    x, lab = clustered(a.n, a.dim, n_clusters=max(10, a.n // 1000), seed=0)
    labels = lab % 10
    store = cl.EmbeddingStore(a.dim, metric="cosine")
    t = time.perf_counter()
    store.add(x, labels=labels)
    store.build(progress=True)
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    store.knn(a.k, progress=True, batch_size=16384)
    t_graph = time.perf_counter() - t
    rows = [{"score": f"index build ({store.active_index}, for search/mining)", "seconds": t_build,
             "end_to_end_s": t_build},
            {"score": f"kNN graph k={a.k} (store.knn: blocked, nprobe 16)", "seconds": t_graph, "end_to_end_s": t_graph}]
    scorers = [
        (f"knn_distance(k={a.k})", lambda: knn_distance(store, a.k), True),
        (f"label_disagreement(k={a.k})", lambda: label_disagreement(store, a.k), True),
        (f"label_entropy(k={a.k})", lambda: label_entropy(store, a.k), True),
        (f"class_margin(k={a.k})", lambda: class_margin(store, a.k), True),
        ("prototype_distance(n_clusters=1000)", lambda: prototype_distance(store, 1000), False),
        ("near_duplicates(0.95)", lambda: near_duplicates(store, 0.95, progress=True), False),
    ]
    for name, fn, uses_graph in scorers:
        t = time.perf_counter()
        fn()
        s = time.perf_counter() - t
        rows.append({"score": name, "seconds": s, "end_to_end_s": s + (t_graph if uses_graph else 0.0),
                     "peak_rss_mb": peak_rss_mb()})
        print(f"{name}: {s:.2f} s", flush=True)
    text = print_table(rows, ["score", "seconds", "end_to_end_s", "peak_rss_mb"],
                       f"Geometry difficulty scores, N={a.n}, d={a.dim}, clustered data")
    write_json(os.path.join(a.out, "difficulty.json"), {"machine": machine(), "n": a.n, "dim": a.dim, "rows": rows,
                                                         "table": text})


if __name__ == "__main__":
    main()
