"""Compiled union-find for :func:`curriculum.difficulty.near_duplicates`: the pairs above the
threshold are joined as each block of similarities is scanned, so memory stays one block and one
parent array per cluster, however many pairs there are (on real image features at 0.95 most of a
class can be one group: hundreds of millions of pairs)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _root(parent, i):
    r = i
    while parent[r] != r:
        r = parent[r]
    while parent[i] != r:  # path compression
        nxt = parent[i]
        parent[i] = r
        i = nxt
    return r


@njit(cache=True)
def join_above(sim, threshold, first, parent):
    """Join row ``first + r`` with row ``c`` of one cluster for every ``sim[r, c] > threshold``
    with ``c > first + r`` (``parent``: the cluster's union-find forest, in place). Returns the
    number of pairs above the threshold."""
    b, m = sim.shape
    pairs = 0
    for r in range(b):
        i = first + r
        for c in range(i + 1, m):
            if sim[r, c] > threshold:
                pairs += 1
                a, z = _root(parent, i), _root(parent, c)
                if a != z:
                    if a < z:
                        parent[z] = a
                    else:
                        parent[a] = z
    return pairs


@njit(cache=True)
def forest_edges(parent):
    """``(rows, roots)``: each row not its own root, with its component's root (local numbering)."""
    m = len(parent)
    rows = np.empty(m, np.int64)
    roots = np.empty(m, np.int64)
    e = 0
    for i in range(m):
        r = _root(parent, i)
        if r != i:
            rows[e], roots[e] = i, r
            e += 1
    return rows[:e], roots[:e]


__all__ = ["join_above", "forest_edges"]
