"""Compiled kernel of the other-label NN-descent (:mod:`curriculum.neighbors.negatives`; numba,
``parallel``, cached on disk). Conventions as in :mod:`._descent_kernels`: ``kind`` 0 ranks by
``-<a, b>``, 1 by the squared L2 distance; a row's list is sorted ascending, ``-1`` an empty slot.
Row ``i`` reads the lists of the previous round and writes only its own: the result does not
depend on the thread count or timing.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._descent_kernels import _dist


@njit(cache=True, inline="always")
def _insert(dist, idx, new, d, j):
    """Insert ``j`` at ``d`` into a sorted list unless it is no better than the worst or listed."""
    last = dist.shape[0] - 1
    if not d < dist[last]:
        return
    for c in range(last + 1):
        if idx[c] == j:
            return
    c = last
    while c > 0 and dist[c - 1] > d:
        dist[c], idx[c], new[c] = dist[c - 1], idx[c - 1], new[c - 1]
        c -= 1
    dist[c], idx[c], new[c] = d, j, True


@njit(cache=True, parallel=True, fastmath=True)
def refine(x, kind, labels, graph, dist, idx, new, spread, rev_ptr, rev_src, rev_dist, out_d, out_i, out_new):
    """One round: row ``i`` takes as candidates the rows that listed it (``rev_*``: a reverse
    list, their distances known), the lists' new entries of its graph neighbours, and the graph
    neighbours of its own new entries (``spread`` leading entries of a list take part); rows of
    its own label are skipped. Returns the number of entries that changed."""
    n, kt = idx.shape
    kg = graph.shape[1]
    changed = np.zeros(n, np.int64)
    for i in prange(n):
        bd, bi, bn = dist[i].copy(), idx[i].copy(), np.zeros(kt, np.bool_)
        own = labels[i]
        for e in range(rev_ptr[i], rev_ptr[i + 1]):
            _insert(bd, bi, bn, rev_dist[e], rev_src[e])
        for a in range(kg):
            v = graph[i, a]
            if v < 0:
                continue
            for b in range(spread):
                u = idx[v, b]
                if new[v, b] and u >= 0 and u != i and labels[u] != own:
                    _insert(bd, bi, bn, _dist(x, i, u, kind), u)
        for b in range(spread):
            u = idx[i, b]
            if not new[i, b] or u < 0:
                continue
            for a in range(kg):
                w = graph[u, a]
                if w >= 0 and w != i and labels[w] != own:
                    _insert(bd, bi, bn, _dist(x, i, w, kind), w)
        out_d[i], out_i[i], out_new[i] = bd, bi, bn
        changed[i] = bn.sum()
    return changed.sum()


__all__ = ["refine"]
