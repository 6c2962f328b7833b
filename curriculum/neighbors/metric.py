"""One :class:`Metric` object per distance: normalisation, ranking and the distance convention.

Distances throughout ``curriculum`` follow one convention - *smaller is nearer* - whatever the
metric, so that "mean distance to the k nearest" is a difficulty for every metric:

=========  ===========================================  ===============================
metric     distance returned                            rank score (torch kernels)
=========  ===========================================  ===============================
``l2``     Euclidean distance ``||q - x||``             ``||x||^2 - 2 q.x``
``cosine`` ``1 - cos(q, x)`` (vectors L2-normalised)     ``-q.x``
``ip``     ``-<q, x>`` (negated inner product)          ``-q.x``
=========  ===========================================  ===============================

The rank score orders the candidates of one query exactly as the distance does, at the cost of
one fused matrix product; :meth:`Metric.from_score` turns the kept scores into distances. A new
metric is one new :class:`Metric`, registered in :data:`METRICS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

# past this magnitude a squared distance or an inner product of float32 vectors overflows
MAX_ABS = 1e18


@dataclass(frozen=True)
class Metric:
    """A distance convention. Use :func:`get_metric` to obtain one by name.

    Example:
        >>> m = get_metric("cosine")
        >>> m.prepare(np.array([[10.0, 0.0], [3.0, 0.0]])).tolist()
        [[1.0, 0.0], [1.0, 0.0]]
        >>> float(m.pair_distances(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0]]))[0])
        0.0
    """

    name: str
    normalised: bool      # rows are stored L2-normalised (cosine)
    squared_norms: bool   # the rank score needs ||x||^2 (l2)

    @property
    def faiss(self) -> int:
        """The faiss metric constant searching vectors prepared for this metric."""
        return faiss.METRIC_L2 if self.name == "l2" else faiss.METRIC_INNER_PRODUCT

    @property
    def assign_faiss(self) -> int:
        """The faiss metric that assigns rows to k-means centroids (nearest by L2 unless ``ip``)."""
        return faiss.METRIC_INNER_PRODUCT if self.name == "ip" else faiss.METRIC_L2

    def prepare(self, x: np.ndarray, name: str = "vectors") -> np.ndarray:
        """Vectors as stored and searched: float32, L2-normalised under cosine. Magnitudes whose
        squares overflow float32 are an error under ``l2`` / ``ip``; cosine rescales first.
        Float32 rows that need no change (any under ``l2`` / ``ip``, unit rows under cosine) are
        returned as they are, not copied."""
        import torch

        x = np.ascontiguousarray(x, np.float32)
        if not x.size:
            return x
        if self.normalised:  # rows already of unit norm (a store's own vectors) pass as they are
            norms = torch.linalg.vector_norm(torch.from_numpy(x), dim=1)
            if bool(((norms - 1.0).abs() <= 1e-6).all()):
                return x
        big = torch.from_numpy(x).abs().amax(1).numpy()  # torch: several times numpy's speed here
        if not self.normalised:
            if (big >= MAX_ABS).any():
                raise ValueError(f"{name}: expected magnitudes below {MAX_ABS:.0e} under metric {self.name!r} "
                                 f"(their squares overflow float32), got {float(big.max()):.3g}")
            return x
        if (big == 0).any():
            bad = int((big == 0).sum())
            raise ValueError(f"{name}: expected non-zero vectors for the cosine metric, got {bad} zero row(s)")
        y = torch.from_numpy(x) / torch.from_numpy(big)[:, None]  # the norm of the rescaled row cannot overflow
        y /= torch.linalg.vector_norm(y, dim=1, keepdim=True)
        return np.ascontiguousarray(y.numpy(), np.float32)

    def to_distance(self, raw: np.ndarray) -> np.ndarray:
        """faiss's raw scores (squared L2 or inner products) as distances, in place."""
        if self.name == "l2":
            np.maximum(raw, 0.0, out=raw)
            np.sqrt(raw, out=raw)
        elif self.name == "cosine":
            np.subtract(1.0, raw, out=raw)
        else:
            np.negative(raw, out=raw)
        return raw

    def pair_distances(self, q: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Row-wise distance between ``q[i]`` and ``x[i]`` (or ``x[i, j]`` for a 3-D ``x``)."""
        if self.name == "l2":
            diff = x - (q[:, None, :] if x.ndim == 3 else q)
            return np.sqrt(np.maximum((diff ** 2).sum(-1), 0.0))
        ip = np.einsum("nd,nkd->nk", q, x) if x.ndim == 3 else (q * x).sum(-1)
        return 1.0 - ip if self.name == "cosine" else -ip

    def score(self, q: Any, x: Any, x_sq: Any = None) -> Any:
        """Torch rank scores (smaller = nearer) of every (query, row) pair: one fused product.
        ``x_sq`` (l2 only) are the rows' squared norms, computed when not given."""
        import torch

        if not self.squared_norms:
            return -(q @ x.T)
        if x_sq is None:
            x_sq = (x * x).sum(1)
        return torch.addmm(x_sq[None, :], q, x.T, beta=1.0, alpha=-2.0)

    def score_bound(self, d: np.ndarray, q_sq: np.ndarray | None = None) -> np.ndarray:
        """A :meth:`score` value that every pair within distance ``d`` scores at most (``q_sq``:
        the queries' squared norms under l2): :meth:`from_score` inverted, with a little slack for
        float32 rounding (``inf`` stays ``inf``)."""
        d = np.asarray(d, np.float64)
        if self.name == "l2":
            s = d * d - q_sq
            return s + 1e-4 * (d * d + q_sq) + 1e-6
        s = d - 1.0 if self.name == "cosine" else d
        return s + 1e-4 * np.maximum(np.abs(s), 1.0)

    def from_score(self, s: np.ndarray, q_sq: np.ndarray | None = None) -> np.ndarray:
        """Distances from :meth:`score` values; ``q_sq`` (l2) are the queries' squared norms."""
        if self.name == "l2":
            return np.sqrt(np.maximum(s + q_sq[:, None], 0.0))
        return 1.0 + s if self.name == "cosine" else s


METRICS: dict[str, Metric] = {
    "cosine": Metric("cosine", normalised=True, squared_norms=False),
    "l2": Metric("l2", normalised=False, squared_norms=True),
    "ip": Metric("ip", normalised=False, squared_norms=False),
}


def get_metric(metric: str | Metric, name: str = "metric") -> Metric:
    """The :class:`Metric` called ``metric`` (a Metric passes through); unknown names are an error.

    Example:
        >>> get_metric("cosine").name, get_metric("l2").squared_norms
        ('cosine', True)
    """
    if isinstance(metric, Metric):
        return metric
    if metric not in METRICS:
        raise ValueError(f"{name}: expected one of {list(METRICS)}, got {metric!r}")
    return METRICS[metric]


# -- the string-keyed spellings used by the kernels (each one line over the Metric) ------------
def faiss_metric(metric: str) -> int:
    """The faiss metric constant used to search vectors stored under ``metric``.

    Example:
        >>> import faiss
        >>> faiss_metric("cosine") == faiss.METRIC_INNER_PRODUCT
        True
    """
    return get_metric(metric).faiss


def to_distance(raw: np.ndarray, metric: str) -> np.ndarray:
    """Convert faiss's raw scores (squared L2 or inner products) to our distances, in place.

    Example:
        >>> import numpy as np
        >>> print(to_distance(np.array([[0.75]], np.float32), "cosine"))   # 1 - cos
        [[0.25]]
    """
    return get_metric(metric).to_distance(raw)


def normalize(x: np.ndarray, name: str = "vectors") -> np.ndarray:
    """L2-normalise the rows of ``x`` (a copy); zero rows are an error.

    Example:
        >>> import numpy as np
        >>> print(normalize(np.array([[3., 4.]])))
        [[0.6 0.8]]
    """
    y = METRICS["cosine"].prepare(x, name)
    return y.copy() if y is x else y  # rows already of unit norm come back as they are


def pair_distances(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    """Row-wise distance between ``q[i]`` and ``x[i]`` (or ``x[i, j]`` for a 3-D ``x``).

    Example:
        >>> import numpy as np
        >>> pair_distances(np.array([[0., 0]]), np.array([[3., 4]]), "l2").tolist()
        [5.0]
    """
    return get_metric(metric).pair_distances(q, x)


__all__ = ['MAX_ABS', 'Metric', 'METRICS', 'get_metric', 'faiss_metric', 'to_distance', 'normalize',
           'pair_distances']
