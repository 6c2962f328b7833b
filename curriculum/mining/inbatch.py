"""In-batch hard-sample miners and the cross-batch memory.

In-batch miners take ``(embeddings, labels)`` of one batch and return index tensors in the
shapes metric-learning users know: triplets ``(anchor, positive, negative)`` or pairs
``(a1, p, a2, n)``. The global miner over the whole store is
:class:`curriculum.mining.HardNegativeMiner` (:mod:`curriculum.mining.hard_negatives`).

Distances follow the store's convention (smaller = nearer): ``cosine`` = 1 - cos, ``l2`` =
Euclidean, ``ip`` = -<a, b>.
"""

from __future__ import annotations

from typing import Any

import torch

from .._util import checks as C

DISTANCES = ("cosine", "l2", "ip")


def pairwise_distance(a: torch.Tensor, b: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """``(len(a), len(b))`` distance matrix, smaller = nearer.

    Example:
        >>> pairwise_distance(torch.tensor([[0., 0]]), torch.tensor([[3., 4]]), "l2").tolist()
        [[5.0]]
    """
    if distance == "l2":
        return torch.cdist(a, b).clamp_min(0)
    if distance == "cosine":
        a = torch.nn.functional.normalize(a, dim=1)
        b = torch.nn.functional.normalize(b, dim=1)
        return 1.0 - a @ b.T
    return -(a @ b.T)


def _empty3(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    e = torch.zeros(0, dtype=torch.long, device=device)
    return e, e.clone(), e.clone()


class BaseMiner:
    """Validates ``(embeddings, labels)`` once; subclasses implement :meth:`mine`.

    Calling a miner (``miner(emb, labels)``) checks the inputs and runs ``mine``. Anchors with
    no valid positive or negative produce no tuple (never a garbage index). Mining runs on the
    embeddings' device (a CUDA batch is mined on the GPU) and returns index tensors there.

    Example:
        >>> class Nearest(BaseMiner):
        ...     def mine(self, emb, labels):
        ...         return (pairwise_distance(emb, emb, self.distance).fill_diagonal_(float("inf")).argmin(1),)
        >>> Nearest("l2")(torch.tensor([[0.], [1.], [5.]]), torch.tensor([0, 1, 1]))[0].tolist()
        [1, 0, 1]
    """

    def __init__(self, distance: str = "cosine") -> None:
        self.distance = C.choice(distance, "distance", DISTANCES)

    def __call__(self, embeddings: Any, labels: Any) -> tuple[torch.Tensor, ...]:
        emb = torch.as_tensor(embeddings)
        if emb.ndim != 2:
            raise ValueError(f"embeddings: expected a 2-D (batch, dim) tensor, got shape {tuple(emb.shape)}")
        if not emb.is_floating_point():
            raise TypeError(f"embeddings: expected a float tensor, got dtype {emb.dtype}")
        if not torch.isfinite(emb).all():
            raise ValueError("embeddings: expected finite values, got NaN or inf")
        lab = torch.as_tensor(labels, device=emb.device)
        if lab.ndim != 1 or lab.shape[0] != emb.shape[0]:
            raise ValueError(f"labels: expected {emb.shape[0]} labels (one per embedding), got shape {tuple(lab.shape)}")
        if lab.is_floating_point():
            raise TypeError(f"labels: expected integer labels, got dtype {lab.dtype}")
        with torch.no_grad():
            return self.mine(emb.detach(), lab.long())

    def mine(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:  # pragma: no cover
        """The mined index tuples of one batch (each miner documents its shapes)."""
        raise NotImplementedError

    def _masks(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        return same & ~eye, ~same


class BatchHardMiner(BaseMiner):
    """Per anchor: the farthest positive and the closest negative (Hermans et al. 2017).

    Example:
        >>> emb = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
        >>> a, p, n = BatchHardMiner("l2")(emb, torch.tensor([0, 0, 1, 1]))
        >>> a.tolist(), p.tolist(), n.tolist()
        ([0, 1, 2, 3], [1, 0, 3, 2], [2, 2, 1, 1])
    """

    def mine(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The mined index tuples of one batch (see the class docstring for their shapes)."""
        d = pairwise_distance(emb, emb, self.distance)
        pos, neg = self._masks(labels)
        ok = pos.any(1) & neg.any(1)
        p = torch.where(pos, d, -torch.inf).argmax(1)
        n = torch.where(neg, d, torch.inf).argmin(1)
        a = torch.arange(len(labels), device=labels.device)[ok]
        return a, p[ok], n[ok]


class SemiHardMiner(BaseMiner):
    """For every positive pair (a, p): the closest negative with ``d(a,p) < d(a,n) < d(a,p) + margin``
    (FaceNet, Schroff et al. 2015); ``all_negatives=True`` returns every semi-hard triplet.

    Example:
        >>> emb = torch.tensor([[0.0], [1.0], [1.5], [1.8], [5.0]])
        >>> SemiHardMiner(margin=1.0, distance="l2")(emb, torch.tensor([0, 0, 1, 1, 1]))[2].tolist()
        [2, 1, 1, 1, 1]
    """

    def __init__(self, margin: float = 0.2, distance: str = "cosine", all_negatives: bool = False) -> None:
        super().__init__(distance)
        self.margin = C.finite_float(margin, "margin", 0.0, low_open=True)
        self.all_negatives = bool(all_negatives)

    def mine(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The mined index tuples of one batch (see the class docstring for their shapes)."""
        d = pairwise_distance(emb, emb, self.distance)
        pos, neg = self._masks(labels)
        a, p = torch.nonzero(pos, as_tuple=True)
        if a.numel() == 0:
            return _empty3(emb.device)
        dap = d[a, p][:, None]
        dan = d[a]
        semi = neg[a] & (dan > dap) & (dan < dap + self.margin)
        if self.all_negatives:
            i, n = torch.nonzero(semi, as_tuple=True)
            return a[i], p[i], n
        ok = semi.any(1)
        n = torch.where(semi, dan, torch.inf).argmin(1)
        return a[ok], p[ok], n[ok]


class MarginMiner(BaseMiner):
    """All triplets violating the margin: ``d(a,p) - d(a,n) + margin > 0``, computed in anchor chunks
    so memory stays O(chunk x B^2).

    Example:
        >>> emb = torch.tensor([[0.0], [1.0], [1.2]])
        >>> [t.tolist() for t in MarginMiner(0.5, "l2")(emb, torch.tensor([0, 0, 1]))]
        [[0, 1], [1, 0], [2, 2]]
    """

    def __init__(self, margin: float = 0.2, distance: str = "cosine", chunk: int = 64) -> None:
        super().__init__(distance)
        self.margin = C.finite_float(margin, "margin", 0.0)
        self.chunk = C.positive_int(chunk, "chunk")

    def mine(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The mined index tuples of one batch (see the class docstring for their shapes)."""
        d = pairwise_distance(emb, emb, self.distance)
        pos, neg = self._masks(labels)
        out = []
        for s in range(0, len(labels), self.chunk):
            e = min(len(labels), s + self.chunk)
            viol = pos[s:e, :, None] & neg[s:e, None, :] & (d[s:e, :, None] - d[s:e, None, :] + self.margin > 0)
            a, p, n = torch.nonzero(viol, as_tuple=True)
            out.append((a + s, p, n))
        if not out:
            return _empty3(emb.device)
        return tuple(torch.cat(x) for x in zip(*out))  # type: ignore[return-value]


class MultiSimilarityMiner(BaseMiner):
    """Multi-similarity pair mining (Wang et al. 2019) on cosine similarity ``S``: keep a negative
    pair if ``S_an + epsilon > min_p S_ap`` and a positive pair if ``S_ap - epsilon < max_n S_an``.
    Returns pairs ``(a1, p, a2, n)``.

    Example:
        >>> emb = torch.tensor([[1., 0], [1, .1], [.9, .2], [0, 1]])
        >>> a1, p, a2, n = MultiSimilarityMiner(epsilon=0.1)(emb, torch.tensor([0, 0, 1, 1]))
        >>> len(a1) > 0 and len(a2) > 0
        True
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__("cosine")
        self.epsilon = C.finite_float(epsilon, "epsilon", 0.0)

    def mine(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The mined index tuples of one batch (see the class docstring for their shapes)."""
        e = torch.nn.functional.normalize(emb, dim=1)
        s = e @ e.T  # the similarity itself: 1 - (1 - cos) rounds differently at the epsilon boundary
        pos, neg = self._masks(labels)
        min_pos = torch.where(pos, s, torch.inf).min(1, keepdim=True).values
        max_neg = torch.where(neg, s, -torch.inf).max(1, keepdim=True).values
        keep_neg = neg & (s + self.epsilon > min_pos)
        keep_pos = pos & (s - self.epsilon < max_neg)
        a1, p = torch.nonzero(keep_pos, as_tuple=True)
        a2, n = torch.nonzero(keep_neg, as_tuple=True)
        return a1, p, a2, n


class CrossBatchMemory:
    """A FIFO of recent embeddings (XBM, Wang et al. 2020) for mining without a full store.

    Args:
        size: slots in the memory (the oldest entries are evicted first).
        dim: embedding dimension.
        distance: ``"cosine"``, ``"l2"`` or ``"ip"``.
        device: where the memory lives (``"cuda"`` keeps it beside a GPU model, so adding a batch
            and mining it never leave the GPU); inputs are moved there, results are returned on
            the query's device.

    Example:
        >>> mem = CrossBatchMemory(size=3, dim=1, distance="l2")
        >>> mem.add(torch.tensor([[0.0], [1.0], [2.0], [3.0]]), torch.tensor([0, 1, 1, 0]))  # oldest evicted
        >>> slots, dist = mem.negatives(torch.tensor([[2.9]]), torch.tensor([0]), k=2)
        >>> mem.emb[slots[0], 0].tolist()
        [2.0, 1.0]
    """

    def __init__(self, size: int, dim: int, distance: str = "cosine", device: torch.device | str = "cpu") -> None:
        self.size, self.dim = C.positive_int(size, "size"), C.positive_int(dim, "dim")
        self.distance = C.choice(distance, "distance", DISTANCES)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda', got {device!r}") from exc
        self.emb = torch.zeros(self.size, self.dim, device=self.device)
        self.labels = torch.full((self.size,), -1, dtype=torch.long, device=self.device)
        self.ids = torch.full((self.size,), -1, dtype=torch.long, device=self.device)
        self.ptr = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, embeddings: Any, labels: Any, ids: Any = None) -> None:
        """Append a batch (``ids`` are optional dataset ids kept beside each slot)."""
        dev = self.device
        e = torch.as_tensor(embeddings).detach().to(dev, torch.float32)
        lab = torch.as_tensor(labels).detach().to(dev, torch.long)
        if e.ndim != 2 or e.shape[1] != self.dim or lab.shape != (e.shape[0],):
            raise ValueError(f"embeddings, labels: expected shapes (n, {self.dim}) and (n,), got {tuple(e.shape)} "
                             f"and {tuple(lab.shape)}")
        if not torch.isfinite(e).all():
            raise ValueError("embeddings: expected finite values, got NaN or inf")
        if ids is None:
            i = torch.full((e.shape[0],), -1, dtype=torch.long, device=dev)
        else:
            i = torch.as_tensor(ids).detach().to(dev, torch.long)
            if i.shape != (e.shape[0],):
                raise ValueError(f"ids: expected {e.shape[0]} ids (one per embedding), got shape {tuple(i.shape)}")
        e, lab, i = e[-self.size:], lab[-self.size:], i[-self.size:]
        pos = (self.ptr + torch.arange(len(e), device=dev)) % self.size
        self.emb[pos], self.labels[pos], self.ids[pos] = e, lab, i
        self.ptr = int((self.ptr + len(e)) % self.size)
        self.count = min(self.size, self.count + len(e))

    def state_dict(self) -> dict[str, Any]:
        """The memory's contents and write position (tensors on the CPU; ``torch.load(weights_only=True)``
        reads it back).

        Example:
            >>> mem = CrossBatchMemory(size=2, dim=1); mem.add(torch.ones(1, 1), torch.tensor([3]))
            >>> again = CrossBatchMemory(size=2, dim=1); again.load_state_dict(mem.state_dict()); len(again)
            1
        """
        return {"format": "curriculum.xbm", "version": 1, "size": self.size, "dim": self.dim,
                "distance": self.distance, "emb": self.emb.cpu().clone(), "labels": self.labels.cpu().clone(),
                "ids": self.ids.cpu().clone(), "ptr": self.ptr, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; checked whole first (a bad state changes nothing)."""
        C.state_format(state, "curriculum.xbm", (1,), "CrossBatchMemory")
        for key in ("size", "dim", "distance"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"state: {key}={state.get(key)!r} was saved, this memory has {getattr(self, key)!r}")
        emb, lab, ids = state["emb"], state["labels"], state["ids"]
        if tuple(emb.shape) != (self.size, self.dim) or lab.shape != (self.size,) or ids.shape != (self.size,):
            raise ValueError(f"state: tensors of shapes {tuple(emb.shape)}, {tuple(lab.shape)}, {tuple(ids.shape)} "
                             f"do not fit a memory of {self.size} x {self.dim}")
        ptr, count = C.positive_int(state["ptr"], "state.ptr", 0), C.positive_int(state["count"], "state.count", 0)
        if ptr >= self.size or count > self.size:
            raise ValueError(f"state: ptr={ptr} / count={count} outside a memory of size {self.size}")
        self.emb = emb.to(self.device, torch.float32).clone()
        self.labels, self.ids = lab.to(self.device).long().clone(), ids.to(self.device).long().clone()
        self.ptr, self.count = ptr, count

    def negatives(self, embeddings: Any, labels: Any, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, k)`` memory slots of the nearest different-label entries (``-1`` where fewer) and
        distances, on the device of ``embeddings``."""
        q = torch.as_tensor(embeddings).detach()
        out_dev = q.device
        e = q.to(self.device, torch.float32)
        lab = torch.as_tensor(labels).detach().to(self.device, torch.long)
        d = pairwise_distance(e, self.emb[: self.count], self.distance)
        d = torch.where(lab[:, None] != self.labels[None, : self.count], d, torch.inf)
        kk = min(C.positive_int(k, "k"), self.count)
        vals, slots = torch.topk(d, kk, dim=1, largest=False) if kk else (d[:, :0], d[:, :0].long())
        slots = torch.where(torch.isfinite(vals), slots, -1)
        return slots.to(out_dev), vals.to(out_dev)


__all__ = ['DISTANCES', 'pairwise_distance', 'BaseMiner', 'BatchHardMiner', 'SemiHardMiner', 'MarginMiner',
           'MultiSimilarityMiner', 'CrossBatchMemory']
