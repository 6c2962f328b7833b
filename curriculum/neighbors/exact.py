"""The exact all-points kNN graph, scoring every pair of rows at most once.

:func:`exact_knn_graph` runs in two phases over ~256-row k-means blocks (see
:func:`curriculum.knn.block_plan`):

1. **Warm start.** The blocked engine (:func:`curriculum.knn.blocked_knn`) scores every block
   against its ``nprobe`` nearest blocks. Each row's current k-th distance is then an upper bound
   on its true k-th distance.
2. **Symmetric refinement.** Every remaining *unordered* pair of blocks is scored once, with one
   matrix product: the tile serves the rows of both blocks (the graph is symmetric, so this is
   half the work of a query-by-query exact search). Instead of a top-k per tile, each entry is
   compared with the bound of its row and of its column, and only entries under a bound survive;
   survivors are merged into the running top-k in large vectorised batches, which tightens the
   bounds as the pass goes on. Under the l2 and cosine metrics a pair of blocks is skipped
   outright when the triangle inequality proves that no row of one can have a neighbour in the
   other (``||x - c_j|| - radius_j`` above the row's bound).

The answer is exact up to float32 rounding: a true neighbour is never above its row's bound (the
bounds carry a small slack for rounding), and the returned distances are recomputed directly
from the vectors. On clustered data the pruning skips most pairs; on isotropic data it skips
none and the cost is half the pairs of exact search at matrix-product speed.
"""

from __future__ import annotations

import threading
from typing import Any

import faiss
import numpy as np

from .._util.arrays import sorted_unique
from .blocked import block_plan, blocked_knn, probe_lists, run_blocks
from .metric import get_metric


def _sortable(s: np.ndarray) -> np.ndarray:
    """float32 -> uint64 whose unsigned order is the float order (inf last)."""
    b = np.ascontiguousarray(s, np.float32).view(np.uint32)
    return np.where(b >> 31, ~b, b | np.uint32(0x80000000)).astype(np.uint64)


class _TopK:
    """Running k best (score, row) per row, merged from batches of candidate pairs under a lock."""

    def __init__(self, score: np.ndarray, rows: np.ndarray, slack: float) -> None:
        self.s, self.i = score, rows
        self.k = score.shape[1]
        self.slack = slack
        self.lock = threading.Lock()
        self.bound = np.empty(len(score), np.float32)
        self._set_bound(np.arange(len(score)))

    def _set_bound(self, rows: np.ndarray) -> None:
        b = self.s[rows, -1]
        self.bound[rows] = np.where(np.isfinite(b), b + np.abs(b) * 1e-5 + self.slack, np.inf)

    def merge(self, r: np.ndarray, c: np.ndarray, s: np.ndarray) -> None:
        if r.size == 0:
            return
        with self.lock:
            u = sorted_unique(r)
            k = self.k
            rr = np.concatenate([r, np.repeat(u, k)])
            cc = np.concatenate([c, self.i[u].ravel()])
            ss = np.concatenate([s, self.s[u].ravel()])
            o = np.argsort((rr.astype(np.uint64) << np.uint64(32)) | _sortable(ss), kind="stable")
            rr, cc, ss = rr[o], cc[o], ss[o]
            start = np.searchsorted(rr, u)
            rank = np.arange(rr.size) - np.repeat(start, np.diff(np.append(start, rr.size)))
            keep = rank < k
            pos = np.searchsorted(u, rr[keep])
            new_s = np.full((u.size, k), np.inf, np.float32)
            new_i = np.full((u.size, k), -1, np.int64)
            new_s[pos, rank[keep]] = ss[keep]
            new_i[pos, rank[keep]] = cc[keep]
            new_i[~np.isfinite(new_s)] = -1
            self.s[u], self.i[u] = new_s, new_i
            self._set_bound(u)


def exact_knn_graph(x: np.ndarray, k: int, metric: str, exclude_self: bool = True, nprobe: int = 8,
                    n_clusters: int | None = None, seed: int = 0, progress: bool = False,
                    centroids: np.ndarray | None = None, assign: np.ndarray | None = None,
                    threads: int | None = None, chunk: int = 2048, flush: int = 1 << 20,
                    return_stats: bool = False) -> Any:
    """Exact ``k`` nearest rows of every row of ``x`` (the all-points kNN graph).

    ``metric`` follows :mod:`curriculum.neighbors.metric` (``cosine`` expects L2-normalised rows,
    as the store keeps them). ``nprobe`` sizes the warm start, ``chunk`` the columns per matrix
    product and ``flush`` the survivors a worker buffers before merging. ``centroids`` /
    ``assign`` may be passed from :func:`~curriculum.neighbors.blocked.block_plan`. Returns
    ``(distances, rows)`` like :func:`~curriculum.neighbors.blocked.blocked_knn`, with ``-1`` /
    ``inf`` padding when fewer than ``k`` neighbours exist; with ``return_stats`` a third item
    ``{"tiles", "pairs_scored", "survivors", "total_pairs", "blocks"}``.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(3000, 16)).astype("float32")
        >>> d, rows = exact_knn_graph(x, 5, "l2")
        >>> brute = np.sqrt(((x[:4, None] - x[None]) ** 2).sum(-1))
        >>> np.fill_diagonal(brute[:, :4], np.inf)
        >>> bool((np.sort(brute, 1)[:, :5] - d[:4] < 1e-4).all())
        True
    """
    n = len(x)
    if centroids is None:
        centroids, assign = block_plan(x, max(1, n // 256) if n_clusters is None else n_clusters, metric, seed)
    elif assign is None:
        assign = faiss.knn(x, centroids, 1, metric=get_metric(metric).assign_faiss)[1][:, 0]
    nb = len(centroids)
    nprobe = max(1, min(nprobe, nb))
    # two spare neighbours per row: the final exact re-ranking then settles float32 near-ties at
    # the k-th place that the matrix-product scores (||x||^2 + ||y||^2 - 2xy) cannot
    d1, r1 = blocked_knn(x, k + 2, metric, nprobe=nprobe, exclude_self=exclude_self, progress=progress,
                         centroids=centroids, assign=assign, threads=threads)
    stats = {"tiles": 0, "pairs_scored": 0, "survivors": 0}
    if nprobe < nb:
        ref = _Refinement(x, metric, centroids, assign, nprobe, d1, r1, chunk, flush)
        ref.run(k, progress, threads)
        d1, r1, stats = ref.result(k)
    else:  # every block probed: the warm start is the whole search
        d1, r1 = nearest_direct(x, r1, k, metric)
    stats.update(total_pairs=n * (n - 1) // 2, blocks=nb)
    return (d1, r1, stats) if return_stats else (d1, r1)


class _Refinement:
    """Phase 2 of :func:`exact_knn_graph`: the state of the pass (rows sorted by block, the
    running top-k with its bounds, the triangle-inequality radii) and the per-block-row work.
    Scores are squared euclidean (l2, and cosine on unit rows) or the negated inner product (ip)."""

    def __init__(self, x: np.ndarray, metric: str, centroids: np.ndarray, assign: np.ndarray, nprobe: int,
                 d1: np.ndarray, r1: np.ndarray, chunk: int, flush: int) -> None:
        import torch

        self.metric, self.chunk, self.flush_at = metric, chunk, flush
        n, nb = len(x), len(centroids)
        self.n, self.nb = n, nb
        self.order = np.argsort(assign, kind="stable")
        inv = np.empty(n, np.int64)
        inv[self.order] = np.arange(n)
        self.bounds = np.searchsorted(assign[self.order], np.arange(nb + 1))
        self.xs = np.ascontiguousarray(x[self.order])
        self.sqs = np.einsum("nd,nd->n", self.xs, self.xs)
        s1 = {"l2": lambda d: np.square(d), "cosine": lambda d: 2.0 * d}.get(metric, lambda d: d.copy())(d1[self.order])
        i1 = r1[self.order]
        i1 = np.where(i1 >= 0, inv[np.maximum(i1, 0)], -1)
        s1[i1 < 0] = np.inf
        slack = float(1e-5 * (self.sqs.mean() if n else 0.0) + 1e-12)
        self.top = _TopK(s1.astype(np.float32), i1, slack)
        self.scored = np.zeros((nb, nb), bool)
        self.scored[np.arange(nb)[:, None], probe_lists(centroids, nprobe, metric)] = True  # warm start's pairs
        self.prune = metric != "ip"
        if self.prune:
            self._prune_setup(centroids)
        self.block_max = np.full(nb, np.inf, np.float32)
        self.local = threading.local()
        self.xs_t, self.sqs_t = torch.from_numpy(self.xs), torch.from_numpy(self.sqs)
        self.stats = {"tiles": 0, "pairs_scored": 0, "survivors": 0}
        self.lock = threading.Lock()
        self.buffers: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = []

    def _prune_setup(self, centroids: np.ndarray) -> None:
        cen = np.ascontiguousarray(centroids, np.float32)
        if self.metric == "cosine":  # blocks were formed by spherical k-means: measure to unit centroids
            cen = cen / np.maximum(np.linalg.norm(cen, axis=1, keepdims=True), 1e-12)
        own = np.repeat(np.arange(self.nb), np.diff(self.bounds))
        self.radius = np.zeros(self.nb, np.float32)
        np.maximum.at(self.radius, own, np.sqrt(np.maximum(((self.xs - cen[own]) ** 2).sum(1), 0.0)))
        self.cen, self.csq = cen, (cen * cen).sum(1)
        self.cdist = np.sqrt(np.maximum(self.csq[:, None] + self.csq[None, :] - 2.0 * cen @ cen.T, 0.0))
        self.tol = float(1e-4 * (np.sqrt(self.sqs.max()) if self.n else 0.0) + 1e-6)

    def refresh_block_max(self) -> None:
        b = np.sqrt(np.maximum(self.top.bound, 0.0)) if self.metric != "ip" else self.top.bound
        filled = self.bounds[:-1] < self.bounds[1:]
        self.block_max[~filled] = -np.inf
        if filled.any():
            self.block_max[filled] = np.maximum.reduceat(b, self.bounds[:-1][filled])

    def run(self, k: int, progress: bool, threads: int | None) -> None:
        self.refresh_block_max()
        run_blocks(self.row_task, self.nb, self.n, f"exact kNN refine k={k}", progress, threads,
                   between=lambda t: self.refresh_block_max() if t % 64 == 63 else None)
        for bl in self.buffers:
            self._flush(bl)

    def _needed(self, i: int, s: int, e: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Blocks j > i still to score against block i: (js, rows of i need them, rows of j need i)."""
        js = np.arange(i + 1, self.nb)
        need_r = ~self.scored[i, js]
        need_c = ~self.scored[js, i]
        if self.prune:
            dr = np.sqrt(np.maximum(self.sqs[s:e, None] + self.csq[None, js] - 2.0 * self.xs[s:e] @ self.cen[js].T, 0.0))
            rb = np.sqrt(np.maximum(self.top.bound[s:e], 0.0))
            need_r &= ((dr - self.radius[js][None, :]) <= rb[:, None] + self.tol).any(0)
            need_c &= self.cdist[i, js] - self.radius[i] - self.radius[js] <= self.block_max[js] + self.tol
        keep = need_r | need_c
        return js[keep], need_r[keep], need_c[keep]

    def row_task(self, i: int) -> int:
        bounds = self.bounds
        s, e = int(bounds[i]), int(bounds[i + 1])
        if e == s or i == self.nb - 1:
            return e - s
        js, _, _ = self._needed(i, s, e)
        if js.size == 0:
            return e - s
        # a pair of blocks the warm start scored on one side only is scored for the other side alone
        # (no pair enters a row's list twice); the rest run as slices of consecutive blocks
        full = ~self.scored[i, js] & ~self.scored[js, i]
        buf = self._buffer()
        pairs = 0
        for j in js[~full]:
            self._tile(buf, s, e, int(bounds[j]), int(bounds[j + 1]), not self.scored[i, j], not self.scored[j, i])
            pairs += (e - s) * int(bounds[j + 1] - bounds[j])
        jf = js[full]
        if jf.size:
            starts, ends = bounds[jf], bounds[jf + 1]
            brk = np.flatnonzero(starts[1:] != ends[:-1]) + 1
            for rs, re_ in zip(starts[np.r_[0, brk]], ends[np.r_[brk - 1, jf.size - 1]]):
                for a in range(int(rs), int(re_), self.chunk):
                    b = min(int(re_), a + self.chunk)
                    self._tile(buf, s, e, a, b, True, True)
                    pairs += (e - s) * (b - a)
        if sum(len(t[0]) for t in buf) >= self.flush_at:
            self._flush(buf)
        with self.lock:
            self.stats["tiles"] += int(js.size)
            self.stats["pairs_scored"] += pairs
        return e - s

    def _tile(self, buf: list, s: int, e: int, a: int, b: int, row_side: bool, col_side: bool) -> None:
        """Score rows ``s:e`` against ``a:b`` once; keep entries under the row's / column's bound."""
        import torch

        m, w = e - s, b - a
        out, mask = self._scratch(m * w)
        sc = out[:m * w].view(m, w)
        xq = self.xs_t[s:e]
        if self.metric == "ip":
            torch.mm(xq, self.xs_t[a:b].T, out=sc).neg_()
        else:
            torch.addmm(self.sqs_t[a:b][None, :], xq, self.xs_t[a:b].T, beta=1.0, alpha=-2.0, out=sc)
            sc.add_(self.sqs_t[s:e, None])
        scn = sc.numpy()
        mk = mask[:m * w].view(m, w)
        if row_side:
            f = np.flatnonzero(torch.le(sc, torch.from_numpy(self.top.bound[s:e])[:, None], out=mk).numpy())
            if f.size:
                pa, pb = np.divmod(f, w)
                buf.append((pa + s, pb + a, scn[pa, pb]))
        if col_side:
            f = np.flatnonzero(torch.le(sc, torch.from_numpy(self.top.bound[a:b])[None, :], out=mk).numpy())
            if f.size:
                qa, qb = np.divmod(f, w)
                buf.append((qb + a, qa + s, scn[qa, qb]))

    def _buffer(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        bl = getattr(self.local, "survivors", None)
        if bl is None:
            bl = self.local.survivors = []
            with self.lock:
                self.buffers.append(bl)
        return bl

    def _scratch(self, size: int) -> tuple[Any, Any]:
        # per-thread score and mask buffers: fresh multi-MB tensors per tile would page-fault
        import torch

        t = getattr(self.local, "buf", None)
        if t is None or t[0].numel() < size:
            t = self.local.buf = (torch.empty(size), torch.empty(size, dtype=torch.bool))
        return t

    def _flush(self, buf: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        if not buf:
            return
        r = np.concatenate([b[0] for b in buf])
        c = np.concatenate([b[1] for b in buf])
        v = np.concatenate([b[2] for b in buf]).astype(np.float32)
        buf.clear()
        with self.lock:
            self.stats["survivors"] += int(r.size)
        self.top.merge(r, c, v)

    def result(self, k: int) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """The k nearest per row in the caller's row order, distances recomputed directly from the
        vectors (:func:`nearest_direct`)."""
        d, i = nearest_direct(self.xs, self.top.i, k, self.metric)
        out_d, out_i = np.empty_like(d), np.empty_like(i)
        out_d[self.order] = d
        out_i[self.order] = np.where(i >= 0, self.order[np.maximum(i, 0)], -1)
        return out_d, out_i, dict(self.stats)


def nearest_direct(x: np.ndarray, cand: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of each row's candidate rows ``cand`` (``-1``: none), as ``(distances,
    rows)``, by distances recomputed directly from the vectors (no ``||x||^2 + ||y||^2 - 2xy``
    cancellation: of candidates the matrix product ranked within its rounding of each other, the
    nearer comes first); of equal distances the earlier candidate first, ``inf`` / ``-1`` padding.

    Example:
        >>> x = np.array([[0.0], [3.0], [1.0]], np.float32)
        >>> nearest_direct(x, np.array([[1, 2], [0, 2], [1, 0]]), 1, "l2")[1].tolist()
        [[2], [2], [0]]
    """
    met = get_metric(metric)
    out_d = np.empty((len(x), k), np.float32)
    out_i = np.empty((len(x), k), np.int64)
    for a in range(0, len(x), 16384):
        b = min(len(x), a + 16384)
        rows = cand[a:b]
        dd = met.pair_distances(x[a:b], x[np.maximum(rows, 0)]).astype(np.float32)
        dd[rows < 0] = np.inf
        o = np.argsort(dd, axis=1, kind="stable")[:, :k]
        out_d[a:b] = np.take_along_axis(dd, o, 1)
        out_i[a:b] = np.take_along_axis(rows, o, 1)
    out_i[~np.isfinite(out_d)] = -1
    return out_d, out_i


__all__ = ['exact_knn_graph', 'nearest_direct']
