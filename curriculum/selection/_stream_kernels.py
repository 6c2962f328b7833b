"""numba kernel of the stream selector's farthest-point choice (compiled once, cached on disk)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def greedy_farthest(gram: np.ndarray, scores: np.ndarray, m: int, cosine: bool) -> np.ndarray:  # pragma: no cover
    """``m`` picks, each the row farthest from the memory (``scores``) and from the picks so far;
    distances between rows from their Gram matrix (l2, or cosine on the normalised rows)."""
    n = gram.shape[0]
    d = scores.copy()
    sq = np.empty(n)
    for i in range(n):
        sq[i] = np.float64(gram[i, i])
    picked = np.empty(m, np.int64)
    for t in range(m):
        j = 0
        for i in range(1, n):
            if d[i] > d[j]:
                j = i
        picked[t] = j
        for i in range(n):
            g = np.float64(gram[i, j])
            if cosine:
                dij = 1.0 - g / max(np.sqrt(sq[i] * sq[j]), 1e-12)
            else:
                dij = np.sqrt(max(sq[i] + sq[j] - 2.0 * g, 0.0))
            if dij < d[i]:
                d[i] = dij
        d[j] = -np.inf
    return picked
