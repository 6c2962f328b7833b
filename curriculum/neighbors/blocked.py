"""The blocked all-points kNN engine: ~256-row k-means blocks, each scored against its
``nprobe`` nearest blocks with one matrix product and a torch top-k, on a thread pool of
single-threaded torch workers. Exact inside its probes (:mod:`curriculum.neighbors.plan`
predicts its recall); exact overall at ``nprobe >= n_blocks``."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import faiss
import numpy as np

from .._util.arrays import label_groups
from .kernels import exact_near_l2, first_k_valid, nearest_rows, smallest_k
from .metric import get_metric


def _assign_name(am: int) -> str:
    """The metric whose nearest centroid assigns a row (faiss's constant from ``Metric.assign_faiss``)."""
    return "ip" if am == faiss.METRIC_INNER_PRODUCT else "l2"


def _nearest_block(x: np.ndarray, centroids: np.ndarray, am: int) -> np.ndarray:
    """Each row's nearest centroid under the assignment metric ``am`` (``Metric.assign_faiss``)."""
    return nearest_rows(x, centroids, _assign_name(am), distances=False)[1][:, 0]


COARSE_PROBES = 4  # a two-level plan assigns a row among the blocks of its this many nearest coarse clusters
TWO_LEVEL_FROM = 1024  # a block plan of this many blocks or more is built (and rows assigned) in two levels
FIT_ROWS_PER_BLOCK = 64  # a partial two-level plan splits this many sampled rows a block over its coarse clusters


def _kmeans(x: np.ndarray, k: int, metric: str, seed: int, per_centroid: int) -> np.ndarray:
    if k <= 1 or len(x) <= 1:
        return x.mean(0, keepdims=True).astype(np.float32)
    km = faiss.Kmeans(x.shape[1], min(k, len(x)), niter=10, seed=seed, spherical=metric == "cosine",
                      max_points_per_centroid=per_centroid, min_points_per_centroid=1, verbose=False)
    km.train(np.ascontiguousarray(x, np.float32))
    return np.ascontiguousarray(km.centroids, np.float32)


def block_plan(x: np.ndarray, n_clusters: int, metric: str, seed: int = 0,
               two_level_from: int = TWO_LEVEL_FROM, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centroids of ~256-row blocks (faiss k-means on 32 points per centroid) and each row's block.

    From ``two_level_from`` blocks on, the plan is built in two levels - ~sqrt(n_clusters) coarse
    k-means clusters, then each split into blocks in proportion to its size - so that assigning
    the rows costs N x (sqrt + share) centroid distances instead of N x n_clusters (at 1M rows:
    ~0.03 instead of ~1 TFLOP); each row then goes to its nearest block among those of its 4
    nearest coarse clusters (the nearest of all blocks where those hold none). ``rows``: assign
    just these rows, the others get -1 (a recall plan needs a few thousand; assigning all takes
    0.15 s at 100k x 384, ~3 s at 1M x 128), and fit the two-level blocks on
    :data:`FIT_ROWS_PER_BLOCK` sampled rows a block; :func:`assign_blocks` with the coarse
    centroids of :func:`block_plan_parts` assigns every row later as here when the blocks are used.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(1024, 4)).astype(np.float32)
        >>> centroids, assign = block_plan(x, 4, "l2")
        >>> centroids.shape, assign.shape
        ((4, 4), (1024,))
    """
    centroids, assign, _ = block_plan_parts(x, n_clusters, metric, seed, two_level_from, rows)
    return centroids, assign


def block_plan_parts(x: np.ndarray, n_clusters: int, metric: str, seed: int = 0,
                     two_level_from: int = TWO_LEVEL_FROM, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`block_plan`, and the coarse centroids of a two-level plan (None at one level), which
    :func:`assign_blocks` needs to assign rows as the plan does.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(5000, 4)).astype(np.float32)
        >>> c, assign, coarse = block_plan_parts(x, 1024, "l2", rows=np.arange(10))
        >>> coarse.shape[0], int((assign >= 0).sum()), bool((assign_blocks(x[:10], c, "l2", coarse=coarse) == assign[:10]).all())
        (32, 10, True)
    """
    n, d = x.shape
    n_clusters = max(1, min(n_clusters, n))
    am = get_metric(metric).assign_faiss
    if n_clusters < two_level_from:
        centroids = _kmeans(x, n_clusters, metric, seed, 32)
        if rows is None:
            return centroids, _nearest_block(x, centroids, am), None
        assign = np.full(n, -1, np.int64)
        assign[rows] = _nearest_block(x[rows], centroids, am)
        return centroids, assign, None
    n_top = int(round(np.sqrt(n_clusters)))
    top = _kmeans(x, n_top, metric, seed, 64)
    # the blocks' k-means train on 32 rows a block: where only ``rows`` are assigned, a sample of
    # FIT_ROWS_PER_BLOCK rows a block is split over the coarse clusters, not all n rows
    fit = None if rows is None or n <= n_clusters * FIT_ROWS_PER_BLOCK else \
        np.sort(np.random.default_rng(seed).choice(n, n_clusters * FIT_ROWS_PER_BLOCK, replace=False))
    xs = x if fit is None else np.ascontiguousarray(x[fit])
    # with every row assigned, its COARSE_PROBES nearest coarse centroids split the rows and then reassign them
    near = nearest_rows(x, top, _assign_name(am), k=min(COARSE_PROBES, n_top), distances=False)[1] \
        if rows is None else None
    cents: list[np.ndarray] = []
    for t, members in enumerate(label_groups(_nearest_block(xs, top, am) if near is None else near[:, 0], len(top))):
        if members.size:
            sub = max(1, int(round(n_clusters * members.size / len(xs))))
            cents.append(_kmeans(np.ascontiguousarray(xs[members]), sub, metric, seed + 1 + t, 32))
    centroids = np.ascontiguousarray(np.concatenate(cents), np.float32)
    # a row near the edge of its coarse cluster may lie nearer a block of the next one: assign
    # every row to its nearest block among the blocks of its 4 nearest coarse clusters (an IVF
    # search over the block centroids) so blocks stay compact and probe lists find their neighbours
    if rows is None:
        return centroids, _nearest_via_coarse(x, centroids, top, am, near), top
    assign = np.full(n, -1, np.int64)
    assign[rows] = _nearest_via_coarse(np.ascontiguousarray(x[rows], np.float32), centroids, top, am)
    return centroids, assign, top


def _via_coarse(x: np.ndarray, centroids: np.ndarray, coarse: np.ndarray, am: int,
                near: np.ndarray | None = None, chunk: int = 65536) -> np.ndarray:
    """Each row's nearest block centroid among those filed under its 4 nearest coarse centroids
    (an IVF over the block centroids: each block filed under its nearest coarse centroid); -1
    where those hold none. ``near``: those coarse centroids, nearest first, if known. Scored a
    coarse list at a time, ``chunk`` rows per product, by torch products
    (:func:`~curriculum.neighbors.kernels.nearest_rows`): at 1M x 128 rows and 3,914 blocks
    ~3 s against 5.3-7.2 s for faiss's IVF search here, the same blocks but for float ties (6 of
    1M rows). Of equal distances the block of the earlier list, then the smaller block, wins."""
    name = _assign_name(am)
    if near is None:
        near = nearest_rows(x, coarse, name, k=min(COARSE_PROBES, len(coarse)), distances=False)[1]
    filed = label_groups(_nearest_block(centroids, coarse, am), len(coarse))
    best = np.full(len(x), np.inf, np.float32)
    found = np.full(len(x), -1, np.int64)
    for blocks, pos in zip(filed, label_groups(near.ravel(), len(coarse))):
        for s in range(0, len(pos) if len(blocks) else 0, chunk):
            rows = pos[s:s + chunk] // near.shape[1]
            d, i = nearest_rows(x[rows], centroids[blocks], name, distances=False)  # a row's scores compare
            nearer = d[:, 0] < best[rows]
            best[rows[nearer]], found[rows[nearer]] = d[nearer, 0], blocks[i[nearer, 0]]
    return found


def probe_lists(centroids: np.ndarray, nprobe: int, metric: str) -> np.ndarray:
    """The ``nprobe`` blocks nearest to each block, its own block always among them.

    Example:
        >>> import numpy as np
        >>> probe_lists(np.array([[0.], [1.], [10.]], np.float32), 2, "l2").tolist()
        [[0, 1], [1, 0], [2, 1]]
    """
    am = get_metric(metric).assign_faiss
    nb = len(centroids)
    nprobe = max(1, min(nprobe, nb))
    _, probe = faiss.knn(centroids, centroids, nprobe, metric=am)
    own = np.arange(nb)
    missing = ~(probe == own[:, None]).any(1)  # duplicate centroids (or ip) can push a block out
    probe[missing, -1] = own[missing]
    return probe


def probe_lists_other_label(centroids: np.ndarray, nprobe: int, metric: str, pure: np.ndarray,
                            chunk: int = 1024) -> np.ndarray:
    """Like :func:`probe_lists`, for label-filtered search: a block whose rows all carry one label
    (``pure[b]`` = that label, ``-1`` for a mixed block) skips every block holding only that same
    label - its own included - so its ``nprobe`` probes all reach rows of other labels.
    ``-1`` pads where fewer blocks qualify.

    Example:
        >>> import numpy as np
        >>> c = np.array([[0.], [1.], [10.]], np.float32)
        >>> probe_lists_other_label(c, 1, "l2", pure=np.array([0, 0, 1])).tolist()   # block 0 skips block 1 (same label)
        [[2], [2], [1]]
    """
    import torch

    nb = len(centroids)
    nprobe = max(1, min(nprobe, nb))
    c = torch.from_numpy(np.ascontiguousarray(centroids, np.float32))
    pure_t = torch.from_numpy(np.asarray(pure, np.int64))
    sq = (c * c).sum(1)
    out = np.full((nb, nprobe), -1, np.int64)
    for s in range(0, nb, chunk):
        e = min(nb, s + chunk)
        sim = -get_metric("ip" if metric == "ip" else "l2").score(c[s:e], c, sq)  # -||a - b||^2 + const
        blocked = (pure_t[s:e, None] >= 0) & (pure_t[None, :] == pure_t[s:e, None])
        sim.masked_fill_(blocked, -torch.inf)
        vals, idx = torch.topk(sim, nprobe, dim=1)
        out[s:e] = torch.where(torch.isfinite(vals), idx, -1).numpy()
    return out


def block_purity(labels: np.ndarray, assign: np.ndarray, n_blocks: int) -> np.ndarray:
    """Per block: its label when all its rows carry one, ``-1`` when mixed, ``-2`` when empty.

    Example:
        >>> import numpy as np
        >>> block_purity(np.array([3, 3, 1, 2]), np.array([0, 0, 1, 1]), 3).tolist()
        [3, -1, -2]
    """
    return purity_of_range(*block_label_range(labels, assign, n_blocks))


def block_label_range(labels: np.ndarray, assign: np.ndarray, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block: the smallest and largest label of its rows (an empty block: the int64 maximum and
    minimum, so that element-wise min / max over several sets of rows - e.g. shards, reduced by
    all-reduce - give the range of their union).

    Example:
        >>> import numpy as np
        >>> lo, hi = block_label_range(np.array([3, 3, 1, 2]), np.array([0, 0, 1, 1]), 2)
        >>> lo.tolist(), hi.tolist()
        ([3, 1], [3, 2])
    """
    assign = np.asarray(assign, np.int64)
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(n_blocks + 1))
    lab_sorted = np.asarray(labels, np.int64)[order]
    filled = bounds[1:] > bounds[:-1]
    info = np.iinfo(np.int64)
    lo, hi = np.full(n_blocks, info.max, np.int64), np.full(n_blocks, info.min, np.int64)
    if filled.any():  # an empty block has no width: each filled block's segment ends at the next start
        starts = bounds[:-1][filled]
        lo[filled], hi[filled] = np.minimum.reduceat(lab_sorted, starts), np.maximum.reduceat(lab_sorted, starts)
    return lo, hi


def purity_of_range(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """:func:`block_purity` from the blocks' label ranges (:func:`block_label_range`).

    Example:
        >>> import numpy as np
        >>> purity_of_range(np.array([3, 1, np.iinfo(np.int64).max]), np.array([3, 2, np.iinfo(np.int64).min])).tolist()
        [3, -1, -2]
    """
    return np.where(lo > hi, -2, np.where(lo == hi, lo, -1)).astype(np.int64)


def run_blocks(task: Callable[[int], int], n_tasks: int, total: int, desc: str, progress: bool,
               threads: int | None, between: Callable[[int], None] | None = None) -> None:
    """Run ``task(0..n_tasks-1)`` on a thread pool, one single-threaded torch task per worker: both
    cores stay busy without OpenMP barriers between many small matrix products (torch releases the
    GIL inside its kernels). ``task`` returns the rows it covered (for the progress bar);
    ``between(t)`` runs in the caller's thread after each finished task.

    Example:
        >>> done = []
        >>> run_blocks(lambda t: done.append(t) or 1, 4, 4, "demo", progress=False, threads=2)
        >>> sorted(done)
        [0, 1, 2, 3]
    """
    import torch

    from .._util.progress import progress_bar

    workers = max(1, min(threads or (os.cpu_count() or 1), n_tasks))
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with progress_bar(total=total, desc=desc, disable=not progress) as bar, ThreadPoolExecutor(workers) as pool:
            for t, done in enumerate(pool.map(task, range(n_tasks))):
                bar.update(done)
                if between is not None:
                    between(t)
    finally:
        torch.set_num_threads(prev)


def blocked_knn(x: np.ndarray, k: int, metric: str, nprobe: int = 16, n_clusters: int | None = None,
                seed: int = 0, exclude_self: bool = True, progress: bool = False,
                centroids: np.ndarray | None = None, threads: int | None = None,
                base: np.ndarray | None = None, assign: np.ndarray | None = None,
                labels: np.ndarray | None = None, return_stats: bool = False,
                query_assign: np.ndarray | None = None, base_labels: np.ndarray | None = None,
                pure: np.ndarray | None = None, bound: np.ndarray | None = None) -> Any:
    """k nearest rows of ``base`` (default: ``x`` itself, the all-points kNN graph) for every row
    of ``x``, computed in dense blocks at matrix-product speed.

    The base rows are clustered (faiss k-means, ``n_clusters`` defaults to ``N // 256`` so that
    blocks hold ~256 rows) and every query row is assigned to its nearest centroid; for each
    cluster, the distances between its queries and the base rows of the ``nprobe`` clusters whose
    centroids are nearest to it come from one matrix product, and a vectorised top-k keeps the
    ``k`` best. With ``nprobe >= n_clusters`` every pair is scored and the answer is exact.
    ``exclude_self`` (self-search only) drops each row from its own list. ``centroids`` and the
    base rows' ``assign``-ments may be passed in when already computed (see ``block_plan``).
    ``query_assign`` (with ``base``) gives the query rows' blocks when already known (rows that
    travel between processes keep the block a shared plan gave them).
    ``labels`` (one per row of ``x``; with ``base``, ``base_labels`` one per base row) keeps only
    neighbours of *another* label - each row's nearest other-label rows, the global hard
    negatives - and probes, for a block of one label, the ``nprobe`` nearest blocks that hold
    other labels (:func:`probe_lists_other_label`); ``pure``: the blocks' purity
    (:func:`block_purity`) over a larger pool the rows come from (e.g. every shard), else over
    the query and base rows. ``bound`` (one distance per row of ``x``, ``inf`` = none): neighbours
    farther than it are not wanted (e.g. the ``k``-th nearest already found elsewhere - a ring's
    running top-k): only candidates under it reach the top-k selection, and a row may come back
    with fewer than ``k`` (``inf`` / ``-1``).
    Returns ``(distances, rows of base)`` in the module's convention, and with ``return_stats`` a
    third item ``{"pairs_scored", "blocks"}`` (the cost, for benchmarks).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
        >>> from curriculum.neighbors import brute_knn
        >>> d, i = blocked_knn(x, 5, "l2", nprobe=8)          # 7 blocks: every pair scored, exact
        >>> bool((i == brute_knn(x, x, 6, "l2")[1][:, 1:]).mean() > 0.99)
        True
    """
    same = base is None
    b = x if same else base
    if labels is not None and not same and base_labels is None:
        raise ValueError("base_labels: label-filtered search of a base needs its rows' labels, got None")
    met = get_metric(metric)
    if centroids is None:
        centroids, assign = block_plan(b, n_clusters or max(1, len(b) // 256), metric, seed)
    n_blocks = len(centroids)
    nprobe = max(1, min(nprobe, n_blocks))
    if assign is None:
        assign = _nearest_block(b, centroids, met.assign_faiss)
    b_blocks = _Layout.of(assign, n_blocks)
    q_assign = query_assign if query_assign is not None else \
        (None if same else _nearest_block(x, centroids, met.assign_faiss))
    q_blocks = b_blocks if same else _Layout.of(q_assign, n_blocks)
    search = _BlockSearch(x, b, k, met, q_blocks, b_blocks, exclude_self and same)
    if bound is not None:
        bound = np.asarray(bound, np.float64)
        if bound.shape != (len(x),) or np.isnan(bound).any():
            raise ValueError(f"bound: expected one distance (or inf) per row of x ({len(x)}), got shape {bound.shape}"
                             f"{' with NaN' if bound.shape == (len(x),) else ''}")
        search.under = met.score_bound(bound, search.sq_q)
    if labels is not None:
        b_labels = labels if same else base_labels
        if pure is None:
            lo, hi = block_label_range(b_labels, assign, n_blocks)
            if not same:
                q_lo, q_hi = block_label_range(labels, q_assign, n_blocks)
                lo, hi = np.minimum(lo, q_lo), np.maximum(hi, q_hi)
            pure = purity_of_range(lo, hi)
        search.filter_labels(labels, b_labels, pure, centroids, nprobe, metric)
    else:
        search.probe = probe_lists(centroids, nprobe, metric)
    run_blocks(search.block, n_blocks, len(x), f"blocked kNN k={k} nprobe={nprobe}", progress, threads)
    out_d, out_i = search.result()
    if return_stats:
        return out_d, out_i, {"pairs_scored": int(search.scored.sum()), "blocks": n_blocks}
    return out_d, out_i


def assign_blocks(x: np.ndarray, centroids: np.ndarray, metric: str, two_level_from: int = TWO_LEVEL_FROM,
                  coarse: np.ndarray | None = None) -> np.ndarray:
    """Each row's nearest block among given block centroids (a plan made elsewhere, e.g. on
    another process). From ``two_level_from`` blocks on, through an IVF over the centroids (4
    coarse lists probed) as :func:`block_plan` assigns, not N x blocks distances; ``coarse``: the
    plan's coarse centroids (:func:`block_plan_parts`: the same assignment as the plan's), else
    ~sqrt k-means clusters of the centroids (on clustered data their lists can be very uneven).

    Example:
        >>> import numpy as np
        >>> assign_blocks(np.array([[0.], [9.]], np.float32), np.array([[10.], [1.]], np.float32), "l2").tolist()
        [1, 0]
    """
    am = get_metric(metric).assign_faiss
    x = np.ascontiguousarray(x, np.float32)
    centroids = np.ascontiguousarray(centroids, np.float32)
    if len(centroids) < two_level_from:
        return _nearest_block(x, centroids, am)
    top = coarse if coarse is not None else _kmeans(centroids, int(round(np.sqrt(len(centroids)))), metric, 0, 8)
    return _nearest_via_coarse(x, centroids, top, am)


def _nearest_via_coarse(x: np.ndarray, centroids: np.ndarray, coarse: np.ndarray, am: int,
                        near: np.ndarray | None = None) -> np.ndarray:
    """:func:`_via_coarse`, and the nearest of all blocks for the rows whose coarse lists hold none."""
    found = _via_coarse(x, centroids, coarse, am, near)
    missing = found < 0
    if missing.any():
        found[missing] = _nearest_block(x[missing], centroids, am)
    return found


class _Layout:
    """Rows grouped by block: block ``c`` holds ``order[bounds[c]:bounds[c + 1]]``."""

    def __init__(self, order: np.ndarray, bounds: np.ndarray) -> None:
        self.order, self.bounds = order, bounds

    @classmethod
    def of(cls, assign: np.ndarray, n_blocks: int) -> "_Layout":
        order = np.argsort(assign, kind="stable")
        return cls(order, np.searchsorted(assign[order], np.arange(n_blocks + 1)))

    def rows(self, c: int) -> np.ndarray:
        return self.order[self.bounds[c]:self.bounds[c + 1]]


class _BlockSearch:
    """One blocked pass: ``block(c)`` scores block ``c``'s queries against the rows of its probes
    with one matrix product and writes their ``k`` best into the result (each block owns its
    query rows, so blocks run on threads without locks)."""

    def __init__(self, x: np.ndarray, b: np.ndarray, k: int, met: Any, q_blocks: _Layout,
                 b_blocks: _Layout, exclude_self: bool) -> None:
        import torch

        self.x, self.b, self.k, self.met = x, b, k, met
        self.q_blocks, self.b_blocks, self.exclude_self = q_blocks, b_blocks, exclude_self
        self.kk = k + int(exclude_self)
        self.sq = torch.from_numpy(np.einsum("nd,nd->n", b, b)) if met.squared_norms else None
        same = x is b
        self.sq_q = (self.sq.numpy() if same else np.einsum("nd,nd->n", x, x)) if met.squared_norms else None
        self.probe = np.empty((0, 0), np.int64)
        self.labels = self.base_labels = self.pure = None
        self.under: np.ndarray | None = None  # per query row: the largest score wanted (bound)
        self.out_d = np.full((len(x), k), np.inf, np.float32)
        self.out_i = np.full((len(x), k), -1, np.int64)
        self.scored = np.zeros(len(b_blocks.bounds) - 1, np.int64)  # distance evaluations per block

    def filter_labels(self, labels: np.ndarray, base_labels: np.ndarray, pure: np.ndarray, centroids: np.ndarray,
                      nprobe: int, metric: str) -> None:
        """Keep only neighbours of another label; probe, for a one-label block (``pure``), the
        nearest blocks that hold other labels."""
        import torch

        self.pure = np.asarray(pure, np.int64)
        self.probe = probe_lists_other_label(centroids, nprobe, metric, self.pure)
        self.labels = torch.from_numpy(np.asarray(labels, np.int64))
        self.base_labels = torch.from_numpy(np.asarray(base_labels, np.int64))

    def _same_label(self, c: int, q_rows: np.ndarray, cand: np.ndarray) -> Any:
        # a block of one label whose probes hold only other labels needs no mask at all (on
        # label-clustered embeddings, most blocks): only mixed blocks compare labels pairwise
        if self.labels is None:
            return None
        probes = self.probe[c][self.probe[c] >= 0]
        if self.pure[c] >= 0 and not (self.pure[probes] == -1).any():
            return None
        import torch

        return self.labels[torch.from_numpy(q_rows)][:, None] == self.base_labels[torch.from_numpy(cand)][None, :]

    def block(self, c: int) -> int:
        import torch

        q_rows = self.q_blocks.rows(c)
        if q_rows.size == 0:
            return 0
        probed = [self.b_blocks.rows(p) for p in self.probe[c] if p >= 0]  # none: every block of one label
        cand = np.concatenate(probed) if probed else np.zeros(0, np.int64)
        if cand.size == 0:
            return int(q_rows.size)
        xq = torch.from_numpy(np.take(self.x, q_rows, axis=0))
        xc = torch.from_numpy(np.take(self.b, cand, axis=0))
        # rank by one fused product: ||x||^2 - 2 q.x for l2 (the query norm is constant per row)
        score = self.met.score(xq, xc, None if self.sq is None else self.sq[torch.from_numpy(cand)])
        same_label = self._same_label(c, q_rows, cand)
        if same_label is not None:
            score.masked_fill_(same_label, torch.inf)
        own = self.probe[c][0]  # the query block's own rows come first: they bound its k-th smallest
        head = self.b_blocks.rows(own).size if own >= 0 else None
        diagonal = self.exclude_self and own == c  # query i is candidate i: mask it, select k, not k + 1
        if diagonal:
            at = torch.arange(q_rows.size)
            score[at, at] = torch.inf
        vals, pos = smallest_k(score, min(self.k if diagonal else self.kk, cand.size), head=head,
                               under=None if self.under is None else self.under[q_rows])
        v = self.met.from_score(vals, None if self.sq_q is None else self.sq_q[q_rows]).astype(np.float32)
        if self.met.squared_norms:  # l2: a duplicate at 0, not at the expanded product's rounding
            v, pos = exact_near_l2(v, pos, xq.numpy(), xc.numpy(), self.sq_q[q_rows])
        ids = cand[pos]
        valid = np.isfinite(v)
        if diagonal:  # at most k columns, ascending: the invalid (inf) entries are already last
            self.out_d[q_rows, :v.shape[1]] = np.where(valid, v, np.inf)
            self.out_i[q_rows, :v.shape[1]] = np.where(valid, ids, -1)
        else:
            if self.exclude_self:
                valid &= ids != q_rows[:, None]
            self.out_d[q_rows], self.out_i[q_rows] = first_k_valid(v, ids, valid, self.k)
        self.scored[c] = q_rows.size * cand.size
        return int(q_rows.size)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self.out_i[~np.isfinite(self.out_d)] = -1
        return self.out_d, self.out_i


__all__ = ['TWO_LEVEL_FROM', 'FIT_ROWS_PER_BLOCK', 'block_plan', 'block_plan_parts', 'assign_blocks', 'probe_lists', 'probe_lists_other_label', 'block_purity', 'block_label_range', 'purity_of_range', 'run_blocks', 'blocked_knn']
