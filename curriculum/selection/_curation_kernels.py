"""numba kernel of curation: each leaf's 2-means halves, for ``curation.split_joined`` (compiled
once, cached on disk)."""

from __future__ import annotations

import numba
import numpy as np

TWO_MEANS_STEPS = 8  # Lloyd steps of a leaf's 2-means


@numba.njit(cache=True, inline="always")
def _sq(x: np.ndarray, row: int, c: np.ndarray) -> float:  # pragma: no cover
    s = 0.0
    for t in range(x.shape[1]):
        u = np.float64(x[row, t]) - c[t]
        s += u * u
    return s


@numba.njit(cache=True)
def _farthest(x: np.ndarray, rows: np.ndarray, c: np.ndarray) -> int:  # pragma: no cover
    """The row of ``rows`` farthest from ``c`` (the first of equals)."""
    far, best = rows[0], -1.0
    for r in rows:
        s = _sq(x, r, c)
        if s > best:
            far, best = r, s
    return far


@numba.njit(cache=True)
def _halves(x: np.ndarray, rows: np.ndarray, min_rows: int, a: np.ndarray,
            b: np.ndarray) -> float:  # pragma: no cover
    """2-means of ``x[rows]`` seeded by the row farthest from their mean and the row farthest from
    that one; the centres go to ``a`` / ``b``. Returns their distance over the halves' rms radius,
    or -1 once a half has fewer than ``min_rows`` rows."""
    m, d = len(rows), x.shape[1]
    mean = np.zeros(d)
    for r in rows:
        for t in range(d):
            mean[t] += x[r, t]
    mean /= m
    a[:] = x[_farthest(x, rows, mean)]
    b[:] = x[_farthest(x, rows, a)]
    side = np.zeros(m, np.bool_)
    for _ in range(TWO_MEANS_STEPS):
        n_b = 0
        for i in range(m):
            side[i] = _sq(x, rows[i], a) > _sq(x, rows[i], b)
            n_b += side[i]
        if min(n_b, m - n_b) < min_rows:
            return -1.0
        a[:] = 0.0
        b[:] = 0.0
        for i in range(m):
            c = b if side[i] else a
            for t in range(d):
                c[t] += x[rows[i], t]
        a /= m - n_b
        b /= n_b
    inner = 0.0
    for i in range(m):
        inner += _sq(x, rows[i], b) if side[i] else _sq(x, rows[i], a)
    return np.sqrt(np.sum((a - b) ** 2) / max(inner / m, 1e-300))


@numba.njit(cache=True)
def two_groups(x: np.ndarray, order: np.ndarray, starts: np.ndarray,
               min_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover
    """Per cluster ``c`` (rows ``order[starts[c]:starts[c + 1]]``): the ratio of :func:`_halves`
    (-1 where a half is too small or the cluster has fewer than ``2 min_rows`` rows) and the two
    centres."""
    k = len(starts) - 1
    ratio = np.full(k, -1.0)
    ca = np.zeros((k, x.shape[1]))
    cb = np.zeros((k, x.shape[1]))
    for c in range(k):
        rows = order[starts[c]:starts[c + 1]]
        if len(rows) >= 2 * min_rows:
            ratio[c] = _halves(x, rows, min_rows, ca[c], cb[c])
    return ratio, ca, cb
