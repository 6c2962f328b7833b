"""Each row's nearest neighbour, sought among the rows of its nearest curation leaves.

``curate(within="unique")`` needs how far every row of the pool stands from its nearest other
row. A kNN graph over the whole pool gives it exactly but costs minutes at 1M rows on two cores
where the data has no low-dimensional structure (1M x 128 Gaussian modes: 120 s for the store's
graph at recall 0.97). The leaves of the curation's own k-means are an inverted index already: a
row's nearest neighbour almost always lies in one of its nearest leaves. Each leaf offers at most
:data:`PROBE_ROWS` *candidates* (its rows of smallest :func:`~curriculum.store.sharded.id_priority`,
so any sharding offers the same ones), and each row is compared with the candidates of its
:func:`probe_count` nearest leaves (its own among them): about ``PROBE_ROWS`` rows per row, one
matrix product per leaf. On the Debian text set (121k x 384) the distances found this way order
and weight the leaves nearly as well as the store's kNN graph does (1.75-2.41x random's share of
the rarest sections against 2.03-2.60x, 3 hierarchy seeds; the README's curation section); where
the data has no structure (Gaussian modes in 128-d) the distance to the nearest candidate differs
little from the true nearest neighbour's (distances concentrate), which is all the weights need.

On a :class:`~curriculum.store.ShardedStore` every rank offers its own candidates; their
priorities are gathered, then the rows that are among a leaf's ``PROBE_ROWS`` over all ranks
(at most ``PROBE_ROWS`` x leaves rows - 786k at 2,048 leaves - on every rank, whatever N and
the world size), and each rank measures its own rows against them: no other row moves.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .._util.progress import progress_bar, want
from ..neighbors import nearest_rows
from ..store.sharded import id_priority

PROBE_ROWS = 384       # a row's nearest neighbour is sought among about this many rows of its nearest leaves
MAX_PROBES = 8         # ... in at most this many leaves (its own and the nearest others)
PROBE_SEED = 2_000_003  # a leaf of more rows offers those of smallest id_priority(ids, seed + PROBE_SEED)
QUERY_BLOCK = 1 << 22  # scores (queries x candidates) computed at once

CANDIDATE_BLOCK = 65_536  # candidates a fallback search compares at once
# (table, rows, ids, leaves): candidate j is table[rows[j]] (clustering space); sorted by leaf, then priority
Candidates = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def probe_count(n: int, k: int) -> int:
    """Leaves whose candidates a row is compared with, for ``n`` rows in ``k`` leaves: enough
    that about :data:`PROBE_ROWS` rows are seen, 1 to :data:`MAX_PROBES` (and at most ``k``).

    Example:
        >>> probe_count(121_527, 2_050), probe_count(1_000_000, 2_048), probe_count(25_000, 1_041)
        (6, 1, 8)
    """
    return int(np.clip(round(PROBE_ROWS * k / max(n, 1)), 1, min(MAX_PROBES, max(k, 1))))


def leaf_candidates(ids: np.ndarray, leaf: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Positions of the rows each of the ``k`` leaves offers as candidates: all of its rows, or
    the :data:`PROBE_ROWS` of smallest id priority; ordered by leaf, then priority.

    Example:
        >>> import numpy as np
        >>> leaf_candidates(np.arange(5), np.array([1, 0, 1, 0, 1]), 2, 0).tolist()
        [1, 3, 0, 4, 2]
    """
    return _first_per_leaf(id_priority(np.asarray(ids, np.int64), seed + PROBE_SEED), np.asarray(leaf, np.int64), k)


def _first_per_leaf(pri: np.ndarray, leaf: np.ndarray, k: int) -> np.ndarray:
    order = np.lexsort((pri, leaf))
    start = np.searchsorted(leaf[order], np.arange(k + 1))
    rank = np.arange(len(order)) - start[leaf[order]]
    return order[rank < PROBE_ROWS]


def pool_candidates(x: np.ndarray, ids: np.ndarray, leaf: np.ndarray, k: int, seed: int,
                    gather: Callable[[np.ndarray], list[np.ndarray]] | None = None) -> Candidates:
    """The candidates of every leaf (:func:`leaf_candidates`): ``(table, rows, ids, leaves)``,
    candidate ``j`` being ``table[rows[j]]`` - in one process ``x`` itself (no copy).
    ``gather(array)`` (a sharded pool: every rank's array, in rank order) collects the ranks'
    candidates: first their priorities, then only the rows among each leaf's
    :data:`PROBE_ROWS` smallest over all ranks (at most ``PROBE_ROWS x k`` rows on every rank),
    in the one-process order.

    Example:
        >>> import numpy as np
        >>> table, rows, cid, cleaf = pool_candidates(np.eye(3, dtype=np.float32), np.arange(3), np.array([0, 0, 1]), 2, 0)
        >>> sorted(cid.tolist()), cleaf.tolist(), table[rows].shape
        ([0, 1, 2], [0, 0, 1], (3, 3))
    """
    ids, leaf = np.asarray(ids, np.int64), np.asarray(leaf, np.int64)
    rows = leaf_candidates(ids, leaf, k, seed)
    if gather is None:
        return np.ascontiguousarray(x, np.float32), rows, ids[rows], leaf[rows]
    pri = id_priority(ids[rows], seed + PROBE_SEED)
    every_pri, every_leaf = np.concatenate(gather(pri)), np.concatenate(gather(leaf[rows]))
    kept = _first_per_leaf(every_pri, every_leaf, k)
    last = np.full(k, -1, np.int64)
    np.maximum.at(last, every_leaf[kept], every_pri[kept])
    rows = rows[pri <= last[leaf[rows]]]
    parts = [np.concatenate(gather(p)) for p in (np.ascontiguousarray(x[rows], np.float32), ids[rows], leaf[rows])]
    order = np.lexsort((id_priority(parts[1], seed + PROBE_SEED), parts[2]))
    return parts[0], order, parts[1][order], parts[2][order]


def probe_nearest(x: np.ndarray, ids: np.ndarray, leaf: np.ndarray, centroids: np.ndarray,
                  candidates: Candidates, probes: int, progress: bool | None = None) -> np.ndarray:
    """Each row's l2 distance to its nearest other candidate (by id) among the candidates
    (:func:`pool_candidates`) of its ``probes`` nearest leaves by centroid, its own leaf always
    among them (float32: the nearest chosen by matrix products, its distance then computed
    directly, row by row). A row that finds none there is compared with every candidate;
    ``inf`` when there is no other row. ``progress``: a bar over the leaves (default: on from
    50,000 rows).

    Example:
        >>> import numpy as np
        >>> x = np.array([[0.], [1.], [5.], [7.]], np.float32); leaf = np.array([0, 0, 1, 1])
        >>> cand = pool_candidates(x, np.arange(4), leaf, 2, 0)
        >>> probe_nearest(x, np.arange(4), leaf, np.array([[.5], [6.]], np.float32), cand, 1).tolist()
        [1.0, 1.0, 2.0, 2.0]
    """
    import torch

    x, ids, leaf = np.ascontiguousarray(x, np.float32), np.asarray(ids, np.int64), np.asarray(leaf, np.int64)
    table, crow, cid, cleaf = candidates
    k = len(centroids)
    probed = _probed_leaves(x, leaf, centroids, probes)
    best, arg = np.full(len(x), np.inf, np.float32), np.full(len(x), -1, np.int64)
    flat = probed.ravel()
    order = np.argsort(flat, kind="stable")
    q_start = np.searchsorted(flat[order], np.arange(k + 1))
    c_start = np.searchsorted(cleaf, np.arange(k + 1))
    xt, ct = torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(table, np.float32))
    leaves = np.flatnonzero((np.diff(q_start) > 0) & (np.diff(c_start) > 0))
    bar = progress_bar(total=len(leaves), desc="curation: nearest rows (leaves)", disable=not want(progress, len(x)))
    with bar:
        for lf in leaves:
            q = order[q_start[lf]:q_start[lf + 1]] // probed.shape[1]  # a row probes a leaf at most once
            _keep_better(best, arg, q, *_nearest_other(xt, ids, q, ct, crow, cid, c_start[lf], c_start[lf + 1]))
            bar.update(1)
    lost = np.flatnonzero(arg < 0)
    for lo in range(0, len(cid) if len(lost) else 0, CANDIDATE_BLOCK):  # in blocks: bounded memory
        hi = min(lo + CANDIDATE_BLOCK, len(cid))
        _keep_better(best, arg, lost, *_nearest_other(xt, ids, lost, ct, crow, cid, lo, hi))
    out = np.full(len(x), np.inf, np.float32)
    found = np.flatnonzero(arg >= 0)
    for s in range(0, len(found), 65_536):
        r = found[s:s + 65_536]
        diff = x[r] - table[crow[arg[r]]]
        out[r] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return out


def leaf_nearest(x: np.ndarray, ids: np.ndarray, leaf: np.ndarray, centroids: np.ndarray, seed: int = 0,
                 n: int | None = None, gather: Callable[[np.ndarray], list[np.ndarray]] | None = None,
                 progress: bool | None = None) -> np.ndarray:
    """Each row's distance to its nearest other row of the pool, as :func:`probe_nearest` finds it
    among the leaves' candidates (0 for a pool of one row). ``n``: the rows of the whole pool
    (on a sharded pool, all ranks'; decides :func:`probe_count`); ``gather``: as for
    :func:`pool_candidates`; ``progress`` as for :func:`probe_nearest`.

    Example:
        >>> import numpy as np
        >>> x = np.array([[0.], [1.], [5.], [7.]], np.float32)
        >>> leaf_nearest(x, np.arange(4), np.array([0, 0, 1, 1]), np.array([[.5], [6.]], np.float32)).tolist()
        [1.0, 1.0, 2.0, 2.0]
    """
    x, ids, leaf = np.ascontiguousarray(x, np.float32), np.asarray(ids, np.int64), np.asarray(leaf, np.int64)
    k = len(centroids)
    for name, a, what in (("ids", ids, "ids"), ("leaf", leaf, "leaves")):
        if a.shape != (len(x),):
            raise ValueError(f"{name}: expected {len(x)} {what} (one per row of x), got {len(a)}")
    if len(leaf) and (leaf.min() < 0 or leaf.max() >= k):
        raise ValueError(f"leaf: expected leaves in [0, {k}), got {leaf.min()} to {leaf.max()}")
    candidates = pool_candidates(x, ids, leaf, k, seed, gather)
    d = probe_nearest(x, ids, leaf, centroids, candidates, probe_count(len(x) if n is None else n, k),
                      progress)
    return np.where(np.isfinite(d), d, np.float32(0))


def _probed_leaves(x: np.ndarray, leaf: np.ndarray, centroids: np.ndarray, probes: int) -> np.ndarray:
    """``(rows, probes)`` leaves per row: the nearest centroids, the row's own leaf put last if not among them."""
    if probes <= 1:
        return leaf[:, None].copy()
    if not len(x):
        return np.zeros((0, probes), np.int64)
    probed = nearest_rows(x, centroids, "l2", k=probes, distances=False)[1]
    own = (probed == leaf[:, None]).any(1)
    probed[~own, -1] = leaf[~own]
    return probed


def _nearest_other(xt: Any, ids: np.ndarray, q: np.ndarray, ct: Any, crow: np.ndarray, cid: np.ndarray, lo: int,
                   hi: int) -> tuple[np.ndarray, np.ndarray]:
    """For the rows ``q``: the smallest score ``|c|^2 - 2 x.c`` over candidates ``lo:hi`` other
    than the row itself (by id; ``inf`` if none) and that candidate's index (first of ties)."""
    import torch

    c = ct[torch.from_numpy(crow[lo:hi])]
    c_sq = (c * c).sum(1)
    other = torch.from_numpy(cid[lo:hi])
    score, where = np.empty(len(q), np.float32), np.empty(len(q), np.int64)
    step = max(1, QUERY_BLOCK // max(hi - lo, 1))
    for s in range(0, len(q), step):
        rows = q[s:s + step]
        sc = torch.addmm(c_sq, xt[torch.from_numpy(rows)], c.T, alpha=-2.0)
        sc[torch.from_numpy(ids[rows])[:, None] == other[None, :]] = float("inf")
        v, a = sc.min(1)
        score[s:s + step], where[s:s + step] = v.numpy(), a.numpy() + lo
    return score, where


def _keep_better(best: np.ndarray, arg: np.ndarray, rows: np.ndarray, score: np.ndarray, where: np.ndarray) -> None:
    better = score < best[rows]
    best[rows[better]], arg[rows[better]] = score[better], where[better]


__all__ = ["PROBE_ROWS", "MAX_PROBES", "probe_count", "leaf_candidates", "pool_candidates", "probe_nearest",
           "leaf_nearest"]
