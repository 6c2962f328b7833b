"""The all-points kNN graph and k-means of the store (a part composed into
:class:`~curriculum.EmbeddingStore`): the choice between the exact engine, the blocked engine
(with its recall planned before it runs) and the index. Works on a :class:`~.rows.Snapshot`,
outside the store's lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import faiss
import numpy as np

from .._util.progress import progress_bar
from ..neighbors import blocked_knn, brute_knn, exact_knn_graph, first_k_valid, get_metric, plan_recall
from .rows import Snapshot

EXACT_GRAPH_MIN_ROWS = 50_000  # from here the exact graph runs in blocks (exact engine), below via faiss flat
DEFAULT_NPROBE = 16  # blocked all-points kNN: clusters probed per cluster (the recall knob)
EXACT_PAIR_SHARE = 0.4  # a blocked plan scoring this share of all pairs runs exact instead
AUTO_PLAN_MIN_ROWS = 20_000  # knn(auto) plans from here (below, an exact graph takes well under a second)


@dataclass(frozen=True)
class KMeansResult:
    """Output of :meth:`EmbeddingStore.kmeans`: centroids, the cluster of every stored row (in
    ``store.ids`` order) and each row's distance to its centroid (store metric).

    Example:
        >>> import numpy as np
        >>> from curriculum import EmbeddingStore
        >>> store = EmbeddingStore(2, metric="l2"); _ = store.add(np.array([[0., 0], [0, 1], [9, 9], [9, 8]], np.float32))
        >>> km = store.kmeans(2, seed=0, progress=False)
        >>> sorted(np.bincount(km.assignments).tolist()), km.centroids.shape
        ([2, 2], (2, 2))
    """

    centroids: np.ndarray
    assignments: np.ndarray
    distances: np.ndarray


def knn_plan(vec: np.ndarray, k: int, metric: str, floor: int, exclude_self: bool,
             target: float) -> tuple[dict[str, Any], Any]:
    """What ``knn(method="auto")`` runs (see :func:`curriculum.neighbors.plan_recall`): the
    smallest nprobe meeting ``target``, priced by the share of all pairs it scores. A scored pair
    costs ~1.6x a GEMM pair in the blocked engine (its top-k), while the exact engine scores each
    unordered pair once (~1.3x per pair with its bound checks): exact wins from ~40% of the pairs."""
    plan = plan_recall(vec, k, metric, target, floor=floor, exclude_self=exclude_self)
    share = plan.pair_share(len(vec))
    report = {"method": "exact" if share >= EXACT_PAIR_SHARE else "blocked", "nprobe": plan.nprobe,
              "recall_estimate": plan.recall_estimate, "pair_share": share}
    return report, plan


def graph(snap: Snapshot, k: int, metric: str, method: str, nprobe: int, exclude_self: bool, progress: bool,
          target: float | None, batch_size: int,
          index_candidates: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None
          ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(distances, ids, report)`` of the kNN graph of ``snap`` by ``method`` (already resolved
    from "auto" to "exact" / "blocked" / "index"; ``target`` set = tune nprobe for it)."""
    vec, report = snap.vec, {"method": method}
    rows = None
    if method == "blocked":
        if target is None:
            d, rows, st = blocked_knn(vec, k, metric, nprobe=nprobe, exclude_self=exclude_self, progress=progress,
                                      return_stats=True)
            report.update(nprobe=nprobe, pairs_scored=st["pairs_scored"])
        else:
            report, plan = knn_plan(vec, k, metric, nprobe, exclude_self, target)
            if report["method"] == "blocked":
                d, rows, st = blocked_knn(vec, k, metric, nprobe=plan.nprobe, exclude_self=exclude_self,
                                          progress=progress, centroids=plan.centroids, assign=plan.assign,
                                          return_stats=True)
            elif len(vec) >= EXACT_GRAPH_MIN_ROWS:
                d, rows, st = exact_knn_graph(vec, k, metric, exclude_self=exclude_self, progress=progress,
                                              centroids=plan.centroids, assign=plan.assign, return_stats=True)
            method = report["method"]
            if rows is not None:
                report["pairs_scored"] = st["pairs_scored"]
    elif method == "exact" and len(vec) >= EXACT_GRAPH_MIN_ROWS:
        d, rows, st = exact_knn_graph(vec, k, metric, exclude_self=exclude_self, progress=progress, return_stats=True)
        report["pairs_scored"] = st["pairs_scored"]
    if rows is not None:
        return d, np.where(rows >= 0, snap.ids[np.maximum(rows, 0)], -1), report
    d, ids = _chunked(snap, k, metric, exclude_self, progress, batch_size,
                      index_candidates if method == "index" else None)
    report.setdefault("pairs_scored", len(vec) * len(vec) if method == "exact" else None)
    return d, ids, report


def _chunked(snap: Snapshot, k: int, metric: str, exclude_self: bool, progress: bool, batch_size: int,
             candidates: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None
             ) -> tuple[np.ndarray, np.ndarray]:
    """The graph by query chunks: faiss brute force over the snapshot, or the index's candidates."""
    n, vec, ids = len(snap), snap.vec, snap.ids
    out_d = np.empty((n, k), np.float32)
    out_i = np.empty((n, k), np.int64)
    kf = k + int(exclude_self)
    with progress_bar(total=n, desc=f"kNN graph k={k}", disable=not progress) as bar:
        for s in range(0, n, batch_size):
            e = min(n, s + batch_size)
            if candidates is None:
                d, r = brute_knn(vec[s:e], vec, kf, metric)
                i = np.where(r >= 0, ids[np.maximum(r, 0)], -1)
            else:
                d, i = candidates(vec[s:e], kf)
            valid = i >= 0
            if exclude_self:
                valid &= i != ids[s:e, None]
            out_d[s:e], out_i[s:e] = first_k_valid(d, i, valid, k)
            bar.update(e - s)
    return out_d, out_i


def kmeans(vec: np.ndarray, metric: str, n_clusters: int, seed: int, niter: int, nredo: int,
           spherical: bool, progress: bool) -> KMeansResult:
    """faiss k-means of ``vec`` (spherical: on unit rows, assigned by cosine); assignment by the metric."""
    met = "cosine" if spherical else metric
    if spherical and metric != "cosine":
        vec = get_metric("cosine").prepare(vec)
    km = faiss.Kmeans(vec.shape[1], n_clusters, niter=niter, seed=int(seed), nredo=nredo,
                      spherical=spherical, verbose=False, min_points_per_centroid=1)
    with progress_bar(total=1, desc=f"k-means k={n_clusters}", disable=not progress) as bar:
        km.train(vec)
        bar.update(1)
    cent = np.ascontiguousarray(km.centroids, np.float32)
    d, a = brute_knn(vec, cent, 1, met)  # "ip" assigns by largest inner product
    return KMeansResult(cent, a[:, 0].astype(np.int64), d[:, 0])


__all__ = ['EXACT_GRAPH_MIN_ROWS', 'DEFAULT_NPROBE', 'EXACT_PAIR_SHARE', 'AUTO_PLAN_MIN_ROWS', 'KMeansResult', 'knn_plan', 'graph',
           'kmeans']
