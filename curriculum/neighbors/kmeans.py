"""k-means for curation: a vectorised k-means++ seeding, Lloyd iterations written as
"assign, then reduce sums and counts" (the step a sharded run all-reduces), and the
resampling refinement of Vo et al. 2024.

Everything works on float32 rows already in the metric's space (unit rows for cosine; the
centroids are re-normalised then, i.e. spherical k-means). Assignment runs through chunked
torch products (:func:`~curriculum.neighbors.kernels.nearest_rows`), so memory stays O(rows x 1)
whatever the number of centroids.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import scipy.sparse as sp

from .._util import checks as C
from .kernels import nearest_rows
from .metric import normalize

SEED_ROUNDS = 16  # k-means++ draws its k seeds in this many batches (one GEMM each)
POINTS_PER_CENTROID = 128  # Lloyd iterations run on a sample of this many rows per centroid (faiss: 256)
LLOYD_TOL = 2e-4  # Lloyd's steps stop once at most this share of the rows changed cluster in a step


def kmeans_pp_init(x: np.ndarray, k: int, seed: int = 0, sample: int = 50_000,
                   rounds: int = SEED_ROUNDS) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007), batched: each of ``rounds`` rounds draws
    ``k / rounds`` new centres with probability proportional to the squared distance to the
    nearest centre so far, then updates those distances with one matrix product. Small, distant
    clusters (the tail) get centres instead of being swallowed by the head. Runs on a random
    sample of at most ``max(sample, 4 k)`` rows.

    Example:
        >>> import numpy as np
        >>> x = np.concatenate([np.zeros((500, 2)), np.full((5, 2), 100.0)]).astype(np.float32)
        >>> c = kmeans_pp_init(x, 2, rounds=2)
        >>> sorted(c[:, 0].tolist())  # the 5 far rows get a centre of their own
        [0.0, 100.0]
    """
    k = C.positive_int(k, "k")
    rounds = C.positive_int(rounds, "rounds")
    rng = np.random.default_rng(seed)
    if len(x) > max(sample, 4 * k):
        x = x[np.sort(rng.choice(len(x), max(sample, 4 * k), replace=False))]
    x = np.ascontiguousarray(x, np.float32)
    if k > len(x):
        raise ValueError(f"k: expected at most the number of rows ({len(x)}), got {k}")
    import torch

    xt = torch.from_numpy(x)
    sq = (xt * xt).sum(1)
    first = x[rng.integers(len(x))][None]
    d2 = _sq_dist_to(xt, sq, first).numpy().astype(np.float64)
    centres, got, step = [first], 1, max(1, -(-k // rounds))
    while got < k:
        b = min(step, k - got)
        nz = int(np.count_nonzero(d2))
        idx = rng.choice(len(x), b, replace=False, p=d2 / d2.sum()) if nz >= b else \
            rng.choice(len(x), b, replace=False)
        new = x[idx]
        d2 = np.minimum(d2, _sq_dist_to(xt, sq, new).numpy())
        centres.append(new)
        got += b
    return np.ascontiguousarray(np.concatenate(centres), np.float32)


def _sq_dist_to(xt: "torch.Tensor", sq: "torch.Tensor", centres: np.ndarray) -> "torch.Tensor":
    """Each row's squared l2 distance to the nearest of ``centres`` (one product; >= 0)."""
    import torch

    c = torch.from_numpy(np.ascontiguousarray(centres, np.float32))
    d = torch.addmm((c * c).sum(1), xt, c.T, alpha=-2).amin(1) + sq
    return d.clamp_(min=0)


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid (l2; rows and centroids already in the metric's space) of every row, and
    the distance to it.

    Example:
        >>> import numpy as np
        >>> assign(np.array([[0., 0], [9, 9]], np.float32), np.array([[10., 10], [1, 0]], np.float32))[0].tolist()
        [1, 0]
    """
    d, i = nearest_rows(x, centroids, "l2")
    return i[:, 0], d[:, 0]


def reduce_sums(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster row sums and counts: the reduction a sharded k-means all-reduces.

    Example:
        >>> import numpy as np
        >>> s, c = reduce_sums(np.array([[1., 1], [3, 3], [5, 5]], np.float32), np.array([0, 0, 1]), 2)
        >>> s.tolist(), c.tolist()
        ([[4.0, 4.0], [5.0, 5.0]], [2, 1])
    """
    onehot = sp.csr_matrix((np.ones(len(labels), np.float32), (labels, np.arange(len(labels)))), shape=(k, len(labels)))
    return np.asarray(onehot @ x, np.float64), np.bincount(labels, minlength=k)


def _update(sums: np.ndarray, counts: np.ndarray, old: np.ndarray, spherical: bool,
            rng: np.random.Generator) -> np.ndarray:
    """New centroids from sums and counts; an emptied centroid takes a perturbed copy of the
    largest cluster's centroid (as faiss does), so k clusters stay k. Spherical: a mean that is
    exactly zero (members that cancel out, e.g. antipodal rows) keeps its old direction."""
    cent = old.astype(np.float64).copy()
    full = counts > 0
    cent[full] = sums[full] / counts[full, None]
    for j in np.flatnonzero(~full):
        big = int(np.argmax(counts))
        cent[j] = cent[big] * (1 + 1e-3 * rng.standard_normal(cent.shape[1]))
        counts[big] //= 2
    cent = cent.astype(np.float32)
    if not spherical:
        return cent
    zero = ~np.abs(cent).any(1)
    cent[zero] = old[zero]
    return normalize(cent)


def kmeans(x: np.ndarray, k: int, spherical: bool = False, seed: int = 0, niter: int = 20,
           init: np.ndarray | None = None, points_per_centroid: int = POINTS_PER_CENTROID,
           reduce: Callable[[np.ndarray], np.ndarray] | None = None, tol: float = LLOYD_TOL) -> np.ndarray:
    """``k`` centroids of ``x`` by Lloyd's algorithm from a k-means++ seeding (or ``init``), run on a
    random sample of at most ``k * points_per_centroid`` rows (``0``: every row); ``spherical`` keeps
    them unit-norm. At most ``niter`` steps: they stop once a step moves at most a ``tol`` share of
    the rows to another cluster (``0``: only when nothing moves; fitting curation's 2,048 leaves,
    the last 5-8 of 20 steps moved fewer). ``reduce`` sums an array over the processes holding
    parts of the data (e.g. an all-reduce): each step assigns the local rows and reduces
    the per-cluster sums and counts (and the rows that moved), so every process ends with the same
    centroids (pass the same ``init`` everywhere).

    Example:
        >>> import numpy as np
        >>> x = np.concatenate([np.zeros((50, 2)), np.ones((50, 2))]).astype(np.float32)
        >>> sorted(kmeans(x, 2)[:, 0].round(3).tolist())
        [0.0, 1.0]
    """
    k = C.positive_int(k, "k")
    points_per_centroid = C.positive_int(points_per_centroid, "points_per_centroid", 0)
    tol = C.finite_float(tol, "tol", 0.0, 1.0)
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(x, np.float32)
    if points_per_centroid and len(x) > k * points_per_centroid:
        x = x[np.sort(rng.choice(len(x), k * points_per_centroid, replace=False))]
    cent = kmeans_pp_init(x, k, seed=seed) if init is None else np.ascontiguousarray(init, np.float32)
    labels = None
    for _ in range(niter):
        new_labels, _ = assign(x, cent)
        changed = len(x) if labels is None else int(np.count_nonzero(new_labels != labels))
        labels = new_labels
        sums, counts = reduce_sums(x, labels, k)
        both = np.concatenate([sums, counts[:, None].astype(np.float64)], 1)
        both = np.concatenate([both.ravel(), [changed, len(x)]])
        if reduce is not None:
            both = reduce(both)
        table, (changed, rows) = both[:-2].reshape(k, -1), both[-2:]
        new = _update(table[:, :-1], np.rint(table[:, -1]).astype(np.int64), cent, spherical, rng)
        moved = float(np.abs(new - cent).max())
        cent = new
        if moved < 1e-6 or changed <= tol * rows:
            break
    return cent


def resample_refine(x: np.ndarray, centroids: np.ndarray, iters: int, spherical: bool = False, seed: int = 0,
                    per_cluster: int | None = None) -> np.ndarray:
    """Vo et al.'s resampling steps: ``iters`` times, take the ``per_cluster`` rows closest to each
    centroid (default: half the mean cluster size, at least 2) and re-run seeded k-means on that
    sample, in which every cluster weighs the same. Centroids move off the dense head and onto
    the tail.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(400, 2)).astype(np.float32)
        >>> resample_refine(x, kmeans(x, 8), iters=2).shape
        (8, 2)
    """
    k = len(centroids)
    cent = centroids
    for it in range(iters):
        labels, d2 = assign(x, cent)
        sizes = np.bincount(labels, minlength=k)
        r = per_cluster or max(2, len(x) // (2 * k))
        order = np.lexsort((d2, labels))
        rank = np.arange(len(x)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        pick = order[rank < r]
        if len(pick) < k:
            break
        cent = kmeans(x[pick], k, spherical, seed=seed + 1 + it)
    return cent


__all__ = ["kmeans_pp_init", "kmeans", "assign", "reduce_sums", "resample_refine"]
