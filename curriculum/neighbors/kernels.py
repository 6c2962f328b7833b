"""Exact search kernels over plain float32 matrices: faiss brute force, a chunked torch top-k
with an optional label filter, and the small array helpers the search paths share. Distances
follow :mod:`curriculum.neighbors.metric` (smaller = nearer)."""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from .._util import checks as C
from .metric import get_metric


PARTITION_FROM_K = 20  # smallest_k partitions in numpy from this k (a running top-k below)
SCORE_BLOCK = 1 << 22  # exact_topk's score block (queries x rows of a chunk), ~16 MB: in cache
QUERY_GROUP = SCORE_BLOCK // 4096  # ... so it takes at most this many queries at a time
TORCH_MAX_K = 128  # brute_knn runs exact_topk up to this k (4,096 x 50k x 64: 0.55 s vs faiss's 1.1 s at
                   # k = 128, on par at 256)
NEAR_SHARE = 1e-3  # exact_near_l2 recomputes squared l2 distances below this share of the query's squared norm
NEAR_EXTRA = 8  # exact l2 searches select this many more rows by the expanded product, keep the k nearest
                # after exact_near_l2: within its rounding the product may rank the (k+1)-th first
BELOW_MAX_K = 64  # smallest_k bounds rows by a head up to this k (beyond, its insertion sort costs more)
HEAD_COLUMNS = 512  # ... the k-th smallest of at least this many leading columns (the head and the next:
                    # a sharded ring's blocks hold ~64 rows a shard, and one block's k-th of 64 bounds
                    # little); with a pass that never gives up, a labelled blocked table of 250k rows
                    # 17.4-17.8 -> 8.4-8.6 s, a ring visit 3.0 -> 1.8-2.0 s


def brute_knn(queries: np.ndarray, base: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``base`` for each query, as (distances, row indices).

    Rows are padded with ``inf`` / ``-1`` where ``base`` has fewer than ``k`` rows; of equal
    distances the smaller row first. Up to :data:`TORCH_MAX_K` neighbours by :func:`exact_topk`
    (torch products: 3-5x faiss's flat search where faiss's bundled OpenBLAS runs generic kernels,
    as on the project's machine - 4,096 queries against 100k x 128 rows, k = 10, 0.8 s instead of
    3.3 s - and 0.95-1.3x it on its right kernels; :mod:`curriculum._util.blas`), beyond through
    faiss's search (a running top-k of hundreds costs more than it saves); memory stays
    O(queries x k) whatever the base size.

    Example:
        >>> import numpy as np
        >>> d, i = brute_knn(np.array([[0.]], np.float32), np.array([[5.], [1.], [2.]], np.float32), 2, "l2")
        >>> i.tolist(), d.tolist()
        ([[1, 2]], [[1.0, 2.0]])
    """
    nq = queries.shape[0]
    kk = min(k, base.shape[0])
    dist = np.full((nq, k), np.inf, dtype=np.float32)
    rows = np.full((nq, k), -1, dtype=np.int64)
    if nq == 0 or kk == 0:
        return dist, rows
    if kk <= TORCH_MAX_K:
        dist[:, :kk], rows[:, :kk] = exact_topk(np.ascontiguousarray(queries, np.float32),
                                                np.ascontiguousarray(base, np.float32), kk, metric)
        return dist, rows
    m = get_metric(metric)
    wide = min(kk + NEAR_EXTRA, base.shape[0]) if m.squared_norms else kk
    d, i = faiss.knn(queries, base, wide, metric=m.faiss)
    d = m.to_distance(d).astype(np.float32)
    d[i < 0] = np.inf
    if m.squared_norms:
        d, i = exact_near_l2(d, i, queries, base)
    dist[:, :kk], rows[:, :kk] = d[:, :kk], i[:, :kk]
    return dist, rows


def nearest_rows(x: np.ndarray, centroids: np.ndarray, metric: str = "l2", k: int = 1,
                 chunk: int | None = None, distances: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(distances, indices)``, each ``(len(x), k)``, of each row's ``k`` nearest centroids,
    nearest first - the search that assigns rows to k-means centroids - by chunked torch products
    and a row minimum (``k = 1``) or a compiled running top-k (of equal scores the first centroid
    either way; :func:`~curriculum.neighbors._select_kernels.merge_smallest`). Here 2-6x
    faiss's search of the same (1M x 128 rows to 976 centroids, k = 1: 1.8-2.1 s vs 4.8 s; 250k
    rows to 2,000 centroids, k = 3: 0.75-0.9 s, 2.2-2.5 s with ``torch.topk``, vs 4.6-4.8 s),
    whose result it equals up to ties.
    ``chunk``: rows a product covers (default: a score block of :data:`SCORE_BLOCK` entries).
    ``distances=False``: the first array holds the rank scores instead (:meth:`Metric.score`: the
    same order within a row, without the row's own norm), all that an assignment needs.

    Example:
        >>> import numpy as np
        >>> d, i = nearest_rows(np.array([[0., 0], [9, 9]], np.float32), np.array([[10., 10], [1, 0]], np.float32))
        >>> i[:, 0].tolist(), [round(float(v), 3) for v in d[:, 0]]
        ([1, 0], [1.0, 1.414])
    """
    import torch

    from ._select_kernels import first_at, merge_smallest

    m = get_metric(metric)
    c = torch.from_numpy(np.ascontiguousarray(centroids, np.float32))
    if not 1 <= int(k) <= len(c):
        raise ValueError(f"k: expected 1 to the number of centroids ({len(c)}), got {k}")
    chunk = min(65536, max(256, SCORE_BLOCK // len(c))) if chunk is None else C.positive_int(chunk, "chunk")
    c_sq = (c * c).sum(1) if m.squared_norms else None
    score = np.empty((len(x), k), np.float32)
    idx = np.empty((len(x), k), np.int64)
    for s in range(0, len(x), chunk):
        sc = m.score(torch.from_numpy(np.ascontiguousarray(x[s:s + chunk], np.float32)), c, c_sq)
        if k == 1:  # amin then the first column holding it: 2-4x torch's min with indices here
            v = sc.amin(1)
            score[s:s + chunk, 0] = v.numpy()
            first_at(sc.numpy(), v.numpy(), idx[s:s + chunk, 0])
        else:  # a running top-k: 2.5-4.5x torch.topk here
            score[s:s + chunk], idx[s:s + chunk] = np.inf, -1
            merge_smallest(sc.numpy(), 0, score[s:s + chunk], idx[s:s + chunk])
    if not distances:
        return score, idx
    q_sq = np.einsum("ij,ij->i", x, x) if m.squared_norms else None
    return m.from_score(score, q_sq).astype(np.float32), idx


def first_k_valid(dist: np.ndarray, ids: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep, per row, the first ``k`` entries where ``valid`` holds (rows are sorted by distance).

    Example:
        >>> import numpy as np
        >>> d, i = first_k_valid(np.array([[1., 2, 3]]), np.array([[7, 8, 9]]), np.array([[False, True, True]]), 1)
        >>> i.tolist()
        [[8]]
    """
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
    """Sort each row by distance and drop repeated ids (keeping the nearest), padding with -1/inf.

    Example:
        >>> import numpy as np
        >>> sort_dedupe(np.array([[2., 1, 3]], np.float32), np.array([[5, 5, 6]]))[1].tolist()
        [[5, 6, -1]]
    """
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


def exact_topk(q: np.ndarray, x: np.ndarray, k: int, metric: str, q_labels: np.ndarray | None = None,
               x_labels: np.ndarray | None = None, chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest rows of ``x`` for each query, as ``(distances, rows)`` (``inf`` / ``-1``
    where fewer qualify; of equal distances the smaller row first), by chunked matrix products
    and a running top-k per query (:func:`~curriculum.neighbors._select_kernels.merge_smallest`:
    past the first chunks one comparison rejects almost every score); with labels, only rows of a
    label other than the query's. For few queries against a large ``x`` (a plan's sampled ground
    truth, label-filtered search of an exact store): at 2M x 128, 512 queries take ~1.9 s (1.6 s
    of it the products) where ``torch.topk`` of every chunk took 3.5 s. ``chunk`` (rows of ``x``
    a product covers) defaults to a score block of ~4M entries, 4,096-65,536 rows: the block then
    stays in cache (there, chunks of 32,768 rows: 4.3 s); more than :data:`QUERY_GROUP` queries
    run in groups of that many (memory stays ~16 MB a block whatever the queries). For l2 the
    product selects :data:`NEAR_EXTRA` more rows than ``k`` and the ``k`` nearest of them are kept
    after :func:`exact_near_l2`: a near pair the product's rounding ranked past the ``k``-th is not
    lost (more than ``k + NEAR_EXTRA`` rows within that rounding - ~3e-4 ``||q||`` - of each other
    are chosen among by the product).

    Example:
        >>> import numpy as np
        >>> x = np.array([[1.], [2.], [3.]], np.float32)
        >>> exact_topk(np.array([[0.]], np.float32), x, 1, "l2", q_labels=np.array([0]), x_labels=np.array([0, 1, 1]))[1].tolist()
        [[1]]
    """
    import torch

    if chunk is None and len(q) > QUERY_GROUP:
        parts = [exact_topk(q[s:s + QUERY_GROUP], x, k, metric,
                            None if q_labels is None else np.asarray(q_labels)[s:s + QUERY_GROUP], x_labels)
                 for s in range(0, len(q), QUERY_GROUP)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    from ._select_kernels import merge_smallest

    k_out = C.positive_int(k, "k")
    m = get_metric(metric)
    k = k_out + NEAR_EXTRA if m.squared_norms else k_out  # see NEAR_EXTRA
    qt = torch.from_numpy(np.ascontiguousarray(q, np.float32))
    q_lab = None if q_labels is None else torch.from_numpy(np.asarray(q_labels, np.int64))[:, None]
    best_v = np.full((len(q), k), np.inf, np.float32)
    best_i = np.full((len(q), k), -1, np.int64)
    chunk = min(65536, max(4096, SCORE_BLOCK // max(len(q), 1))) if chunk is None else C.positive_int(chunk, "chunk")
    for s in range(0, len(x), chunk):
        score = m.score(qt, torch.from_numpy(x[s:s + chunk]))
        if q_lab is not None:
            score.masked_fill_(torch.from_numpy(np.asarray(x_labels[s:s + chunk], np.int64))[None, :] == q_lab,
                               torch.inf)
        merge_smallest(score.numpy(), s, best_v, best_i)
    ok = best_i >= 0
    dist = m.from_score(best_v, (q * q).sum(1) if m.squared_norms else None).astype(np.float32)
    dist = np.where(ok, dist, np.inf).astype(np.float32)
    if m.squared_norms:
        dist, best_i = exact_near_l2(dist, best_i, q, x)
    return np.ascontiguousarray(dist[:, :k_out]), np.ascontiguousarray(best_i[:, :k_out])


def exact_near_l2(dist: np.ndarray, rows: np.ndarray, q: np.ndarray, x: np.ndarray,
                  q_sq: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """l2 distances ``dist`` (ascending per query, of rows ``rows`` of ``x``, ``-1`` none) taken
    from the expanded product ``||x||^2 - 2 q.x + ||q||^2``, with those of pairs closer than
    ``sqrt(NEAR_SHARE) ||q||`` (~0.03 ``||q||``) recomputed as ``||q - x||`` and their queries
    re-sorted (of equal distances the smaller row first). The expanded form rounds away
    ~``eps (||q||^2 + ||x||^2)``, which the square root turns into ~``3e-4 ||q||`` for a duplicate -
    0 here, as on the exact graph engine and the GPU path; beyond that radius its error stayed below
    2e-4 of the distance (the 11 nearest of 2,000 Fashion-MNIST CNN rows among 100k, 9% of them
    within it: mostly exact duplicates).
    ``q_sq``: the queries' squared norms, when known. Changes ``dist`` and ``rows`` in place and
    returns them.

    Example:
        >>> import numpy as np
        >>> x = np.array([[1000.5, -3.25], [7.0, 7.0]], np.float32)
        >>> exact_near_l2(np.array([[0.5, 1000.]], np.float32), np.array([[0, 1]]), x[:1].copy(), x)[0].tolist()
        [[0.0, 1000.0]]
    """
    q_sq = np.einsum("ij,ij->i", q, q) if q_sq is None else q_sq
    near = (dist * dist <= np.float32(NEAR_SHARE) * q_sq[:, None]) & (rows >= 0)
    if not near.any():
        return dist, rows
    a, b = np.nonzero(near)
    diff = q[a] - x[rows[a, b]]
    dist[a, b] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    fix = np.unique(a)
    order = np.lexsort((rows[fix], dist[fix]), axis=1)
    dist[fix] = np.take_along_axis(dist[fix], order, 1)
    rows[fix] = np.take_along_axis(rows[fix], order, 1)
    return dist, rows


def smallest_k(score: Any, k: int, head: int | None = None,
               under: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` smallest entries of each row of a 2-D torch tensor, ascending: ``(values,
    columns)`` as numpy. From k = 20 numpy's introselect partition and a sort of the k (1.5-2.5x
    faster than ``torch.topk`` on the 256 x 1-5k score blocks of the blocked engine at k = 20-100);
    below, one compiled running top-k pass per row
    (:func:`~curriculum.neighbors._select_kernels.smallest_k_running`; of equal entries the earlier
    column first): on those blocks at k = 11, 2x ``torch.topk`` at 1k columns, 4x at 4k.
    ``head``: the first ``head`` columns are likely to hold most of each row's ``k`` smallest (the
    blocked engine's own block): the ``k``-th smallest of the first ``max(head, k,``
    :data:`HEAD_COLUMNS` ``)`` bounds the row's, and one compiled pass
    keeps what falls under it (up to k = :data:`BELOW_MAX_K`). ``under`` (one score per row,
    ``inf`` = none): only entries <= it are wanted - a row's entries past it come back as ``inf``
    / ``-1`` (rows that already hold good neighbours keep few). Both through
    :func:`~curriculum.neighbors._select_kernels.smallest_k_under`.

    Example:
        >>> import torch
        >>> v, c = smallest_k(torch.tensor([[3., 1., 2.], [0., 5., 4.]]), 2)
        >>> v.tolist(), c.tolist()
        ([[1.0, 2.0], [0.0, 4.0]], [[1, 2], [0, 2]])
        >>> smallest_k(torch.tensor([[3., 1., 2.], [0., 5., 4.]]), 2, under=np.array([1.5, np.inf]))[1].tolist()
        [[1, -1], [0, 2]]
    """
    from ._select_kernels import smallest_k_running, smallest_k_under

    k = min(int(k), score.shape[1])
    sn = score.numpy()
    width = None if head is None else max(head, k, HEAD_COLUMNS)
    if under is None and width is not None and PARTITION_FROM_K <= k <= BELOW_MAX_K and sn.shape[1] > 2 * width:
        under = np.partition(sn[:, :width], k - 1, axis=1)[:, k - 1]  # >= k entries fall under it
    bounded = under is not None and np.isfinite(under).any()
    if bounded or k < PARTITION_FROM_K or k == sn.shape[1]:
        vals, cols = np.empty((len(sn), k), sn.dtype), np.empty((len(sn), k), np.int64)
        if bounded:
            smallest_k_under(sn, np.asarray(under, sn.dtype), k, vals, cols)
        else:
            smallest_k_running(sn, vals, cols)
        return vals, cols
    part = np.argpartition(sn, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(sn, part, 1)
    order = np.argsort(vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, 1), np.take_along_axis(part, order, 1)


__all__ = ['brute_knn', 'TORCH_MAX_K', 'NEAR_SHARE', 'NEAR_EXTRA', 'exact_near_l2', 'nearest_rows', 'first_k_valid', 'sort_dedupe', 'exact_topk', 'smallest_k',
           'PARTITION_FROM_K', 'HEAD_COLUMNS',
           'BELOW_MAX_K']
