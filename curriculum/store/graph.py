"""The all-points kNN graph and k-means of the store (a part composed into
:class:`~curriculum.EmbeddingStore`): the choice between the exact engine, the blocked engine
(with its recall planned before it runs) and the index. Works on a :class:`~.rows.Snapshot`,
outside the store's lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .._util.progress import progress_bar
from ..neighbors import (blocked_knn, brute_knn, descent_knn, exact_knn_graph, first_k_valid, get_metric,
                         nearest_rows, plan_recall, sampled_recall)
from .rows import Snapshot

EXACT_GRAPH_MIN_ROWS = 50_000  # from here the exact graph runs in blocks (exact engine), below by brute_knn
DEFAULT_NPROBE = 16  # blocked all-points kNN: clusters probed per cluster (the recall knob)
EXACT_PAIR_SHARE = 0.4  # a blocked plan scoring this share of all pairs runs exact instead
AUTO_PLAN_MIN_ROWS = 5_000  # knn(auto) plans from here (below, an exact graph takes a few milliseconds)
DESCENT_MIN_ROWS = 20_000  # ... and considers NN-descent from here (below, exact or blocked: its start-up costs more)
DESCENT_PAIRS_PER_ROW = 2500  # knn(auto) runs NN-descent where the blocked plan needs this many pairs per row
DESCENT_NEAR = 0.05  # NN-descent this close below the target runs again with lists 1.25x as long (else 2x)
DESCENT_PAIRS_PER_LIST_SLOT = 12  # ... and more than this x (k + 8)^2: NN-descent's cost grows with its lists squared
SCREEN_BLOCK_ROWS = 1024  # knn(auto) first plans on blocks of this many rows (a tenth of the fine plan's cost) ...
KMEANS_POINTS_PER_CENTROID = 256  # store.kmeans fits on a sample of this many rows a centroid (faiss's default)
SCREEN_MARGIN = 2.0  # ... and runs NN-descent at once where they need this x the pairs per row that choose it


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
    """What ``knn(method="auto")`` runs. The blocked plan (:func:`curriculum.neighbors.plan_recall`)
    finds the smallest nprobe meeting ``target`` and so the pairs per row the blocked engine would
    score. From :data:`DESCENT_PAIRS_PER_ROW` on (and above ~12 (k + 8)^2, NN-descent's own pairs per
    row, which grow with its lists squared - at k = 50 on 24k rows exact is cheaper), the
    neighbourhoods do not follow k-means blocks (real text and image embeddings) and NN-descent is
    cheaper from :data:`DESCENT_MIN_ROWS` rows
    (:func:`curriculum.neighbors.descent_knn`, ~400-900 pairs per row at ~6-8x the cost of a GEMM
    pair; its recall is measured after it runs). Otherwise the blocked engine runs, or exact from
    40% of all pairs: a blocked pair costs ~1.6x a GEMM pair (its top-k), the exact engine scores
    each unordered pair once (~1.3x per pair with its bound checks). An explicit ``floor`` (nprobe
    > 1) keeps the blocked engine.

    From :data:`DESCENT_MIN_ROWS` rows a coarse plan comes first (blocks of
    :data:`SCREEN_BLOCK_ROWS` rows: 0.05-0.2 s where the fine one takes 0.5-1.9 s on 100k-250k
    real embeddings); where it needs :data:`SCREEN_MARGIN` x the pairs per row that choose
    NN-descent, NN-descent runs without the fine plan (``"plan_block_rows"`` in the report says
    which plan decided). Fine blocks needed 0.42-1.24x the coarse blocks' pairs per row on the
    real and synthetic sets measured, so the margin leaves NN-descent only where the fine plan
    would have picked it too, or at the boundary, where the two engines cost about the same."""
    n = len(vec)
    descent_from = max(DESCENT_PAIRS_PER_ROW, DESCENT_PAIRS_PER_LIST_SLOT * (k + 8) ** 2)
    may_descend = floor <= 1 and n >= DESCENT_MIN_ROWS
    if may_descend:
        plan = plan_recall(vec, k, metric, target, exclude_self=exclude_self, block_rows=SCREEN_BLOCK_ROWS)
        if plan.pair_share() * n < SCREEN_MARGIN * descent_from:
            plan = plan_recall(vec, k, metric, target, exclude_self=exclude_self, reuse=plan)
    else:
        plan = plan_recall(vec, k, metric, target, floor=floor, exclude_self=exclude_self)
    share = plan.pair_share()
    method = "exact" if share >= EXACT_PAIR_SHARE else "blocked"
    if may_descend and share * n >= descent_from:
        method = "descent"
    report = {"method": method, "nprobe": plan.nprobe, "recall_estimate": plan.recall_estimate, "pair_share": share,
              "plan_block_rows": round(n / max(len(plan.centroids), 1))}
    return report, plan


def graph(snap: Snapshot, k: int, metric: str, method: str, nprobe: int, exclude_self: bool, progress: bool,
          target: float | None, batch_size: int,
          index_candidates: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None
          ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(distances, ids, report)`` of the kNN graph of ``snap`` by ``method`` (already resolved
    from "auto" to "exact" / "blocked" / "descent" / "index"; ``target`` set with "blocked" = the
    auto route of :func:`knn_plan`). With ``exclude_self=False`` each row's list is the graph of
    the others with the row itself merged in at its own distance (:func:`with_self`)."""
    if not exclude_self:
        report = {"method": method, "pairs_scored": 0}

        def others(kk: int) -> tuple[np.ndarray, np.ndarray]:
            d, ids, rep = graph(snap, kk, metric, method, nprobe, True, progress, target, batch_size, index_candidates)
            report.update(rep)
            return d, ids
        return (*graph_with_self(snap.ids, snap.vec, k, len(snap.ids), metric, others), report)
    vec, report, rows = snap.vec, {"method": method}, None
    if method == "blocked" and target is not None:
        d, rows, report = _auto(vec, k, metric, nprobe, exclude_self, target, progress)
        method = report["method"]
    elif method == "blocked":
        d, rows, st = blocked_knn(vec, k, metric, nprobe=nprobe, exclude_self=exclude_self, progress=progress,
                                  return_stats=True)
        report.update(nprobe=nprobe, pairs_scored=st["pairs_scored"])
    elif method == "descent":
        d, rows, st = descent_knn(vec, k, metric, exclude_self=exclude_self, progress=progress, return_stats=True)
        report.update(st)
    elif method == "exact" and len(vec) >= EXACT_GRAPH_MIN_ROWS:
        d, rows, st = exact_knn_graph(vec, k, metric, exclude_self=exclude_self, progress=progress, return_stats=True)
        report["pairs_scored"] = st["pairs_scored"]
    if rows is not None:
        return d, np.where(rows >= 0, snap.ids[np.maximum(rows, 0)], -1), report
    d, ids = _chunked(snap, k, metric, exclude_self, progress, batch_size,
                      index_candidates if method == "index" else None)
    report["pairs_scored"] = report.get("pairs_scored", 0) + len(vec) * len(vec) if method == "exact" else None
    return d, ids, report


def _auto(vec: np.ndarray, k: int, metric: str, floor: int, exclude_self: bool, target: float,
          progress: bool) -> tuple[Any, Any, dict[str, Any]]:
    """Run the route :func:`knn_plan` picks. NN-descent whose measured recall falls short of
    ``target`` runs again from the lists it found, with lists 1.25x as long when it came within
    :data:`DESCENT_NEAR` of the target (12 -> 15 entries: 1M rows of the bench's 100-mode pool,
    0.92 -> 0.97 in 18 s, where twice as long took 40 s), else twice as long, up to three runs and
    lists twice the first's; a second run's rounds stop as soon as the plan's sampled rows clear the
    target by two standard errors (it starts from lists that already converged: its rounds are as
    dear as a first run's and it overshot - 0.947 -> 0.989 on a region batch of the distributed
    bench's pool; a first run keeps its own convergence test, its last rounds are cheap and buy
    recall); short then (data with no neighbourhood structure, such as isotropic
    noise or high-dimensional Gaussian modes), the blocked plan replaces it where its sampled
    recall met the target below :data:`EXACT_PAIR_SHARE` of all pairs (1M rows of 100 Gaussian
    modes in 128-d, k = 1: NN-descent 0.44, then the exact graph took 380 s, the plan's 1.7% of the
    pairs 120 s at 0.973), else the exact graph; the report says which (``descent_recall``)."""
    report, plan = knn_plan(vec, k, metric, floor, exclude_self, target)
    if report["method"] == "descent":
        n_neighbors, spent, rows, cap = None, 0, None, None
        for _ in range(3):
            again = rows is not None  # a second run stops once the target is reached (see above)
            d, rows, st = descent_knn(vec, k, metric, n_neighbors=n_neighbors, exclude_self=exclude_self,
                                      progress=progress, return_stats=True, init=rows,
                                      truth=plan.truth if again else None, target_recall=target if again else None)
            spent += st["pairs_scored"]
            recall = sampled_recall(vec, rows, k, metric, exclude_self, truth=plan.truth)
            report.update(st, pairs_scored=spent, recall_measured=recall)
            if recall >= target:
                return d, rows, report
            cap = cap or min(2 * st["n_neighbors"], len(vec) - 1)
            grow = 1.25 if recall >= target - DESCENT_NEAR else 2.0
            n_neighbors = min(int(np.ceil(grow * st["n_neighbors"])), cap)
            if n_neighbors <= st["n_neighbors"]:
                break
        cheap = plan.recall_estimate >= target and report["pair_share"] < EXACT_PAIR_SHARE
        report.update(method="blocked" if cheap else "exact", descent_recall=recall)
    if report["method"] == "blocked":
        d, rows, st = blocked_knn(vec, k, metric, nprobe=plan.nprobe, exclude_self=exclude_self, progress=progress,
                                  centroids=plan.centroids, assign=plan.assignments(vec, metric), return_stats=True)
        report["pairs_scored"] = report.get("pairs_scored", 0) + st["pairs_scored"]
        if "descent_recall" in report:
            report["recall_measured"] = sampled_recall(vec, rows, k, metric, exclude_self, truth=plan.truth)
        return d, rows, report
    if len(vec) < EXACT_GRAPH_MIN_ROWS:
        return None, None, report  # the caller's brute-force search in query chunks
    d, rows, st = exact_knn_graph(vec, k, metric, exclude_self=exclude_self, progress=progress, return_stats=True,
                                  centroids=plan.centroids, assign=plan.assignments(vec, metric))
    report["pairs_scored"] = report.get("pairs_scored", 0) + st["pairs_scored"]
    return d, rows, report


def graph_with_self(row_ids: np.ndarray, vec: np.ndarray, k: int, n: int, metric: str,
                    others: Callable[[int], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """``knn(exclude_self=False)`` of the rows ``row_ids`` (vectors ``vec``) among ``n`` rows in
    all: ``others(k')`` - the graph without self for ``k' = min(k, n - 1)`` - with each row merged
    in (:func:`with_self`).

    Example:
        >>> import numpy as np
        >>> graph_with_self(np.array([5]), np.ones((1, 2), np.float32), 3, 1, "l2", None)[1].tolist()
        [[5]]
    """
    kk = min(k, n - 1)
    d, ids = others(kk) if kk > 0 else (np.zeros((len(row_ids), 0), np.float32), np.zeros((len(row_ids), 0), np.int64))
    return with_self(row_ids, vec, d, ids, metric, k)


def with_self(row_ids: np.ndarray, vec: np.ndarray, d: np.ndarray, ids: np.ndarray, metric: str,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of each row's list of others ``(d, ids)`` and the row itself (``row_ids``,
    stored vectors ``vec``), at its own distance (0 under l2 and cosine) and first among equal
    distances: ``knn(exclude_self=False)``. Searching with the row among the candidates instead
    lets the expanded l2 product rank a near-duplicate (within float32 rounding of 0) ahead of the
    row and drop the row from its own list.

    Example:
        >>> import numpy as np
        >>> with_self(np.array([7]), np.ones((1, 2), np.float32), np.array([[0.0, 1.0]]), np.array([[8, 9]]), "l2", 2)[1].tolist()
        [[7, 8]]
    """
    own = np.zeros(len(row_ids), np.float32) if metric != "ip" else \
        -np.einsum("ij,ij->i", vec, vec).astype(np.float32)
    d = np.concatenate([own[:, None], d], 1)
    ids = np.concatenate([np.asarray(row_ids, np.int64)[:, None], ids], 1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), np.take_along_axis(ids, order, 1)


def _chunked(snap: Snapshot, k: int, metric: str, exclude_self: bool, progress: bool, batch_size: int,
             candidates: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]] | None
             ) -> tuple[np.ndarray, np.ndarray]:
    """The graph by query chunks: brute force over the snapshot, or the index's candidates."""
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
    """k-means of ``vec`` (:func:`curriculum.neighbors.kmeans.kmeans`: k-means++ seeding, Lloyd
    steps by torch products on up to :data:`KMEANS_POINTS_PER_CENTROID` rows a centroid, as faiss
    samples; spherical: on unit rows, assigned by cosine), the best of ``nredo`` seeds by the sum
    of squared distances; every row assigned by the metric ("ip": largest inner product).
    faiss's k-means ran its bundled BLAS at ~30 GFLOP/s here (1,000 clusters of 250k x 128 rows:
    see ``prototype_distance`` in the README)."""
    from ..neighbors import kmeans as KM

    met = "cosine" if spherical else metric
    if spherical and metric != "cosine":
        vec = get_metric("cosine").prepare(vec)
    best: tuple[float, np.ndarray] | None = None
    with progress_bar(total=nredo, desc=f"k-means k={n_clusters}", disable=not progress) as bar:
        for redo in range(nredo):
            cent = KM.kmeans(vec, n_clusters, spherical=spherical, seed=seed + redo, niter=niter,
                             points_per_centroid=KMEANS_POINTS_PER_CENTROID)
            objective = float(KM.assign(vec, cent)[1].sum()) if nredo > 1 else 0.0
            if best is None or objective < best[0]:
                best = (objective, cent)
            bar.update(1)
    cent = np.ascontiguousarray(best[1], np.float32)
    d, a = nearest_rows(vec, cent, met)
    return KMeansResult(cent, a[:, 0].astype(np.int64), d[:, 0])


__all__ = ['EXACT_GRAPH_MIN_ROWS', 'DEFAULT_NPROBE', 'EXACT_PAIR_SHARE', 'AUTO_PLAN_MIN_ROWS', 'DESCENT_MIN_ROWS',
           'SCREEN_BLOCK_ROWS', 'SCREEN_MARGIN', 'KMEANS_POINTS_PER_CENTROID', 'KMeansResult', 'knn_plan', 'graph',
           'kmeans']
