"""Low-level neighbour search helpers over plain float32 matrices (faiss underneath).

Distances throughout ``curriculum`` follow one convention - *smaller is nearer* - whatever the
metric, so that "mean distance to the k nearest" is a difficulty for every metric:

=========  ===========================================
metric     distance returned
=========  ===========================================
``l2``     Euclidean distance ``||q - x||``
``cosine`` ``1 - cos(q, x)`` (vectors are L2-normalised)
``ip``     ``-<q, x>`` (negated inner product)
=========  ===========================================
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import faiss
import numpy as np

METRICS = ("cosine", "l2", "ip")


def faiss_metric(metric: str) -> int:
    """The faiss metric constant used to search vectors stored under ``metric``."""
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def to_distance(raw: np.ndarray, metric: str) -> np.ndarray:
    """Convert faiss's raw scores (squared L2 or inner products) to our distances, in place."""
    if metric == "l2":
        np.maximum(raw, 0.0, out=raw)
        np.sqrt(raw, out=raw)
    elif metric == "cosine":
        np.subtract(1.0, raw, out=raw)
    else:
        np.negative(raw, out=raw)
    return raw


def normalize(x: np.ndarray, name: str = "vectors") -> np.ndarray:
    """L2-normalise the rows of ``x`` (a copy); zero rows are an error under the cosine metric."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if x.shape[0] and (norms == 0).any():
        bad = int((norms[:, 0] == 0).sum())
        raise ValueError(f"{name}: expected non-zero vectors for the cosine metric, got {bad} zero row(s)")
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def pair_distances(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    """Row-wise distance between ``q[i]`` and ``x[i]`` (or ``x[i, j]`` for a 3-D ``x``)."""
    if x.ndim == 3:
        if metric == "l2":
            return np.sqrt(np.maximum(((x - q[:, None, :]) ** 2).sum(-1), 0.0))
        ip = np.einsum("nd,nkd->nk", q, x)
    else:
        if metric == "l2":
            return np.sqrt(((x - q) ** 2).sum(-1))
        ip = (q * x).sum(-1)
    return 1.0 - ip if metric == "cosine" else -ip


def brute_knn(queries: np.ndarray, base: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``base`` for each query, as (distances, row indices).

    Rows are padded with ``inf`` / ``-1`` where ``base`` has fewer than ``k`` rows. Runs through
    faiss's blocked BLAS search, so memory stays O(queries x k) whatever the base size.
    """
    nq = queries.shape[0]
    kk = min(k, base.shape[0])
    dist = np.full((nq, k), np.inf, dtype=np.float32)
    rows = np.full((nq, k), -1, dtype=np.int64)
    if nq == 0 or kk == 0:
        return dist, rows
    d, i = faiss.knn(queries, base, kk, metric=faiss_metric(metric))
    dist[:, :kk] = to_distance(d, metric)
    rows[:, :kk] = i
    dist[rows < 0] = np.inf
    return dist, rows


def first_k_valid(dist: np.ndarray, ids: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep, per row, the first ``k`` entries where ``valid`` holds (rows are sorted by distance)."""
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    d = np.take_along_axis(dist, order, axis=1)
    i = np.take_along_axis(ids, order, axis=1)
    ok = np.take_along_axis(valid, order, axis=1)
    d = np.where(ok, d, np.inf).astype(np.float32)
    i = np.where(ok, i, -1)
    if d.shape[1] < k:
        pad = k - d.shape[1]
        d = np.pad(d, ((0, 0), (0, pad)), constant_values=np.inf)
        i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
    return d, i


def sort_dedupe(dist: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by distance and drop repeated ids (keeping the nearest), padding with -1/inf."""
    dist = np.where(ids < 0, np.inf, dist)
    # sort by (id, distance) to find repeats, then blank all but the first of each id
    o = np.lexsort((dist, ids), axis=1) if dist.size else np.zeros_like(ids)
    sid = np.take_along_axis(ids, o, axis=1)
    sd = np.take_along_axis(dist, o, axis=1)
    rep = np.zeros_like(sid, dtype=bool)
    rep[:, 1:] = (sid[:, 1:] == sid[:, :-1]) & (sid[:, 1:] >= 0)
    sd = np.where(rep, np.inf, sd)
    sid = np.where(rep, -1, sid)
    o2 = np.argsort(sd, axis=1, kind="stable")
    sd = np.take_along_axis(sd, o2, axis=1)
    sid = np.take_along_axis(sid, o2, axis=1)
    sid = np.where(np.isinf(sd), -1, sid)
    return sd, sid


def _kmeans(x: np.ndarray, k: int, metric: str, seed: int, per_centroid: int) -> np.ndarray:
    if k <= 1 or len(x) <= 1:
        return x.mean(0, keepdims=True).astype(np.float32)
    km = faiss.Kmeans(x.shape[1], min(k, len(x)), niter=10, seed=seed, spherical=metric == "cosine",
                      max_points_per_centroid=per_centroid, min_points_per_centroid=1, verbose=False)
    km.train(np.ascontiguousarray(x, np.float32))
    return np.ascontiguousarray(km.centroids, np.float32)


def block_plan(x: np.ndarray, n_clusters: int, metric: str, seed: int = 0,
               two_level_from: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Centroids of ~256-row blocks (faiss k-means on 32 points per centroid) and each row's block.

    From ``two_level_from`` blocks on, the plan is built in two levels - ~sqrt(n_clusters) coarse
    k-means clusters, then each split into blocks in proportion to its size - so that assigning
    the rows costs N x (sqrt + share) centroid distances instead of N x n_clusters (at 1M rows:
    ~0.03 instead of ~1 TFLOP); each row then goes to its nearest block among those of its 4
    nearest coarse clusters.
    """
    n, d = x.shape
    n_clusters = max(1, min(n_clusters, n))
    am = faiss.METRIC_L2 if metric != "ip" else faiss_metric(metric)
    if n_clusters < two_level_from:
        centroids = _kmeans(x, n_clusters, metric, seed, 32)
        return centroids, faiss.knn(x, centroids, 1, metric=am)[1][:, 0]
    n_top = int(round(np.sqrt(n_clusters)))
    top = _kmeans(x, n_top, metric, seed, 64)
    top_of = faiss.knn(x, top, 1, metric=am)[1][:, 0]
    order = np.argsort(top_of, kind="stable")
    cuts = np.searchsorted(top_of[order], np.arange(len(top) + 1))
    cents: list[np.ndarray] = []
    assign = np.empty(n, np.int64)
    offset = 0
    for t in range(len(top)):
        rows = order[cuts[t]:cuts[t + 1]]
        if rows.size == 0:
            continue
        sub = max(1, int(round(n_clusters * rows.size / n)))
        xt = np.ascontiguousarray(x[rows])
        c = _kmeans(xt, sub, metric, seed + 1 + t, 32)
        assign[rows] = offset + faiss.knn(xt, c, 1, metric=am)[1][:, 0]
        cents.append(c)
        offset += len(c)
    centroids = np.ascontiguousarray(np.concatenate(cents), np.float32)
    # a row near the edge of its coarse cluster may lie nearer a block of the next one: reassign
    # every row to its nearest block among the blocks of its 4 nearest coarse clusters (an IVF
    # search over the block centroids) so blocks stay compact and probe lists find their neighbours
    quant = faiss.IndexFlat(d, am)
    quant.add(top)
    ivf = faiss.IndexIVFFlat(quant, d, len(top), am)
    ivf.add(centroids)
    ivf.nprobe = min(4, len(top))
    found = ivf.search(np.ascontiguousarray(x, np.float32), 1)[1][:, 0]
    return centroids, np.where(found >= 0, found, assign)


def probe_lists(centroids: np.ndarray, nprobe: int, metric: str) -> np.ndarray:
    """The ``nprobe`` blocks nearest to each block, its own block always among them."""
    am = faiss.METRIC_L2 if metric != "ip" else faiss_metric(metric)
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
    ``-1`` pads where fewer blocks qualify."""
    import torch

    nb = len(centroids)
    nprobe = max(1, min(nprobe, nb))
    c = torch.from_numpy(np.ascontiguousarray(centroids, np.float32))
    pure_t = torch.from_numpy(np.asarray(pure, np.int64))
    sq = (c * c).sum(1)
    out = np.full((nb, nprobe), -1, np.int64)
    for s in range(0, nb, chunk):
        e = min(nb, s + chunk)
        sim = c[s:e] @ c.T
        if metric != "ip":
            sim = 2.0 * sim - sq[None, :]  # -||a - b||^2 up to a per-row constant
        blocked = (pure_t[s:e, None] >= 0) & (pure_t[None, :] == pure_t[s:e, None])
        sim.masked_fill_(blocked, -torch.inf)
        vals, idx = torch.topk(sim, nprobe, dim=1)
        out[s:e] = torch.where(torch.isfinite(vals), idx, -1).numpy()
    return out


def block_purity(labels: np.ndarray, assign: np.ndarray, n_blocks: int) -> np.ndarray:
    """Per block: its label when all its rows carry one, ``-1`` when mixed, ``-2`` when empty."""
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(n_blocks + 1))
    lab_sorted = np.asarray(labels, np.int64)[order]
    empty = bounds[1:] == bounds[:-1]
    starts = np.minimum(bounds[:-1], max(len(lab_sorted) - 1, 0))
    lo = np.minimum.reduceat(lab_sorted, starts) if len(lab_sorted) else np.zeros(n_blocks, np.int64)
    hi = np.maximum.reduceat(lab_sorted, starts) if len(lab_sorted) else np.zeros(n_blocks, np.int64)
    pure = np.where(lo == hi, lo, -1)
    pure[empty] = -2
    return pure


def exact_topk(q: np.ndarray, x: np.ndarray, k: int, metric: str, q_labels: np.ndarray | None = None,
               x_labels: np.ndarray | None = None, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest rows of ``x`` for each query, as ``(distances, rows)`` (``inf`` / ``-1``
    where fewer qualify), by chunked matrix products and a running top-k; with labels, only rows
    of a label other than the query's. For few queries against a large ``x`` (a plan's sampled
    ground truth, label-filtered search of an exact store): at 1M x 128, 512 queries take ~2 s
    where faiss's per-row heap takes ~5 s."""
    import torch

    qt = torch.from_numpy(np.ascontiguousarray(q, np.float32))
    q_lab = None if q_labels is None else torch.from_numpy(np.asarray(q_labels, np.int64))[:, None]
    best_v = torch.empty((len(q), 0))
    best_i = torch.empty((len(q), 0), dtype=torch.int64)
    for s in range(0, len(x), chunk):
        xc = torch.from_numpy(x[s:s + chunk])
        if metric == "l2":  # ||x||^2 - 2 q.x ranks as the distance does (||q||^2 is constant per row)
            score = torch.addmm((xc * xc).sum(1)[None, :], qt, xc.T, beta=1.0, alpha=-2.0)
        else:
            score = -(qt @ xc.T)
        if q_lab is not None:
            score.masked_fill_(torch.from_numpy(np.asarray(x_labels[s:s + chunk], np.int64))[None, :] == q_lab,
                               torch.inf)
        v, i = torch.topk(score, min(k, xc.shape[0]), dim=1, largest=False)
        best_v, best_i = torch.cat([best_v, v], 1), torch.cat([best_i, i + s], 1)
        if best_v.shape[1] > k:
            best_v, pos = torch.topk(best_v, k, dim=1, largest=False)
            best_i = torch.gather(best_i, 1, pos)
    o = torch.argsort(best_v, dim=1, stable=True)
    v = torch.gather(best_v, 1, o).numpy().astype(np.float32)
    rows = torch.gather(best_i, 1, o).numpy()
    ok = np.isfinite(v)
    if metric == "l2":
        v = np.sqrt(np.maximum(v + (q * q).sum(1)[:, None], 0.0))
    elif metric == "cosine":
        v = 1.0 + v
    dist = np.full((len(q), k), np.inf, np.float32)
    out = np.full((len(q), k), -1, np.int64)
    dist[:, :v.shape[1]] = np.where(ok, v, np.inf)
    out[:, :v.shape[1]] = np.where(ok, rows, -1)
    return dist, out


def probe_ranks(centroids: np.ndarray, assign: np.ndarray, sample: np.ndarray, neighbours: np.ndarray,
                metric: str, pure: np.ndarray | None = None) -> np.ndarray:
    """For each sampled row and each of its true neighbours (rows, ``-1`` = none): the neighbour's
    block's position in the probe order of the row's block (0 = probed first), as
    :func:`probe_lists` - or, with ``pure``, :func:`probe_lists_other_label` - orders them. The
    blocked search is exact inside its probes, so recall(nprobe) = share of ranks < nprobe."""
    import torch

    n_blocks = len(centroids)
    blocks, inv = np.unique(assign[sample], return_inverse=True)
    cu, ca = torch.from_numpy(centroids[blocks]), torch.from_numpy(centroids)
    if metric == "ip":
        dist = -(cu @ ca.T)
    else:
        dist = (cu * cu).sum(1)[:, None] + (ca * ca).sum(1)[None, :] - 2.0 * (cu @ ca.T)
    dist[torch.arange(len(blocks)), torch.from_numpy(blocks)] = -torch.inf  # its own block first
    if pure is not None:  # a block of one label never probes blocks holding only that label
        pt = torch.from_numpy(np.asarray(pure, np.int64))
        dist.masked_fill_((pt[blocks][:, None] >= 0) & (pt[None, :] == pt[blocks][:, None]), torch.inf)
    order = torch.argsort(dist, dim=1, stable=True).numpy()
    rank = np.empty_like(order)
    rank[np.arange(len(blocks))[:, None], order] = np.arange(n_blocks)[None, :]
    need = rank[inv[:, None], assign[np.maximum(neighbours, 0)]]
    return np.where(neighbours >= 0, need, -1)


def nprobe_for(ranks: np.ndarray, target: float, floor: int, n_blocks: int) -> tuple[int, float]:
    """The smallest nprobe (>= ``floor``) whose sampled recall clears ``target`` by two standard
    errors - a quantile of the ranks (``-1`` entries ignored) - and its estimated recall."""
    import math

    flat = np.sort(ranks[ranks >= 0].ravel())
    if not flat.size:
        return int(min(floor, n_blocks)), 1.0
    goal = min(1.0, target + 2.0 * math.sqrt(target * (1.0 - target) / flat.size))
    p = int(flat[max(int(math.ceil(goal * flat.size)) - 1, 0)]) + 1
    p = int(min(max(p, floor), n_blocks))
    return p, float((flat < p).mean())


def run_blocks(task: Callable[[int], int], n_tasks: int, total: int, desc: str, progress: bool,
               threads: int | None, between: Callable[[int], None] | None = None) -> None:
    """Run ``task(0..n_tasks-1)`` on a thread pool, one single-threaded torch task per worker: both
    cores stay busy without OpenMP barriers between many small matrix products (torch releases the
    GIL inside its kernels). ``task`` returns the rows it covered (for the progress bar);
    ``between(t)`` runs in the caller's thread after each finished task."""
    import torch

    from .progress import progress_bar

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
                labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows of ``base`` (default: ``x`` itself, the all-points kNN graph) for every row
    of ``x``, computed in dense blocks at matrix-product speed.

    The base rows are clustered (faiss k-means, ``n_clusters`` defaults to ``N // 256`` so that
    blocks hold ~256 rows) and every query row is assigned to its nearest centroid; for each
    cluster, the distances between its queries and the base rows of the ``nprobe`` clusters whose
    centroids are nearest to it come from one matrix product, and a vectorised top-k keeps the
    ``k`` best. With ``nprobe >= n_clusters`` every pair is scored and the answer is exact.
    ``exclude_self`` (self-search only) drops each row from its own list. ``centroids`` and the
    base rows' ``assign``-ments may be passed in when already computed (see ``block_plan``).
    ``labels`` (self-search only, one per row) keeps only neighbours of *another* label - each
    row's nearest other-label rows, the global hard negatives - and probes, for a block of one
    label, the ``nprobe`` nearest blocks that hold other labels (:func:`probe_lists_other_label`).
    Returns ``(distances, rows of base)`` in the module's convention.
    """
    import torch

    same = base is None
    b = x if same else base
    exclude_self = exclude_self and same
    n, d = x.shape
    kk = k + int(exclude_self)
    if n_clusters is None:
        n_clusters = max(1, len(b) // 256)
    fm = faiss_metric(metric)
    assign_metric = faiss.METRIC_L2 if metric != "ip" else fm
    if centroids is None:
        centroids, assign = block_plan(b, n_clusters, metric, seed)
    n_clusters = len(centroids)
    nprobe = max(1, min(nprobe, n_clusters))
    b_assign = faiss.knn(b, centroids, 1, metric=assign_metric)[1][:, 0] if assign is None else assign
    q_assign = b_assign if same else faiss.knn(x, centroids, 1, metric=assign_metric)[1][:, 0]
    b_order = np.argsort(b_assign, kind="stable")
    b_bounds = np.searchsorted(b_assign[b_order], np.arange(n_clusters + 1))
    q_order = b_order if same else np.argsort(q_assign, kind="stable")
    q_bounds = b_bounds if same else np.searchsorted(q_assign[q_order], np.arange(n_clusters + 1))
    if labels is not None:
        if not same:
            raise ValueError("labels: label-filtered blocked search is a self-search (base must be None)")
        labels = np.asarray(labels, np.int64)
        pure = block_purity(labels, b_assign, n_clusters)
        probe = probe_lists_other_label(centroids, nprobe, metric, pure)
        lab_t = torch.from_numpy(labels)
    else:
        probe = probe_lists(centroids, nprobe, metric)
    sq = np.einsum("nd,nd->n", b, b) if metric == "l2" else None
    sq_q = (sq if same else np.einsum("nd,nd->n", x, x)) if metric == "l2" else None
    out_d = np.full((n, k), np.inf, np.float32)
    out_i = np.full((n, k), -1, np.int64)
    scored = np.zeros(n_clusters, np.int64)  # distance evaluations per block (for cost reports)

    def block(c: int) -> int:
        q_rows = q_order[q_bounds[c]:q_bounds[c + 1]]
        if q_rows.size == 0:
            return 0
        cand = np.concatenate([b_order[b_bounds[p]:b_bounds[p + 1]] for p in probe[c] if p >= 0])
        if cand.size == 0:
            return int(q_rows.size)
        xq = torch.from_numpy(np.take(x, q_rows, axis=0))
        xc = torch.from_numpy(np.take(b, cand, axis=0))
        m = min(kk, cand.size)
        same_label = None
        # a block of one label whose probes hold only other labels needs no mask at all (on
        # label-clustered embeddings, most blocks): only mixed blocks compare labels pairwise
        if labels is not None and (pure[c] < 0 or (pure[probe[c][probe[c] >= 0]] == -1).any()):
            same_label = lab_t[torch.from_numpy(q_rows)][:, None] == lab_t[torch.from_numpy(cand)][None, :]
        # rank by one fused product: ||x||^2 - 2 q.x for l2 (the query norm is constant per row)
        if metric == "l2":
            score = torch.addmm(torch.from_numpy(sq[cand])[None, :], xq, xc.T, beta=1.0, alpha=-2.0)
            if same_label is not None:
                score.masked_fill_(same_label, torch.inf)
            vals, pos = torch.topk(score, m, dim=1, largest=False, sorted=True)
            v = np.sqrt(np.maximum(vals.numpy() + sq_q[q_rows][:, None], 0.0))
        else:
            score = xq @ xc.T
            if same_label is not None:
                score.masked_fill_(same_label, -torch.inf)
            vals, pos = torch.topk(score, m, dim=1, largest=True, sorted=True)
            v = (1.0 - vals).numpy() if metric == "cosine" else (-vals).numpy()
        ids = cand[pos.numpy()]
        valid = ids != q_rows[:, None] if exclude_self else np.ones(ids.shape, bool)
        valid &= np.isfinite(v)
        out_d[q_rows], out_i[q_rows] = first_k_valid(v.astype(np.float32), ids, valid, k)
        scored[c] = q_rows.size * cand.size
        return int(q_rows.size)

    run_blocks(block, n_clusters, n, f"blocked kNN k={k} nprobe={nprobe}", progress, threads)
    out_i[~np.isfinite(out_d)] = -1
    blocked_knn.last_stats = {"pairs_scored": int(scored.sum()), "blocks": n_clusters}  # type: ignore[attr-defined]
    return out_d, out_i
