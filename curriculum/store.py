"""The faiss-indexed embedding store: one vector per training sample, keyed by dataset index.

The store keeps the current vector of every row in plain numpy buffers (the source of truth)
and, past a size threshold, an approximate faiss index used only to *find candidates*. Every
candidate is then re-scored exactly against the current vectors, so updates and removals are
visible to the next search at once, whatever the index type: an updated row simply gains a
fresh index entry (its old entry becomes *stale* and is re-ranked or dropped), and when the
stale share passes ``rebuild_threshold`` the index is rebuilt in a background thread and
swapped atomically while searches go on against the old one.

Index choice (``index="auto"``): exact blocked search (faiss BLAS kernels over the buffers, no
copy) up to ``exact_threshold`` rows (default 100,000), beyond it ``IVF{nlist},Flat`` with
``nlist = 2**round(log2(4*sqrt(N)))`` and ``nprobe = max(16, nlist // 64)``; any faiss factory
string (``"HNSW32"``, ``"IVF4096,SQ8"``, ``"IVF1024,PQ16"`` ...) may be given instead, with
search parameters in ``index_params`` (e.g. ``{"nprobe": 64}`` or ``{"efSearch": 128}``).
The recall of each choice on clustered data is measured by ``benchmarks/store.py``.
"""

from __future__ import annotations

import json
import math
import os
import threading
import zipfile
from typing import Any

import faiss
import numpy as np

from . import _checks as C
from ._io import atomic_savez
from .knn import METRICS, faiss_metric, normalize
from .progress import progress_bar
from .store_graph import DEFAULT_NPROBE, EXACT_GRAPH_MIN_ROWS, GraphMixin, KMeansResult  # noqa: F401 (re-exported)
from .store_search import SearchMixin

FORMAT_NAME = "curriculum.EmbeddingStore"
FORMAT_VERSION = 1
MISSING = -1  # label / step value meaning "not given"


class _Buffers:
    """Growable row buffers (amortised O(1) append)."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self.vec = np.zeros((0, dim), np.float32)
        self.ids = np.zeros(0, np.int64)
        self.labels = np.zeros(0, np.int64)
        self.steps = np.zeros(0, np.int64)
        self.version = np.zeros(0, np.int64)

    def reserve(self, extra: int) -> None:
        need = self.n + extra
        if need <= self.vec.shape[0]:
            return
        cap = max(need, int(self.vec.shape[0] * 1.5) + 16)
        for name in ("vec", "ids", "labels", "steps", "version"):
            old = getattr(self, name)
            new = np.zeros((cap,) + old.shape[1:], old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)


class EmbeddingStore(SearchMixin, GraphMixin):
    """One embedding per training sample, searchable through faiss.

    Args:
        dim: vector dimension.
        metric: ``"cosine"`` (vectors are stored L2-normalised), ``"l2"`` or ``"ip"``.
            Distances returned are always *smaller = nearer* (see :mod:`curriculum.knn`).
        index: ``"auto"``, ``"flat"`` (always exact) or a faiss factory string.
        exact_threshold: with ``index="auto"``, stores up to this size search exactly.
        rebuild_threshold: share of stale index entries that triggers a background rebuild.
        index_params: faiss search parameters set on the built index (``nprobe``, ``efSearch``...).

    Example:
        >>> import numpy as np, curriculum as cl
        >>> store = cl.EmbeddingStore(dim=4, metric="l2")
        >>> store.add(np.eye(4, dtype="float32"), labels=[0, 0, 1, 1])   # returns the ids
        array([0, 1, 2, 3])
        >>> dist, ids = store.search(np.eye(4, dtype="float32")[:1], k=2)
        >>> int(ids[0, 0])
        0
    """

    def __init__(self, dim: int, metric: str = "cosine", index: str = "auto", *,
                 exact_threshold: int = 100_000, rebuild_threshold: float = 0.2,
                 index_params: dict[str, float] | None = None) -> None:
        self.dim = C.positive_int(dim, "dim")
        self.metric = C.choice(metric, "metric", METRICS)
        if not isinstance(index, str) or not index:
            raise TypeError(f"index: expected 'auto', 'flat' or a faiss factory string, got {index!r}")
        if index not in ("auto", "flat"):
            try:  # validate the factory string now, not at the first search
                faiss.index_factory(self.dim, index, faiss_metric(self.metric))
            except Exception as exc:
                raise ValueError(f"index: {index!r} is not a valid faiss factory string for dim={dim} ({exc})") from None
        self.index_spec = index
        self.exact_threshold = C.positive_int(exact_threshold, "exact_threshold", 0)
        self.rebuild_threshold = C.finite_float(rebuild_threshold, "rebuild_threshold", 0.0, 1.0, low_open=True)
        self.index_params = dict(index_params or {})
        self._b = _Buffers(self.dim)
        self._sorted_ids = np.zeros(0, np.int64)   # id -> row lookup by binary search
        self._sorted_rows = np.zeros(0, np.int64)
        self._identity_ids = False
        self._lock = threading.RLock()
        self._version = 0
        self._index: Any = None          # approximate faiss index (None: exact search)
        self._index_entries = 0
        self._index_stale = 0
        self._rebuild_thread: threading.Thread | None = None
        self._rebuild_error: BaseException | None = None
        self._knn_cache: tuple | None = None
        self.last_knn_report: dict[str, Any] = {}
        self._sel_cache: dict[tuple, tuple] = {}

    # ------------------------------------------------------------------ basic accessors
    def __len__(self) -> int:
        return self._b.n

    def __repr__(self) -> str:
        return (f"EmbeddingStore(n={len(self)}, dim={self.dim}, metric={self.metric!r}, "
                f"index={self.index_spec!r}, active={self.active_index!r})")

    @property
    def ids(self) -> np.ndarray:
        """Stored ids in row order (a copy)."""
        return self._b.ids[: self._b.n].copy()

    @property
    def labels(self) -> np.ndarray:
        """Label of every row in ``ids`` order; ``-1`` where none was given."""
        return self._b.labels[: self._b.n].copy()

    @property
    def steps(self) -> np.ndarray:
        """Training step each row's vector was computed at; ``-1`` where unknown."""
        return self._b.steps[: self._b.n].copy()

    @property
    def has_labels(self) -> bool:
        return bool(self._b.n) and bool((self._b.labels[: self._b.n] >= 0).all())

    @property
    def active_index(self) -> str:
        """What the next search uses: ``"exact"`` or the faiss description of the index."""
        return "exact" if not self._wants_approx() else self._approx_spec()

    def rows_of(self, ids: Any, name: str = "ids") -> np.ndarray:
        """Row positions of ``ids``; raises for ids that are not stored."""
        ids = C.as_ids(ids, name, unique=False)
        rows = self._lookup(ids)
        if (rows < 0).any():
            missing = ids[rows < 0][:5].tolist()
            raise KeyError(f"{name}: ids not in the store: {missing}")
        return rows

    def contains(self, ids: Any) -> np.ndarray:
        """Boolean mask: which of ``ids`` are stored."""
        return self._lookup(C.as_ids(ids, "ids", unique=False)) >= 0

    def vectors(self, ids: Any = None) -> np.ndarray:
        """Current vectors of ``ids`` (all rows when None), as a float32 copy."""
        with self._lock:
            if ids is None:
                return self._b.vec[: self._b.n].copy()
            return self._b.vec[self.rows_of(ids)]

    def staleness(self, current_step: int) -> np.ndarray:
        """Steps since each row's vector was computed (``-1`` where the step is unknown)."""
        s = self.steps
        return np.where(s >= 0, int(current_step) - s, -1)

    # ------------------------------------------------------------------ id map
    def _lookup(self, ids: np.ndarray) -> np.ndarray:
        if self._sorted_ids.size == 0:
            return np.full(ids.shape, -1, np.int64)
        n = self._sorted_ids.size
        if self._identity_ids:  # ids 0..n-1 stored in row order (the usual case): no search
            return np.where((ids >= 0) & (ids < n), ids, -1)
        pos = np.searchsorted(self._sorted_ids, ids)
        pos = np.minimum(pos, self._sorted_ids.size - 1)
        hit = self._sorted_ids[pos] == ids
        return np.where(hit, self._sorted_rows[pos], -1)

    def _rebuild_idmap(self) -> None:
        ids = self._b.ids[: self._b.n]
        o = np.argsort(ids, kind="stable")
        self._sorted_ids, self._sorted_rows = ids[o], o.astype(np.int64)
        self._check_identity()

    def _check_identity(self) -> None:
        n = self._sorted_ids.size
        self._identity_ids = bool(n) and int(self._sorted_ids[-1]) == n - 1 and \
            bool(np.array_equal(self._sorted_rows, np.arange(n)))

    # ------------------------------------------------------------------ mutation
    def _prep(self, vectors: Any, name: str = "vectors") -> np.ndarray:
        v = C.as_vectors(vectors, name, self.dim)
        return normalize(v, name) if self.metric == "cosine" else v

    def add(self, vectors: Any, ids: Any = None, labels: Any = None, step: int | None = None) -> np.ndarray:
        """Add rows. ``ids`` default to ``len(store) ..``; returns the ids added.

        Labels must be non-negative integers; ``step`` is the training step the vectors were
        computed at (kept for staleness). Nothing is added if any argument is invalid.
        """
        v = self._prep(vectors)
        n = v.shape[0]
        with self._lock:
            if ids is None:
                start = int(self._sorted_ids[-1]) + 1 if self._sorted_ids.size else 0
                ids_arr = np.arange(start, start + n, dtype=np.int64)
            else:
                ids_arr = C.as_ids(ids, "ids", n=n)
            lab = C.as_labels(labels, "labels", n) if labels is not None else np.full(n, MISSING, np.int64)
            st = MISSING if step is None else C.positive_int(step, "step", 0)
            if n == 0:
                return ids_arr
            clash = self._lookup(ids_arr) >= 0
            if clash.any():
                raise ValueError(f"ids: expected ids not yet in the store, got existing ids {ids_arr[clash][:5].tolist()} "
                                 "(use update() to replace vectors)")
            b = self._b
            b.reserve(n)
            r0 = b.n
            b.vec[r0:r0 + n] = v
            b.ids[r0:r0 + n] = ids_arr
            b.labels[r0:r0 + n] = lab
            b.steps[r0:r0 + n] = st
            self._version += 1
            b.version[r0:r0 + n] = self._version
            b.n += n
            pos = np.searchsorted(self._sorted_ids, ids_arr)
            o = np.argsort(pos, kind="stable")
            was_identity = self._identity_ids or r0 == 0
            self._sorted_ids = np.insert(self._sorted_ids, pos[o], ids_arr[o])
            self._sorted_rows = np.insert(self._sorted_rows, pos[o], np.arange(r0, r0 + n)[o])
            # appending ids r0..r0+n-1 in order keeps the identity map without a full check
            self._identity_ids = was_identity and bool(np.array_equal(ids_arr, np.arange(r0, r0 + n)))
            if self._index is not None:
                self._index.add_with_ids(v, ids_arr)
                self._index_entries += n
            return ids_arr

    def update(self, ids: Any, vectors: Any, step: int | None = None, labels: Any = None) -> None:
        """Replace the vectors (and optionally labels) of existing ``ids``; visible to the next search."""
        ids_arr = C.as_ids(ids, "ids")
        v = self._prep(vectors)
        if v.shape[0] != ids_arr.shape[0]:
            raise ValueError(f"vectors: expected {ids_arr.shape[0]} rows (one per id), got {v.shape[0]}")
        lab = C.as_labels(labels, "labels", ids_arr.shape[0]) if labels is not None else None
        st = None if step is None else C.positive_int(step, "step", 0)
        with self._lock:
            rows = self.rows_of(ids_arr)
            self._b.vec[rows] = v
            if lab is not None:
                self._b.labels[rows] = lab
            if st is not None:
                self._b.steps[rows] = st
            self._version += 1
            self._b.version[rows] = self._version
            if self._index is not None:
                self._index.add_with_ids(v, ids_arr)
                self._index_entries += len(rows)
                self._index_stale += len(rows)
        self._maybe_rebuild()

    def remove(self, ids: Any) -> None:
        """Remove rows by id; they vanish from every later search."""
        ids_arr = C.as_ids(ids, "ids")
        with self._lock:
            rows = self.rows_of(ids_arr)
            keep = np.ones(self._b.n, bool)
            keep[rows] = False
            b = self._b
            n_new = int(keep.sum())
            for name in ("vec", "ids", "labels", "steps", "version"):
                arr = getattr(b, name)
                arr[:n_new] = arr[: b.n][keep]
            b.n = n_new
            self._version += 1
            self._rebuild_idmap()
            if self._index is not None:
                self._index_stale += len(rows)
        self._maybe_rebuild()

    # ------------------------------------------------------------------ index lifecycle
    def _wants_approx(self) -> bool:
        if self.index_spec == "flat":
            return False
        if self.index_spec == "auto":
            return self._b.n > self.exact_threshold
        return True

    def _approx_spec(self) -> str:
        if self.index_spec != "auto":
            return self.index_spec
        nlist = self._auto_nlist(self._b.n)
        return f"IVF{nlist},Flat"

    @staticmethod
    def _auto_nlist(n: int) -> int:
        return int(2 ** round(math.log2(max(4.0 * math.sqrt(max(n, 1)), 16))))

    def _build(self, vec: np.ndarray, ids: np.ndarray, spec: str, progress: bool) -> Any:
        metric = faiss_metric(self.metric)
        index = faiss.index_factory(self.dim, spec, metric)
        params = dict(self.index_params)
        ivf = None
        try:
            ivf = faiss.extract_index_ivf(index)
        except Exception:
            ivf = None
        if self.index_spec == "auto" and ivf is not None and "nprobe" not in params:
            params["nprobe"] = max(16, ivf.nlist // 64)
        with progress_bar(total=3, desc=f"building {spec}", disable=not progress) as bar:
            if not index.is_trained:
                n_train = min(vec.shape[0], max(64 * (ivf.nlist if ivf is not None else 256), 50_000))
                if ivf is not None and vec.shape[0] < ivf.nlist:
                    raise ValueError(f"index: {spec!r} needs at least {ivf.nlist} vectors to train, the store has {vec.shape[0]}")
                sample = vec if n_train >= vec.shape[0] else vec[np.random.default_rng(0).choice(vec.shape[0], n_train, replace=False)]
                index.train(np.ascontiguousarray(sample))
            bar.update(1)
            ps = faiss.ParameterSpace()
            for key, val in params.items():
                ps.set_index_parameter(index, key, val)
            bar.update(1)
            if ivf is None:
                index = faiss.IndexIDMap(index)
            index.add_with_ids(vec, ids)
            bar.update(1)
        return index

    def build(self, progress: bool = False) -> None:
        """Build the approximate index now (it is otherwise built at the first search that needs it)."""
        self.rebuild(background=False, progress=progress)

    def rebuild(self, background: bool = False, progress: bool = False) -> threading.Thread | None:
        """Rebuild the approximate index from the current vectors.

        With ``background=True`` the new index is built in a thread while searches keep using
        the old one; it is swapped in atomically when ready (rows changed meanwhile are added to
        it before the swap). Returns the thread (or None when run in the foreground / exact).
        """
        if not self._wants_approx():
            with self._lock:
                self._index, self._index_entries, self._index_stale = None, 0, 0
            return None
        with self._lock:
            if self._rebuild_thread is not None and self._rebuild_thread.is_alive():
                if not background:
                    self._rebuild_thread.join()
                return self._rebuild_thread
            n = self._b.n
            vec = self._b.vec[:n].copy()
            ids = self._b.ids[:n].copy()
            snap_version = self._version
            spec = self._approx_spec()

        def work() -> None:
            try:
                index = self._build(vec, ids, spec, progress)
                with self._lock:
                    b = self._b
                    changed = b.version[: b.n] > snap_version
                    if changed.any():
                        index.add_with_ids(b.vec[: b.n][changed], b.ids[: b.n][changed])
                    self._index = index
                    self._index_entries = int(index.ntotal)
                    self._index_stale = self._index_entries - b.n
            except BaseException as exc:  # surfaced by the next search / wait_rebuild
                self._rebuild_error = exc

        if background:
            t = threading.Thread(target=work, name="curriculum-store-rebuild", daemon=True)
            with self._lock:
                self._rebuild_thread = t
            t.start()
            return t
        work()
        self._raise_rebuild_error()
        return None

    def wait_rebuild(self) -> None:
        """Block until a background rebuild (if any) is done; re-raise its error if it failed."""
        t = self._rebuild_thread
        if t is not None:
            t.join()
        self._raise_rebuild_error()

    def _raise_rebuild_error(self) -> None:
        if self._rebuild_error is not None:
            exc, self._rebuild_error = self._rebuild_error, None
            raise RuntimeError(f"index rebuild failed: {exc}") from exc

    @property
    def stale_fraction(self) -> float:
        """Share of approximate-index entries that no longer match a live row's vector."""
        return self._index_stale / self._index_entries if self._index_entries else 0.0

    def _maybe_rebuild(self) -> None:
        if self._index is not None and self.stale_fraction > self.rebuild_threshold:
            self.rebuild(background=True)

    def _ensure_index(self) -> None:
        self._raise_rebuild_error()
        if self._wants_approx() and self._index is None:
            self.rebuild(background=False)
        elif not self._wants_approx() and self._index is not None:
            self._index, self._index_entries, self._index_stale = None, 0, 0


    # ------------------------------------------------------------------ embedding a dataset
    @classmethod
    def from_model(cls, model: Any, dataset: Any, batch_size: int = 256, device: Any = None,
                   progress: bool = True, metric: str = "cosine", index: str = "auto",
                   num_workers: int = 0, collate_fn: Any = None, step: int | None = None,
                   **store_kwargs: Any) -> "EmbeddingStore":
        """Embed every item of a map-style ``dataset`` with ``model`` (eval mode, no grad).

        Items may be ``x`` or ``(x, y, ...)``; when ``y`` is an integer class it becomes the row's
        label. Ids are the dataset indices ``0..len(dataset)-1``. The model's train/eval mode is
        restored afterwards. Batches go to ``device``, by default the device of the model's first
        parameter (a model on the GPU embeds on the GPU), else the CPU.

        Example:
            >>> store = EmbeddingStore.from_model(backbone, train_set, batch_size=512)  # doctest: +SKIP
        """
        import torch
        from torch.utils.data import DataLoader

        if not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset: expected a map-style dataset with __len__, got {type(dataset).__name__}")
        batch_size = C.positive_int(batch_size, "batch_size")
        if device is None:
            params = getattr(model, "parameters", None)
            first = next(iter(params()), None) if callable(params) else None
            device = first.device if first is not None else "cpu"
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=collate_fn)
        was_training = getattr(model, "training", False)
        store: EmbeddingStore | None = None
        offset = 0
        model.eval()
        try:
            with torch.no_grad(), progress_bar(total=len(dataset), desc="embedding", disable=not progress) as bar:
                for batch in loader:
                    x, y = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) and len(batch) > 1 else (batch, None)
                    x = x[0] if isinstance(x, (list, tuple)) else x
                    z = model(x.to(device) if hasattr(x, "to") else x)
                    z = z.reshape(z.shape[0], -1).float().cpu().numpy()
                    if store is None:
                        store = cls(z.shape[1], metric=metric, index=index, **store_kwargs)
                    lab = None
                    if y is not None:
                        ya = C.to_numpy(y, "labels")
                        if ya.ndim == 1 and np.issubdtype(ya.dtype, np.integer):
                            lab = ya
                    store.add(z, ids=np.arange(offset, offset + len(z)), labels=lab, step=step)
                    offset += len(z)
                    bar.update(len(z))
        finally:
            model.train(was_training)
        if store is None:
            raise ValueError("dataset: expected at least one item, got an empty dataset")
        return store

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, extra: dict[str, np.ndarray] | None = None) -> None:
        """Write the store to ``path`` atomically (temp file, fsync, rename).

        The format is a zip of plain ``.npy`` arrays, a JSON header and faiss's own index
        serialisation: no pickle, so loading a store from elsewhere can never run code. If the
        write fails midway, the previous file at ``path`` is left untouched. ``extra`` arrays
        (e.g. difficulty scores, see :func:`curriculum.difficulty.save_with_store`) travel in the
        same file and are ignored by :meth:`load`.
        """
        path = os.fspath(path)
        extra_arrays = {}
        for key, val in (extra or {}).items():
            if not isinstance(key, str) or not key:
                raise TypeError(f"extra: expected non-empty string keys, got {key!r}")
            arr = np.asarray(val)
            if arr.dtype == object:
                raise TypeError(f"extra[{key!r}]: expected a numeric array (no pickled objects), got dtype object")
            extra_arrays["extra:" + key] = arr
        with self._lock:
            n = self._b.n
            header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "dim": self.dim, "metric": self.metric,
                      "index": self.index_spec, "exact_threshold": self.exact_threshold,
                      "rebuild_threshold": self.rebuild_threshold, "index_params": self.index_params, "n": n}
            arrays = {
                "header": np.frombuffer(json.dumps(header).encode(), np.uint8),
                "vectors": self._b.vec[:n].copy(), "ids": self._b.ids[:n].copy(),
                "labels": self._b.labels[:n].copy(), "steps": self._b.steps[:n].copy(),
            }
            if self._index is not None and self._index_stale == 0:
                arrays["index"] = faiss.serialize_index(self._index)
        atomic_savez(path, {**arrays, **extra_arrays}, prefix=".store-")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EmbeddingStore":
        """Load a store written by :meth:`save`; a truncated or foreign file raises ``ValueError``."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"path: no store file at {path!r}")
        try:
            with np.load(path, allow_pickle=False) as z:
                if "header" not in z.files:
                    raise ValueError("no curriculum header")
                header = json.loads(bytes(z["header"]).decode())
                arrays = {k: z[k] for k in z.files if k != "header" and not k.startswith("extra:")}
        except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise ValueError(f"path: {path!r} is not a readable curriculum store (truncated or foreign file: {exc})") from None
        if header.get("format") != FORMAT_NAME:
            raise ValueError(f"path: {path!r} holds format {header.get('format')!r}, expected {FORMAT_NAME!r}")
        if header.get("version") != FORMAT_VERSION:
            raise ValueError(f"path: {path!r} has store format version {header.get('version')}, "
                             f"this curriculum reads version {FORMAT_VERSION}")
        store = cls(header["dim"], metric=header["metric"], index=header["index"],
                    exact_threshold=header["exact_threshold"], rebuild_threshold=header["rebuild_threshold"],
                    index_params=header.get("index_params"))
        n = int(header["n"])
        if arrays["vectors"].shape != (n, header["dim"]) or arrays["ids"].shape != (n,):
            raise ValueError(f"path: {path!r} is inconsistent (header says {n} rows, arrays disagree)")
        b = store._b
        b.reserve(n)
        b.vec[:n], b.ids[:n] = arrays["vectors"], arrays["ids"]
        b.labels[:n], b.steps[:n] = arrays["labels"], arrays["steps"]
        b.n = n
        store._rebuild_idmap()
        if "index" in arrays:
            store._index = faiss.deserialize_index(arrays["index"])
            store._index_entries = int(store._index.ntotal)
        return store
