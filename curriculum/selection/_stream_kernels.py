"""numba kernels of the stream selector: the farthest-point choice and the exact re-check of candidates (compiled once, cached on disk)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def greedy_farthest(gram: np.ndarray, scores: np.ndarray, weight: np.ndarray, m: int,
                    cosine: bool) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
    """``m`` picks, each the row of largest ``weight * d`` (``d / weight`` for a negative ``d``:
    ``ip``), ``d`` its distance to the memory (``scores``) and to the picks so far; ``weight`` > 0.
    Distances between rows come from their Gram matrix (l2, or cosine on the normalised rows).
    Returns the picks and the priority each had when picked."""
    n = gram.shape[0]
    d = scores.copy()
    sq = np.empty(n)
    for i in range(n):
        sq[i] = np.float64(gram[i, i])
    picked = np.empty(m, np.int64)
    gain = np.empty(m)
    for t in range(m):
        j = -1
        best = -np.inf
        for i in range(n):
            p = d[i] if d[i] == np.inf else (weight[i] * d[i] if d[i] >= 0 else d[i] / weight[i])
            if d[i] > -np.inf and (j < 0 or p > best):
                j, best = i, p
        picked[t], gain[t] = j, best
        for i in range(n):
            g = np.float64(gram[i, j])
            if cosine:
                dij = 1.0 - g / max(np.sqrt(sq[i] * sq[j]), 1e-12)
            else:
                dij = np.sqrt(max(sq[i] + sq[j] - 2.0 * g, 0.0))
            if dij < d[i]:
                d[i] = dij
        d[j] = -np.inf
    return picked, gain


@numba.njit(cache=True, fastmath=True)
def nearest_of_candidates(buf: np.ndarray, q: np.ndarray, rows: np.ndarray, kind: int) -> np.ndarray:  # pragma: no cover
    """Distance of each query ``q[i]`` to the nearest of its candidate rows ``buf[rows[i, j]]``
    (``rows < 0``: no candidate; ``inf`` when none is left), computed exactly (float32 sums, as
    a numpy re-check would) straight from the ring, with no gathered copy (3-4x faster).
    ``kind``: 0 = l2, 1 = cosine (unit rows), 2 = ip."""
    n, c = rows.shape
    d = buf.shape[1]
    out = np.full(n, np.inf)
    for i in range(n):
        for j in range(c):
            r = rows[i, j]
            if r < 0:
                continue
            acc = np.float32(0.0)
            if kind == 0:
                for t in range(d):
                    diff = buf[r, t] - q[i, t]
                    acc += diff * diff
                dist = np.sqrt(np.float64(acc))
            else:
                for t in range(d):
                    acc += buf[r, t] * q[i, t]
                dist = 1.0 - np.float64(acc) if kind == 1 else -np.float64(acc)
            if dist < out[i]:
                out[i] = dist
    return out
