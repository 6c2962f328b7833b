"""Batches built from the store's neighbourhoods: anchors with their same-class partners and their
nearest other-class rows."""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from .._util import checks as C
from ..store import EmbeddingStore


class NeighbourhoodBatchSampler(Sampler[list[int]]):
    """Batches of ``P`` anchors, each with ``K - 1`` same-class neighbours and its ``M`` nearest
    other-class neighbours, so every batch holds hard negatives for every anchor.

    Neighbourhoods come from the store's kNN graph and are refreshed whenever the store has
    changed (checked at every epoch start and every ``refresh_every`` batches). Same-class
    partners missing from the graph are filled with random same-class samples. Deterministic
    from ``(seed, epoch)``. Yields lists of dataset ids; use as ``batch_sampler=``.

    Example:
        >>> import numpy as np
        >>> store = EmbeddingStore(1, metric="l2")
        >>> _ = store.add(np.array([[0.0], [0.1], [1.0], [1.1], [5.0], [5.1]]), labels=[0, 0, 1, 1, 0, 1])
        >>> b = NeighbourhoodBatchSampler(store, anchors_per_batch=1, positives=2, negatives=1, seed=0)
        >>> len(next(iter(b)))       # anchor + 1 same-class partner + 1 nearest other-class sample
        3
    """

    def __init__(self, store: EmbeddingStore, anchors_per_batch: int = 16, positives: int = 4, negatives: int = 4,
                 seed: int = 0, graph_k: int | None = None, refresh_every: int = 100) -> None:
        if not isinstance(store, EmbeddingStore):
            raise TypeError(f"store: expected an EmbeddingStore, got {type(store).__name__}")
        if not store.has_labels:
            raise ValueError("store: neighbourhood batches need a label on every stored row")
        self.store = store
        self.P = C.positive_int(anchors_per_batch, "anchors_per_batch")
        self.K = C.positive_int(positives, "positives")
        self.M = C.positive_int(negatives, "negatives", 0)
        self.seed = int(seed)
        self.graph_k = min(len(store) - 1, graph_k or 4 * max(self.K, self.M, 4))
        self.refresh_every = C.positive_int(refresh_every, "refresh_every")
        self.epoch = 0
        self._version = None
        self._refresh()

    def _refresh(self) -> None:
        if self._version == self.store.version:
            return
        _, nb = self.store.knn(self.graph_k)
        ids = self.store.ids
        labels = self.store.labels
        nl = labels[self.store.rows_of(nb.ravel())].reshape(nb.shape)
        same = nl == labels[:, None]
        self._ids, self._labels, self._nb, self._same = ids, labels, nb, same
        self._by_class = {int(c): ids[labels == c] for c in np.unique(labels)}
        self._version = self.store.version

    def __len__(self) -> int:
        return math.ceil(len(self.store) / self.P)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to draw (a new seed stream per epoch, like ``DistributedSampler``)."""
        self.epoch = C.positive_int(epoch, "epoch", 0)

    def _batch(self, rows: np.ndarray, rng: np.random.Generator) -> list[int]:
        out: list[int] = []
        for r in rows:
            nb, same = self._nb[r], self._same[r]
            pos = nb[same][: self.K - 1]
            if len(pos) < self.K - 1:
                pool = self._by_class[int(self._labels[r])]
                pool = pool[pool != self._ids[r]]
                extra = rng.choice(pool, min(len(pool), self.K - 1 - len(pos)), replace=False) if len(pool) else []
                pos = np.concatenate([pos, np.setdiff1d(extra, pos)])
            neg = nb[~same][: self.M]
            out += [int(self._ids[r]), *map(int, pos), *map(int, neg)]
        return list(dict.fromkeys(out))  # de-duplicate, keep order

    def __iter__(self) -> Iterator[list[int]]:
        self._refresh()
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch]))
        order = rng.permutation(len(self._ids))
        for b, s in enumerate(range(0, len(order), self.P)):
            if b and b % self.refresh_every == 0:
                self._refresh()
                order = order[order < len(self._ids)]
            yield self._batch(order[s:s + self.P], rng)
        self.epoch += 1


__all__ = ['NeighbourhoodBatchSampler']
