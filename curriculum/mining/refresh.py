"""Keeping the store up with a drifting encoder (ANCE-style index refresh)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from .._util import checks as C
from .._util.background import BackgroundTask
from ..store import EmbeddingStore


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
        self._task = BackgroundTask("index refresh")

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
        """Whether a background re-embedding is running now."""
        return self._task.running

    def step(self, step: int) -> bool:
        """Start a refresh if one is due and none is running; returns whether one started.
        A failed earlier refresh is re-raised here (``RuntimeError``)."""
        self._task.check()
        step = C.positive_int(step, "step", 0)
        if self.refreshing or not self.due(step):
            return False
        snapshot = copy.deepcopy(self.encoder)
        self.last_refresh = step
        if self.background:
            self._task.start(lambda: self._refresh(snapshot, step))
        else:
            try:
                self._refresh(snapshot, step)
            except Exception as exc:
                raise RuntimeError(f"index refresh failed: {exc!r}") from exc
        return True

    def _refresh(self, snapshot: torch.nn.Module, step: int) -> None:
        """Re-embed the dataset with the encoder's snapshot, write the rows, rebuild the index."""
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
        self.store.build()
        self.refreshes += 1

    def wait(self, timeout: float | None = None) -> None:
        """Block until a running refresh is done; re-raise its error if it failed."""
        self._task.wait(timeout)


__all__ = ['IndexRefresher']
