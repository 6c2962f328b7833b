"""EmbeddingStore: build + all-points kNN graph (k=10) time and recall@10 on clustered data.

    python benchmarks/store.py [--sizes 100000 1000000] [--dim 128] [--out bench-results]

Recall is measured against exact search on a fixed sample of query rows. Exact (flat) time is
extrapolated from that sample; the approximate indexes (what ``search`` uses) are timed on a
sample of queries and extrapolated to N; the store's all-points graph (``store.knn``, the
blocked engine) is timed in full.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, peak_rss_mb, print_table, recall_at_k, sgemm_gflops, timer, write_json  # noqa: E402

import curriculum as cl  # noqa: E402
from curriculum.data import clustered  # noqa: E402
from curriculum.knn import brute_knn  # noqa: E402


def run(sizes: list[int], dim: int, k: int, n_queries: int, sample: int, hnsw_max: int) -> dict:
    rows = []
    for n in sizes:
        x, _ = clustered(n, dim, n_clusters=max(10, n // 1000), intrinsic_dim=16, seed=0)
        q_rows = np.random.default_rng(1).choice(n, n_queries, replace=False)
        with timer() as t:
            _, i_ex = brute_knn(x[q_rows], x, k + 1, "l2")
        exact_ids = np.array([r[r != q][:k] for r, q in zip(i_ex, q_rows)])
        rows.append({"N": n, "method": "exact (brute_knn: torch products, extrapolated)", "build_s": 0.0,
                     "knn_s": t["s"] * n / n_queries, "recall@10": 1.0, "peak_rss_mb": peak_rss_mb()})
        print_table(rows[-1:], list(rows[-1]))
        # the store's all-points graph: blocked engine at several recall knobs
        for nprobe in (4, 8, 16):
            store = cl.EmbeddingStore(dim, metric="l2")
            store.add(x)
            with timer() as tk:
                _, nb = store.knn(k, method="blocked", nprobe=nprobe, progress=True)
            rows.append({"N": n, "method": f"store.knn blocked nprobe={nprobe}", "build_s": 0.0, "knn_s": tk["s"],
                         "recall@10": recall_at_k(nb[q_rows], exact_ids), "peak_rss_mb": peak_rss_mb()})
            print_table(rows[-1:], list(rows[-1]))
            del store, nb
        # approximate indexes (what search() uses): build, then query time on a sample, extrapolated
        configs = [("auto", {})] + ([("HNSW32", {"efSearch": 64})] if n <= hnsw_max else [])
        for spec, params in configs:
            store = cl.EmbeddingStore(dim, metric="l2", index=spec, index_params=params or None, exact_threshold=0)
            store.add(x)
            with timer() as tb:
                store.build(progress=True)
            s_rows = np.unique(np.concatenate([q_rows, np.random.default_rng(2).choice(n, sample, replace=False)]))
            with timer() as tk:
                _, nb = store.search(x[s_rows], k + 1)
            pos = np.searchsorted(s_rows, q_rows)
            found = np.array([r[r != q][:k] for r, q in zip(nb[pos], q_rows)])
            label = f"index {store.active_index}" + (f" {params}" if params else " (auto nprobe)")
            rows.append({"N": n, "method": label + " (query time extrapolated)", "build_s": tb["s"],
                         "knn_s": tk["s"] * n / len(s_rows), "recall@10": recall_at_k(found, exact_ids),
                         "peak_rss_mb": peak_rss_mb()})
            print_table(rows[-1:], list(rows[-1]))
            del store
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--sample", type=int, default=20_000, help="query rows timed for the index methods")
    ap.add_argument("--hnsw-max", type=int, default=200_000, help="largest N to build HNSW32 for (slow to build)")
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args()
    gf = sgemm_gflops()
    print(f"SGEMM: {gf:.1f} GFLOP/s on {machine()['cpus']} cores")
    res = run(a.sizes, a.dim, a.k, a.queries, a.sample, a.hnsw_max)
    text = print_table(res["rows"], ["N", "method", "build_s", "knn_s", "recall@10", "peak_rss_mb"],
                       "EmbeddingStore: build + all-points kNN graph (k=10), clustered data, d=128")
    write_json(os.path.join(a.out, "store.json"), {"machine": machine(), "sgemm_gflops": gf, **res, "table": text})


if __name__ == "__main__":
    main()
