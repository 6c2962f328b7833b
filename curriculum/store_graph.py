"""The all-points kNN graph and k-means of the :class:`~curriculum.EmbeddingStore` (a mixin of it):
the choice between the exact engine (``knn_exact``), the blocked engine (``knn``) and the index,
with the recall of the blocked engine predicted before it runs (``plan_knn``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from . import _checks as C
from .knn import blocked_knn, brute_knn, exact_topk, first_k_valid, normalize, nprobe_for, probe_ranks
from .knn_exact import exact_knn_graph
from .progress import progress_bar

EXACT_GRAPH_MIN_ROWS = 50_000  # from here the exact graph runs in blocks (knn_exact), below via faiss flat (faster there)
DEFAULT_NPROBE = 16  # blocked all-points kNN: clusters probed per cluster (the recall knob)


@dataclass(frozen=True)
class KMeansResult:
    """Output of :meth:`EmbeddingStore.kmeans`: centroids, the cluster of every stored row (in
    ``store.ids`` order) and each row's distance to its centroid (store metric)."""

    centroids: np.ndarray
    assignments: np.ndarray
    distances: np.ndarray


class GraphMixin:
    """``knn``, ``plan_knn`` and ``kmeans``; relies on the store's buffers, lock and search."""

    _b: Any
    _lock: Any
    metric: str
    dim: int

    def knn(self, k: int, exclude_self: bool = True, batch_size: int = 8192, progress: bool = False,
            method: str = "auto", nprobe: int | None = None,
            target_recall: float | None = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """The all-points kNN graph: ``k`` nearest stored ids of every stored row.

        Row ``i`` of the result belongs to ``store.ids[i]``; returns ``(distances, ids)``, each
        ``(N, k)``. The last graph is cached until the store changes, so several scores share
        one computation.

        Methods: ``"exact"`` (below 50,000 rows faiss BLAS search in query chunks of
        ``batch_size``; from there :func:`curriculum.knn_exact.exact_knn_graph`, which scores each
        unordered pair of rows once and skips pairs of blocks the triangle inequality rules out),
        ``"index"``
        (through the approximate index, as ``search`` does), ``"blocked"`` (cluster the store and
        score each cluster against its ``nprobe`` nearest clusters with one matrix product - see
        :func:`curriculum.knn.blocked_knn`; ``nprobe`` is the recall knob, exact at
        ``nprobe >= n_clusters``). ``"auto"``: exact up to ``exact_threshold`` rows or with
        ``index="flat"``, blocked beyond (measured faster than the IVF/HNSW index at equal recall,
        ``benchmarks/store.py``). With ``method="auto"`` the recall the blocked graph would reach is
        measured on 512 sampled rows against exact search (for any nprobe, before running it): the
        smallest nprobe (>= ``nprobe`` when given) meeting ``target_recall`` is used, or exact search when that
        nprobe would score 40% of all pairs or more (hard, high-intrinsic-dimension data) - the
        choice follows measured recall and cost, not size alone. ``store.last_knn_report`` says
        what was chosen; :meth:`plan_knn` says it before running.
        """
        k = C.positive_int(k, "k")
        batch_size = C.positive_int(batch_size, "batch_size")
        method = C.choice(method, "method", ("auto", "exact", "index", "blocked"))
        n = len(self)
        if exclude_self and k > n - 1 or not exclude_self and k > n:
            raise ValueError(f"k: expected at most {n - 1 if exclude_self else n} (store size"
                             f"{' minus self' if exclude_self else ''}), got {k}")
        tune = method == "auto" and target_recall is not None
        if method == "auto":
            method = "exact" if (self.index_spec == "flat" or n <= self.exact_threshold) else "blocked"
        tune = tune and method == "blocked"
        floor = 1 if nprobe is None else C.positive_int(nprobe, "nprobe")  # auto: the smallest nprobe >= floor
        nprobe = DEFAULT_NPROBE if nprobe is None else floor
        key = (self._version, exclude_self, method, nprobe if method == "blocked" else None)
        with self._lock:
            cached = self._knn_cache
            if cached is not None and cached[0] == key and cached[1] >= k and cached[2] is self._index:
                return cached[3][:, :k].copy(), cached[4][:, :k].copy()
            vec, ids = self._b.vec[:n], self._b.ids[:n]
            rows = None
            if method == "blocked":
                d, rows = self._tuned_blocked(vec, k, floor if tune else nprobe, exclude_self, progress,
                                              target_recall if tune else None)
                if rows is None:
                    method = "exact"
            elif method == "exact" and n >= EXACT_GRAPH_MIN_ROWS:
                d, rows = exact_knn_graph(vec, k, self.metric, exclude_self=exclude_self, progress=progress)
            if rows is not None:
                out_d, out_i = d, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
            else:
                out_d = np.empty((n, k), np.float32)
                out_i = np.empty((n, k), np.int64)
                if method == "index":
                    self._ensure_index()
                    if self._index is None:
                        raise ValueError("method: 'index' needs an approximate index (this store searches exactly)")
                index, self._index = self._index, (self._index if method == "index" else None)
                try:
                    with progress_bar(total=n, desc=f"kNN graph k={k}", disable=not progress) as bar:
                        for s in range(0, n, batch_size):
                            e = min(n, s + batch_size)
                            d, i = self._candidates(vec[s:e], k + int(exclude_self))
                            valid = i >= 0
                            if exclude_self:
                                valid &= i != ids[s:e, None]
                            out_d[s:e], out_i[s:e] = first_k_valid(d, i, valid, k)
                            bar.update(e - s)
                finally:
                    self._index = index
            # the graph is reused by every score computed before the next mutation
            self._knn_cache = (key, k, self._index, out_d, out_i)
        return out_d.copy(), out_i.copy()

    def plan_knn(self, k: int, nprobe: int | None = None, target_recall: float = 0.95,
                 exclude_self: bool = True) -> dict[str, Any]:
        """What ``knn(k, method="auto")`` would run on a store past ``exact_threshold``, without
        running it: ``{"method", "nprobe", "recall_estimate", "pair_share"}`` (see :meth:`knn`).

        Example:
            >>> import numpy as np
            >>> from curriculum import EmbeddingStore
            >>> store = EmbeddingStore(8, metric="l2")
            >>> _ = store.add(np.random.default_rng(0).normal(size=(2000, 8)).astype("float32"))
            >>> sorted(store.plan_knn(5))
            ['method', 'nprobe', 'pair_share', 'recall_estimate']
        """
        k = C.positive_int(k, "k")
        nprobe = 1 if nprobe is None else C.positive_int(nprobe, "nprobe")
        if k > len(self) - int(exclude_self):
            raise ValueError(f"k: expected at most {len(self) - int(exclude_self)}, got {k}")
        with self._lock:
            return self._knn_plan(self._b.vec[: len(self)], k, nprobe, exclude_self, target_recall)[0]

    def _knn_plan(self, vec: np.ndarray, k: int, nprobe: int, exclude_self: bool,
                  target: float) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """Within its candidate blocks the blocked search is exact, so the recall at any nprobe is
        known without running it: it is the share of each sampled row's true neighbours that lie in
        the row's nprobe nearest blocks. The smallest nprobe (at least ``nprobe``) reaching the
        target is priced by the share of all pairs it scores."""
        from .knn import block_plan

        n = len(vec)
        sample = np.random.default_rng(0).choice(n, min(512, n), replace=False)
        ex = exact_topk(vec[sample], vec, k + int(exclude_self), self.metric)[1]
        exact = np.stack([r[r != q][:k] if exclude_self else r[:k] for r, q in zip(ex, sample)])
        centroids, assign = block_plan(vec, max(1, n // 256), self.metric)
        ranks = probe_ranks(centroids, assign, sample, exact, self.metric)
        p, recall = nprobe_for(ranks, target, nprobe, len(centroids))
        # a scored pair costs ~1.6x a GEMM pair in the blocked engine (its top-k), while the exact
        # engine scores each unordered pair once (0.5 of the ordered pairs, ~1.3x per pair with its
        # bound checks) and prunes more on clustered data: exact wins from ~40% of the pairs
        pair_share = min(1.0, p * 256 / n)
        report = {"method": "exact" if pair_share >= 0.4 else "blocked", "nprobe": p, "recall_estimate": recall,
                  "pair_share": pair_share}
        return report, centroids, assign

    def _tuned_blocked(self, vec: np.ndarray, k: int, nprobe: int, exclude_self: bool, progress: bool,
                       target: float | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Blocked graph whose nprobe is chosen for ``target`` recall (:meth:`_knn_plan`), the
        exact graph when that is predicted cheaper, or ``(_, None)`` to let small stores use faiss."""
        if target is None:
            return blocked_knn(vec, k, self.metric, nprobe=nprobe, exclude_self=exclude_self, progress=progress)
        report, centroids, assign = self._knn_plan(vec, k, nprobe, exclude_self, target)
        self.last_knn_report = report
        if report["method"] == "exact":
            if len(vec) < EXACT_GRAPH_MIN_ROWS:
                return np.empty(0), None
            return exact_knn_graph(vec, k, self.metric, exclude_self=exclude_self, progress=progress,
                                   centroids=centroids, assign=assign)
        return blocked_knn(vec, k, self.metric, nprobe=report["nprobe"], exclude_self=exclude_self,
                           progress=progress, centroids=centroids, assign=assign)

    def kmeans(self, n_clusters: int, seed: int = 0, niter: int = 20, nredo: int = 1,
               spherical: bool | None = None, progress: bool = False) -> KMeansResult:
        """faiss k-means over the stored vectors (spherical under the cosine metric).

        ``nredo`` runs k-means that many times from different seeds and keeps the best objective.
        ``spherical=True`` clusters the L2-normalised vectors and assigns by cosine (distances are
        then ``1 - cos``) whatever the store's metric; the default follows the metric.

        Example:
            >>> import numpy as np
            >>> from curriculum import EmbeddingStore
            >>> store = EmbeddingStore(2, metric="l2")
            >>> _ = store.add(np.array([[0, 0], [0, 1], [9, 9], [9, 8]], "float32"))
            >>> km = store.kmeans(2, seed=0)
            >>> bool(km.assignments[0] == km.assignments[1] != km.assignments[2])
            True
        """
        n_clusters = C.positive_int(n_clusters, "n_clusters")
        with self._lock:
            vec = self._b.vec[: self._b.n].copy()
        sph = self.metric == "cosine" if spherical is None else bool(spherical)
        metric = "cosine" if sph else self.metric
        if sph and self.metric != "cosine":
            vec = normalize(vec)
        if n_clusters > vec.shape[0]:
            raise ValueError(f"n_clusters: expected at most the store size {vec.shape[0]}, got {n_clusters}")
        km = faiss.Kmeans(self.dim, n_clusters, niter=C.positive_int(niter, "niter"), seed=int(seed),
                          nredo=C.positive_int(nredo, "nredo"),
                          spherical=sph, verbose=False, min_points_per_centroid=1)
        with progress_bar(total=1, desc=f"k-means k={n_clusters}", disable=not progress) as bar:
            km.train(vec)
            bar.update(1)
        cent = np.ascontiguousarray(km.centroids, np.float32)
        # assignment uses the same metric as the store ("ip" assigns by largest inner product)
        d, a = brute_knn(vec, cent, 1, metric)
        return KMeansResult(cent, a[:, 0].astype(np.int64), d[:, 0])
