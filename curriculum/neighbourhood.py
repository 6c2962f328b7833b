"""Batches built from the store's neighbourhoods, and index refresh for a drifting encoder."""

from __future__ import annotations

import copy
import math
import threading
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from . import _checks as C
from .store import EmbeddingStore


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
        if self._version == self.store._version:
            return
        _, nb = self.store.knn(self.graph_k)
        ids = self.store.ids
        labels = self.store.labels
        nl = labels[self.store.rows_of(nb.ravel())].reshape(nb.shape)
        same = nl == labels[:, None]
        self._ids, self._labels, self._nb, self._same = ids, labels, nb, same
        self._by_class = {int(c): ids[labels == c] for c in np.unique(labels)}
        self._version = self.store._version

    def __len__(self) -> int:
        return math.ceil(len(self.store) / self.P)

    def set_epoch(self, epoch: int) -> None:
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


class IndexRefresher:
    """Keep the store up with a drifting encoder (ANCE, Xiong et al. 2020).

    Every ``every_steps`` steps, or when the oldest row's staleness exceeds ``max_staleness``,
    :meth:`step` snapshots the encoder (a deep copy, in the caller's thread), re-embeds the
    dataset with the snapshot in a background thread, writes the rows with the snapshot's step
    and rebuilds the index, which the store swaps in atomically; training never waits and
    searches never fail meanwhile. Mined results carry the step of each embedding
    (:class:`curriculum.mining.Mined.steps`).

    Example:
        >>> refresher = IndexRefresher(store, model.backbone, train_set, every_steps=1000)  # doctest: +SKIP
        >>> refresher.step(global_step)       # call once per training step            # doctest: +SKIP
    """

    def __init__(self, store: EmbeddingStore, encoder: torch.nn.Module, dataset: Any, every_steps: int | None = None,
                 max_staleness: int | None = None, batch_size: int = 256, device: str = "cpu",
                 background: bool = True) -> None:
        if every_steps is None and max_staleness is None:
            raise ValueError("every_steps, max_staleness: expected at least one refresh trigger, got neither")
        self.store, self.encoder, self.dataset = store, encoder, dataset
        self.every_steps = None if every_steps is None else C.positive_int(every_steps, "every_steps")
        self.max_staleness = None if max_staleness is None else C.positive_int(max_staleness, "max_staleness")
        self.batch_size = C.positive_int(batch_size, "batch_size")
        self.device, self.background = device, bool(background)
        self.last_refresh: int | None = None
        self.refreshes = 0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def due(self, step: int) -> bool:
        """Whether a refresh is due at ``step`` (steps since the last one, or the stalest row)."""
        if self.every_steps is not None and step - (self.last_refresh or 0) >= self.every_steps:
            return True
        if self.max_staleness is not None:
            st = self.store.staleness(step)
            return bool((st > self.max_staleness).any())
        return False

    @property
    def refreshing(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def step(self, step: int) -> bool:
        """Start a refresh if one is due and none is running; returns whether one started."""
        if self._error is not None:
            exc, self._error = self._error, None
            raise RuntimeError(f"index refresh failed: {exc}") from exc
        step = C.positive_int(step, "step", 0)
        if self.refreshing or not self.due(step):
            return False
        snapshot = copy.deepcopy(self.encoder)
        self.last_refresh = step

        def work() -> None:
            try:
                from torch.utils.data import DataLoader
                snapshot.eval()
                loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)
                offset = 0
                with torch.no_grad():
                    for batch in loader:
                        x = batch[0] if isinstance(batch, (list, tuple)) else batch
                        z = snapshot(x.to(self.device)).reshape(len(x), -1).float().cpu().numpy()
                        ids = np.arange(offset, offset + len(z))
                        present = self.store.contains(ids)
                        if present.any():
                            self.store.update(ids[present], z[present], step=step)
                        offset += len(z)
                self.store.rebuild(background=False)
                self.refreshes += 1
            except BaseException as exc:
                self._error = exc

        if self.background:
            self._thread = threading.Thread(target=work, name="curriculum-index-refresh", daemon=True)
            self._thread.start()
        else:
            work()
            if self._error is not None:
                exc, self._error = self._error, None
                raise RuntimeError(f"index refresh failed: {exc}") from exc
        return True

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            exc, self._error = self._error, None
            raise RuntimeError(f"index refresh failed: {exc}") from exc
