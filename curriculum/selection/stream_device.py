"""The stream selector's memory on a torch device: where the embeddings already live on a GPU,
the sliding window of emitted embeddings stays there and is searched exactly by matrix products.

On a GPU an exact search is the fast one: a window of 1,024 queries against a 1M x 128 memory is
0.27 TFLOP, milliseconds, with no lists to train or evict. On the CPU (where the code is tested)
the same class works on small memories; large CPU memories belong to
:class:`~curriculum.selection.stream.SlidingWindowStore` (faiss, IVF past 8,192 rows).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._util import checks as C
from ..neighbors import METRICS, get_metric

CHUNK_CELLS = 1 << 26  # query x memory scores held at once (256 MB of float32)


def as_device(device: Any) -> Any:
    """``device`` as a ``torch.device``; anything else is an error naming the argument.

    Example:
        >>> as_device("cpu").type
        'cpu'
    """
    import torch

    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: expected a torch device such as 'cuda' or 'cpu', got {device!r}") from exc


class TorchWindowStore:
    """A ring of the ``capacity`` most recent embeddings as one tensor on ``device``, with the
    exact nearest-neighbour distance of queries to it (the interface of
    :class:`~curriculum.selection.stream.SlidingWindowStore`).

    Example:
        >>> w = TorchWindowStore(2, 2, metric="l2", device="cpu")
        >>> w.add(np.array([[0.0, 0.0], [5.0, 0.0], [9.0, 0.0]]))   # the first falls out
        >>> len(w), w.nearest_distance(np.array([[1.0, 0.0]])).tolist()
        (2, [4.0])
    """

    approximate = False

    def __init__(self, capacity: int, dim: int, metric: str = "l2", device: Any = "cuda") -> None:
        import torch

        self.capacity, self.dim = C.positive_int(capacity, "capacity"), C.positive_int(dim, "dim")
        self.metric = C.choice(metric, "metric", tuple(METRICS))
        self._metric = get_metric(metric)
        self.device = as_device(device)
        self.buf = torch.zeros((self.capacity, self.dim), dtype=torch.float32, device=self.device)
        self.sq = torch.zeros(self.capacity, dtype=torch.float32, device=self.device)  # squared norms (l2)
        self.count = 0
        self.ptr = 0

    def __len__(self) -> int:
        return self.count

    def _prepare(self, x: Any, name: str) -> Any:
        """Rows as a float32 tensor on the device, checked and (cosine) normalised there."""
        import torch

        t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(C.as_vectors(x, name, self.dim))
        if t.ndim == 1 and t.shape[0] == self.dim:
            t = t[None]
        if t.ndim != 2 or t.shape[1] != self.dim:
            raise ValueError(f"{name}: expected shape (n, {self.dim}), got {tuple(t.shape)}")
        t = t.to(self.device, torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: expected finite values, got NaN or inf")
        if self._metric.normalised:
            norm = t.norm(dim=1, keepdim=True)
            if bool((norm == 0).any()):
                raise ValueError(f"{name}: expected non-zero vectors for the cosine metric, got "
                                 f"{int((norm == 0).sum())} zero row(s)")
            t = t / norm
        return t.contiguous()

    def add(self, x: Any) -> None:
        """Append embeddings (array or tensor, any device); the oldest fall out first."""
        import torch

        t = self._prepare(x, "x")[-self.capacity:]
        n = len(t)
        idx = (self.ptr + torch.arange(n, device=self.device)) % self.capacity
        self.buf[idx] = t
        self.sq[idx] = (t * t).sum(1)
        self.ptr = (self.ptr + n) % self.capacity
        self.count = min(self.capacity, self.count + n)

    def nearest_distance(self, q: Any) -> np.ndarray:
        """Distance of each query to its nearest stored embedding (``inf`` while empty), as float64
        numpy: the nearest row found by chunked matrix products, its distance then re-computed
        from the two vectors (the product form loses the small distances of near-repeats)."""
        import torch

        if self.count == 0:
            return np.full(len(q), np.inf)
        qt = self._prepare(q, "q")
        best = torch.full((len(qt),), float("inf"), device=self.device)
        arg = torch.zeros(len(qt), dtype=torch.long, device=self.device)
        step = max(1024, CHUNK_CELLS // max(len(qt), 1))
        with torch.no_grad():
            for s in range(0, self.count, step):
                e = min(self.count, s + step)
                sq = self.sq[s:e] if self._metric.squared_norms else None
                low, at = self._metric.score(qt, self.buf[s:e], sq).min(1)
                better = low < best
                best, arg = torch.where(better, low, best), torch.where(better, at + s, arg)
            x = self.buf[arg].double()
            qd = qt.double()
            if self.metric == "l2":
                d = (x - qd).norm(dim=1)
            else:
                ip = (x * qd).sum(1)
                d = 1.0 - ip if self.metric == "cosine" else -ip
        return d.cpu().numpy()


__all__ = ["TorchWindowStore", "as_device", "CHUNK_CELLS"]
