"""The store's rows: growable buffers (vectors, ids, labels, steps, per-row version) and the id map.

Not thread-safe by itself: the store's lock guards every call. A :class:`Snapshot` is an
unchanging view for readers that work outside the lock (graph, k-means, table builds): copy on
write - a write that would change rows a snapshot still shows copies the buffers first, so taking
a snapshot costs nothing (the copy took 0.4 s at 100k x 384, and the vectors' memory once more).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

MISSING = -1  # label / step value meaning "not given"
_OWN_REFS = 3  # references to a buffer in Rows._unshare: the attribute, the local name, getrefcount's argument
_FIELDS = ("vec", "ids", "labels", "steps", "version")


@dataclass(frozen=True)
class Snapshot:
    """The rows at one store version: later writes never show through (the store copies its
    buffers before it changes rows a snapshot shows). Read it, never write into its arrays.

    Example:
        >>> import numpy as np
        >>> from curriculum import EmbeddingStore
        >>> store = EmbeddingStore(1, metric="l2"); _ = store.add(np.array([[0.], [1]]))
        >>> snap = store.snapshot(); _ = store.add(np.array([[2.]]))
        >>> len(snap), len(store)
        (2, 3)
    """

    vec: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    steps: np.ndarray
    version: int

    def __len__(self) -> int:
        return len(self.ids)


class Rows:
    """Row buffers with amortised O(1) append and an id -> row map (binary search, or the identity
    when ids are ``0..n-1`` in row order - the usual case)."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.vec = np.zeros((0, dim), np.float32)
        self.ids = np.zeros(0, np.int64)
        self.labels = np.zeros(0, np.int64)
        self.steps = np.zeros(0, np.int64)
        self.version = np.zeros(0, np.int64)   # store version at each row's last write
        self._sorted_ids = np.zeros(0, np.int64)
        self._sorted_rows = np.zeros(0, np.int64)
        self._identity = False

    def live(self, name: str) -> np.ndarray:
        """A view of the first ``n`` entries of buffer ``name`` (valid until the next write)."""
        return getattr(self, name)[: self.n]

    def snapshot(self, version: int) -> Snapshot:
        # views, left writeable: numba compiles its kernels again for read-only arrays
        return Snapshot(*(self.live(f) for f in _FIELDS[:4]), version)

    def _unshare(self) -> None:
        """Before a write to rows ``[0, n)``: a new buffer for each one something else still views
        (a snapshot, or any slice of one: numpy views keep their buffer as ``base``, so the
        buffer's reference count says whether any is alive). A snapshot already dropped costs no copy."""
        for name in _FIELDS:
            buf = getattr(self, name)
            if sys.getrefcount(buf) > _OWN_REFS:
                setattr(self, name, buf.copy())

    # ------------------------------------------------------------------ id map
    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Row of every id, ``-1`` where not stored."""
        n = self._sorted_ids.size
        if n == 0:
            return np.full(ids.shape, -1, np.int64)
        if self._identity:
            return np.where((ids >= 0) & (ids < n), ids, -1)
        pos = np.minimum(np.searchsorted(self._sorted_ids, ids), n - 1)
        return np.where(self._sorted_ids[pos] == ids, self._sorted_rows[pos], -1)

    def next_id(self) -> int:
        return int(self._sorted_ids[-1]) + 1 if self._sorted_ids.size else 0

    def _rebuild_map(self) -> None:
        ids = self.live("ids")
        o = np.argsort(ids, kind="stable")
        self._sorted_ids, self._sorted_rows = ids[o], o.astype(np.int64)
        n = self._sorted_ids.size
        self._identity = bool(n) and int(self._sorted_ids[-1]) == n - 1 and \
            bool(np.array_equal(self._sorted_rows, np.arange(n)))

    # ------------------------------------------------------------------ writes
    def _reserve(self, extra: int) -> None:
        need = self.n + extra
        if need <= self.vec.shape[0]:
            return
        cap = max(need, int(self.vec.shape[0] * 1.5) + 16)
        for name in _FIELDS:
            old = getattr(self, name)
            new = np.zeros((cap,) + old.shape[1:], old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def append(self, vec: np.ndarray, ids: np.ndarray, labels: np.ndarray, step: int, version: int) -> None:
        n, r0 = len(ids), self.n
        self._reserve(n)
        self.vec[r0:r0 + n], self.ids[r0:r0 + n], self.labels[r0:r0 + n] = vec, ids, labels
        self.steps[r0:r0 + n], self.version[r0:r0 + n] = step, version
        self.n += n
        pos = np.searchsorted(self._sorted_ids, ids)
        o = np.lexsort((ids, pos))  # by position, and ascending inside a gap: the map stays sorted
        was_identity = self._identity or r0 == 0
        self._sorted_ids = np.insert(self._sorted_ids, pos[o], ids[o])
        self._sorted_rows = np.insert(self._sorted_rows, pos[o], np.arange(r0, r0 + n)[o])
        # appending ids r0..r0+n-1 in order keeps the identity map without a full check
        self._identity = was_identity and bool(np.array_equal(ids, np.arange(r0, r0 + n)))

    def write(self, rows: np.ndarray, vec: np.ndarray, labels: np.ndarray | None, step: int | None,
              version: int) -> None:
        self._unshare()
        self.vec[rows] = vec
        if labels is not None:
            self.labels[rows] = labels
        if step is not None:
            self.steps[rows] = step
        self.version[rows] = version

    def delete(self, rows: np.ndarray) -> None:
        self._unshare()
        keep = np.ones(self.n, bool)
        keep[rows] = False
        n_new = int(keep.sum())
        for name in _FIELDS:
            arr = getattr(self, name)
            arr[:n_new] = arr[: self.n][keep]
        self.n = n_new
        self._rebuild_map()

    def load(self, vec: np.ndarray, ids: np.ndarray, labels: np.ndarray, steps: np.ndarray) -> None:
        """Replace everything (an empty ``Rows`` being filled from a file)."""
        n = len(ids)
        self._unshare()
        self._reserve(n)
        self.vec[:n], self.ids[:n], self.labels[:n], self.steps[:n] = vec, ids, labels, steps
        self.n = n
        self._rebuild_map()


__all__ = ['MISSING', 'Snapshot', 'Rows']
