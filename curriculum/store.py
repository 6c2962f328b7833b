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
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from . import _checks as C
from ._io import atomic_savez
from .knn import (METRICS, blocked_knn, brute_knn, faiss_metric, first_k_valid, normalize, pair_distances, sort_dedupe,
                  to_distance)
from .knn_exact import exact_knn_graph
from .progress import progress_bar

FORMAT_NAME = "curriculum.EmbeddingStore"
FORMAT_VERSION = 1
MISSING = -1  # label / step value meaning "not given"
EXACT_GRAPH_MIN_ROWS = 50_000  # from here the exact graph runs in blocks (knn_exact), below via faiss flat (faster there)
DEFAULT_NPROBE = 16  # blocked all-points kNN: clusters probed per cluster (the recall knob)


@dataclass(frozen=True)
class KMeansResult:
    """Output of :meth:`EmbeddingStore.kmeans`: centroids, the cluster of every stored row (in
    ``store.ids`` order) and each row's distance to its centroid (store metric)."""

    centroids: np.ndarray
    assignments: np.ndarray
    distances: np.ndarray


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


class EmbeddingStore:
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

    # ------------------------------------------------------------------ search
    def _label_params(self, label: int) -> Any:
        """faiss search parameters whose ID selector skips every id carrying ``label``, cached."""
        key = (id(self._index), self._version, int(label))
        hit = self._sel_cache.get(key)
        if hit is not None:
            return hit[-1]
        n = self._b.n
        ids = np.ascontiguousarray(self._b.ids[:n][self._b.labels[:n] == label])
        inner = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))
        sel = faiss.IDSelectorNot(inner)
        # IVF only: a graph index (HNSW) cannot route around a whole excluded neighbourhood
        # (its filtered search stalls inside the anchor's cluster), so the caller searches exactly
        ivf = faiss.extract_index_ivf(self._index)
        params = faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe)
        if len(self._sel_cache) > 64:
            self._sel_cache.clear()
        self._sel_cache[key] = (ids, inner, sel, params)
        return params

    def _candidates(self, q: np.ndarray, kf: int, label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids) of ``kf`` nearest candidates per query, sorted, current vectors;
        with ``label``, rows carrying that label are skipped."""
        b = self._b
        if self._index is None:
            if label is None:
                d, rows = brute_knn(q, b.vec[: b.n], kf, self.metric)
            else:
                keep = np.flatnonzero(b.labels[: b.n] != label)
                d, sub = brute_knn(q, b.vec[keep], kf, self.metric)
                rows = np.where(sub >= 0, keep[np.maximum(sub, 0)], -1)
            ids = np.where(rows >= 0, b.ids[np.maximum(rows, 0)], -1)
            return d, ids
        kq = min(2 * kf + 8, max(int(self._index.ntotal), 1))
        params = None
        if label is not None:
            try:
                params = self._label_params(label)
            except Exception:  # not an IVF index: label-filtered search runs exactly
                index, self._index = self._index, None
                try:
                    return self._candidates(q, kf, label)
                finally:
                    self._index = index
        _, cand = self._index.search(q, kq, params=params) if params is not None else self._index.search(q, kq)
        return self._rerank(q, cand, kf, None if label is None else np.full(len(q), label))

    def _rerank(self, q: np.ndarray, cand: np.ndarray, kf: int, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact distances of the index's candidate ids at the current vectors; stale, removed and
        (with ``labels``) same-label candidates dropped; sorted, de-duplicated, ``kf`` kept."""
        b = self._b
        rows = self._lookup(cand)
        live = (cand >= 0) & (rows >= 0)
        if labels is not None:
            live &= b.labels[np.maximum(rows, 0)] != labels[:, None]
        vec = b.vec[np.maximum(rows, 0)]
        d = pair_distances(q, vec, self.metric).astype(np.float32)
        d = np.where(live, d, np.inf)
        d, ids = sort_dedupe(d, np.where(live, cand, -1))
        return d[:, :kf], ids[:, :kf]

    def _list_label_counts(self, ivf: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(label values, per-list count of each label, centroids) of an IVF index, cached per
        index and store version: which inverted lists hold rows of which label."""
        key = (id(self._index), self._version)
        hit = self._sel_cache.get(("lists",) + key)
        if hit is not None:
            return hit
        b = self._b
        values, codes = np.unique(b.labels[: b.n], return_inverse=True)
        inv = ivf.invlists
        sizes = np.array([inv.list_size(li) for li in range(ivf.nlist)], np.int64)
        entry_ids = np.empty(int(sizes.sum()), np.int64)
        pos = 0
        for li in np.flatnonzero(sizes):
            entry_ids[pos:pos + sizes[li]] = faiss.rev_swig_ptr(inv.get_ids(int(li)), int(sizes[li]))
            pos += sizes[li]
        rows = self._lookup(entry_ids)
        list_of = np.repeat(np.arange(ivf.nlist), sizes)
        counts = np.zeros((ivf.nlist, len(values)), np.int64)
        ok = rows >= 0
        np.add.at(counts, (list_of[ok], codes[rows[ok]]), 1)
        cent = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        out = (values, counts, np.ascontiguousarray(cent, np.float32))
        self._sel_cache[("lists",) + key] = out
        return out

    def _label_probe_search(self, q: np.ndarray, kf: int, labs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Label-filtered candidates from an IVF index, probing only lists that hold rows of another
        label: each anchor's ``nprobe`` nearest *useful* lists (a list holding only the anchor's
        label is never scanned - on label-clustered embeddings most of a plain probe would be).
        Anchors whose probed lists are all free of their label need no ID filter and share one
        faiss call; the others are filtered per label inside faiss."""
        ivf = self._index if isinstance(self._index, faiss.IndexIVF) else None
        if ivf is None:  # HNSW (searched exactly by _candidates) or a transform before the IVF
            d = np.empty((q.shape[0], kf), np.float32)
            ids = np.empty((q.shape[0], kf), np.int64)
            for c in np.unique(labs):
                m = labs == c
                d[m], ids[m] = self._candidates(q[m], kf, label=int(c))
            return d, ids
        values, counts, cent = self._list_label_counts(ivf)
        code = np.searchsorted(values, labs)
        known = (code < len(values)) & (values[np.minimum(code, len(values) - 1)] == labs)
        other = counts.sum(1)[:, None] - counts  # rows of other labels per list
        allowed = np.ones((len(q), ivf.nlist), bool)
        allowed[known] = (other[:, code[known]] > 0).T
        import torch

        ip = ivf.metric_type == faiss.METRIC_INNER_PRODUCT
        score = torch.from_numpy(q) @ torch.from_numpy(cent).T
        if not ip:
            score = 2.0 * score - torch.from_numpy((cent * cent).sum(1))[None, :]  # -||q - c||^2 + ||q||^2
        score.masked_fill_(torch.from_numpy(~allowed), -torch.inf)
        nprobe = min(ivf.nprobe, ivf.nlist)
        sq_t, iq_t = torch.topk(score, nprobe, dim=1)  # ~10x faster than numpy's argpartition here
        sq, iq = sq_t.numpy(), iq_t.numpy()
        iq = np.where(np.isfinite(sq), iq, -1).astype(np.int64)
        dq = sq if ip else (q * q).sum(1)[:, None] - sq
        dq = np.ascontiguousarray(np.where(np.isfinite(dq), dq, 0.0), np.float32)
        mixed = np.zeros(len(q), bool)
        mixed[known] = (counts[np.maximum(iq[known], 0), code[known][:, None]] * (iq[known] >= 0)).any(1)
        # a fresh IVFFlat holds the current vectors: its distances are exact and its hits live, so
        # no margin and no re-ranking are needed (an updated store or compressed codes re-rank)
        exact_codes = self._index_stale == 0 and isinstance(ivf, faiss.IndexIVFFlat)
        kq = min(kf if exact_codes else 2 * kf + 8, max(int(ivf.ntotal), 1))
        cand = np.full((len(q), kq), -1, np.int64)
        cand_d = np.full((len(q), kq), np.inf, np.float32)
        groups = [(np.flatnonzero(~mixed), None)] + [
            (np.flatnonzero(mixed & (labs == c)), int(c)) for c in np.unique(labs[mixed])]
        for rows, label in groups:
            if rows.size == 0:
                continue
            params = faiss.SearchParametersIVF(nprobe=nprobe) if label is None else self._label_params(label)
            params.nprobe = nprobe
            qq = np.ascontiguousarray(q[rows], np.float32)
            a_i = np.ascontiguousarray(iq[rows])
            a_d = np.ascontiguousarray(dq[rows])
            out_d = np.empty((rows.size, kq), np.float32)
            out_i = np.empty((rows.size, kq), np.int64)
            ivf.search_preassigned_c(rows.size, faiss.swig_ptr(qq), kq, faiss.swig_ptr(a_i), faiss.swig_ptr(a_d),
                                     faiss.swig_ptr(out_d), faiss.swig_ptr(out_i), False, params)
            cand[rows], cand_d[rows] = out_i, out_d
        if exact_codes:
            d = to_distance(cand_d, self.metric)
            d[cand < 0] = np.inf
            return d, np.where(np.isfinite(d), cand, -1)
        return self._rerank(q, cand, kf, labs)

    def _exact_label_filtered(self, q: np.ndarray, kf: int, labs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact search skipping same-label rows: one masked matrix product per chunk of rows,
        every query at once (no per-label copies of the store)."""
        import torch

        b = self._b
        n = b.n
        qt = torch.from_numpy(q)
        qlab = torch.from_numpy(labs)[:, None]
        best_d = torch.full((len(q), 0), float("inf"))
        best_r = torch.zeros((len(q), 0), dtype=torch.int64)
        q_sq = (qt * qt).sum(1, keepdim=True) if self.metric == "l2" else None
        for s in range(0, n, 65536):
            e = min(n, s + 65536)
            xc = torch.from_numpy(b.vec[s:e])
            if self.metric == "l2":
                dist = (q_sq + (xc * xc).sum(1)[None, :] - 2 * qt @ xc.T).clamp_min_(0).sqrt_()
            elif self.metric == "cosine":
                dist = 1.0 - qt @ xc.T
            else:
                dist = -(qt @ xc.T)
            dist.masked_fill_(torch.from_numpy(b.labels[s:e])[None, :] == qlab, float("inf"))
            m = min(kf, e - s)
            v, r = torch.topk(dist, m, dim=1, largest=False)
            best_d = torch.cat([best_d, v], 1)
            best_r = torch.cat([best_r, r + s], 1)
            if best_d.shape[1] > kf:
                v, pos = torch.topk(best_d, kf, dim=1, largest=False)
                best_d, best_r = v, torch.gather(best_r, 1, pos)
        o = torch.argsort(best_d, dim=1, stable=True)
        d = torch.gather(best_d, 1, o).numpy().astype(np.float32)
        rows = torch.gather(best_r, 1, o).numpy()
        ids = np.where(np.isfinite(d), b.ids[rows], -1)
        if d.shape[1] < kf:
            pad = kf - d.shape[1]
            d = np.pad(d, ((0, 0), (0, pad)), constant_values=np.inf)
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        return d, ids

    def search(self, queries: Any, k: int, exclude_ids: Any = None,
               exclude_labels: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest stored ids to each query.

        Args:
            queries: ``(n, dim)`` float array.
            k: neighbours per query.
            exclude_ids: ids never to return - a 1-D array (for every query) or a 2-D
                ``(n, m)`` array of per-query ids (``-1`` pads unused slots).
            exclude_labels: ``(n,)`` labels; query ``i`` never returns a row labelled
                ``exclude_labels[i]`` (hard negatives: the nearest rows of *another* class).
                The filter runs inside the search, so rare other classes are still found: an IVF
                index probes each query's ``nprobe`` nearest inverted lists *that hold rows of
                another label* (with a faiss ID selector only where a probed list also holds the
                query's label); exact stores and graph indexes (whose filtered search cannot leave
                the anchor's neighbourhood) search exactly.

        Returns:
            ``(distances, ids)``, both ``(n, k)``, nearest first; ``inf`` / ``-1`` where fewer
            than ``k`` rows qualify.
        """
        k = C.positive_int(k, "k")
        q = self._prep(queries, "queries")
        excl = None
        if exclude_ids is not None:
            excl = C.to_numpy(exclude_ids, "exclude_ids")
            if excl.ndim == 2:
                if excl.shape[0] != q.shape[0]:
                    raise ValueError(f"exclude_ids: expected {q.shape[0]} rows (one per query), got {excl.shape[0]}")
                if excl.size and not np.issubdtype(excl.dtype, np.integer):
                    raise TypeError(f"exclude_ids: expected integer ids, got dtype {excl.dtype}")
                excl = excl.astype(np.int64)
            else:
                excl = np.unique(C.as_ids(excl, "exclude_ids", unique=False))
        labs = None
        if exclude_labels is not None:
            labs = C.as_labels(exclude_labels, "exclude_labels", q.shape[0])
        with self._lock:
            self._ensure_index()
            extra = 0 if excl is None else (excl.shape[1] if excl.ndim == 2 else excl.size)
            # excluded ids rarely sit among a query's nearest: fetch a margin first and widen only
            # the rows left short (a batch of 256 excluded ids no longer multiplies the search)
            fetch = k + min(extra, k + 16)
            d, ids = self._fetch(q, fetch, labs)
            ok = (ids >= 0) & ~self._excluded(ids, excl)
            short = np.flatnonzero(ok.sum(1) < k) if fetch < k + extra else np.zeros(0, np.int64)
            if short.size:
                d2, i2 = self._fetch(q[short], k + extra, None if labs is None else labs[short])
                sub = None if excl is None else (excl[short] if excl.ndim == 2 else excl)
                ok2 = (i2 >= 0) & ~self._excluded(i2, sub)
                d = np.pad(d, ((0, 0), (0, extra - (fetch - k))), constant_values=np.inf)
                ids = np.pad(ids, ((0, 0), (0, extra - (fetch - k))), constant_values=-1)
                ok = np.pad(ok, ((0, 0), (0, extra - (fetch - k))), constant_values=False)
                d[short], ids[short], ok[short] = d2, i2, ok2
        return first_k_valid(d, ids, ok, k)

    def _fetch(self, q: np.ndarray, kf: int, labs: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if labs is None:
            return self._candidates(q, kf)
        if self._index is None:
            return self._exact_label_filtered(q, kf, labs)
        return self._label_probe_search(q, kf, labs)

    @staticmethod
    def _excluded(ids: np.ndarray, excl: np.ndarray | None) -> np.ndarray:
        if excl is None:
            return np.zeros(ids.shape, bool)
        if excl.ndim == 2:
            if not excl.shape[1]:
                return np.zeros(ids.shape, bool)
            return (ids[:, :, None] == excl[:, None, :]).any(-1)
        return np.isin(ids, excl)

    def knn(self, k: int, exclude_self: bool = True, batch_size: int = 8192, progress: bool = False,
            method: str = "auto", nprobe: int | None = None,
            target_recall: float | None = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """The all-points kNN graph: ``k`` nearest stored ids of every stored row.

        Row ``i`` of the result belongs to ``store.ids[i]``; returns ``(distances, ids)``, each
        ``(N, k)``. The last graph is cached until the store changes, so several scores share
        one computation.

        Methods: ``"exact"`` (below 50,000 rows faiss BLAS search in query chunks of
        ``batch_size``; from there :func:`curriculum.knn_exact.exact_knn_graph`, which scores each
        unordered pair of rows once and skips pairs of blocks the triangle inequality rules out),
        ``"index"``
        (through the approximate index, as ``search`` does), ``"blocked"`` (cluster the store and
        score each cluster against its ``nprobe`` nearest clusters with one matrix product - see
        :func:`curriculum.knn.blocked_knn`; ``nprobe`` is the recall knob, exact at
        ``nprobe >= n_clusters``). ``"auto"``: exact up to ``exact_threshold`` rows or with
        ``index="flat"``, blocked beyond (measured faster than the IVF/HNSW index at equal recall,
        ``benchmarks/store.py``). With ``method="auto"`` the recall the blocked graph would reach is
        measured on 512 sampled rows against exact search (for any nprobe, before running it): the
        smallest nprobe >= ``nprobe`` meeting ``target_recall`` is used, or exact search when that
        nprobe would score 40% of all pairs or more (hard, high-intrinsic-dimension data) - the
        choice follows measured recall and cost, not size alone. ``store.last_knn_report`` says
        what was chosen; :meth:`plan_knn` says it before running.
        """
        k = C.positive_int(k, "k")
        batch_size = C.positive_int(batch_size, "batch_size")
        method = C.choice(method, "method", ("auto", "exact", "index", "blocked"))
        n = len(self)
        if exclude_self and k > n - 1 or not exclude_self and k > n:
            raise ValueError(f"k: expected at most {n - 1 if exclude_self else n} (store size"
                             f"{' minus self' if exclude_self else ''}), got {k}")
        tune = method == "auto" and target_recall is not None
        if method == "auto":
            method = "exact" if (self.index_spec == "flat" or n <= self.exact_threshold) else "blocked"
        tune = tune and method == "blocked"
        nprobe = DEFAULT_NPROBE if nprobe is None else C.positive_int(nprobe, "nprobe")
        key = (self._version, exclude_self, method, nprobe if method == "blocked" else None)
        with self._lock:
            cached = self._knn_cache
            if cached is not None and cached[0] == key and cached[1] >= k and cached[2] is self._index:
                return cached[3][:, :k].copy(), cached[4][:, :k].copy()
            vec, ids = self._b.vec[:n], self._b.ids[:n]
            rows = None
            if method == "blocked":
                d, rows = self._tuned_blocked(vec, k, nprobe, exclude_self, progress, target_recall if tune else None)
                if rows is None:
                    method = "exact"
            elif method == "exact" and n >= EXACT_GRAPH_MIN_ROWS:
                d, rows = exact_knn_graph(vec, k, self.metric, exclude_self=exclude_self, progress=progress)
            if rows is not None:
                out_d, out_i = d, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
            else:
                out_d = np.empty((n, k), np.float32)
                out_i = np.empty((n, k), np.int64)
                if method == "index":
                    self._ensure_index()
                    if self._index is None:
                        raise ValueError("method: 'index' needs an approximate index (this store searches exactly)")
                index, self._index = self._index, (self._index if method == "index" else None)
                try:
                    with progress_bar(total=n, desc=f"kNN graph k={k}", disable=not progress) as bar:
                        for s in range(0, n, batch_size):
                            e = min(n, s + batch_size)
                            d, i = self._candidates(vec[s:e], k + int(exclude_self))
                            valid = i >= 0
                            if exclude_self:
                                valid &= i != ids[s:e, None]
                            out_d[s:e], out_i[s:e] = first_k_valid(d, i, valid, k)
                            bar.update(e - s)
                finally:
                    self._index = index
            # the graph is reused by every score computed before the next mutation
            self._knn_cache = (key, k, self._index, out_d, out_i)
        return out_d.copy(), out_i.copy()

    def plan_knn(self, k: int, nprobe: int | None = None, target_recall: float = 0.95,
                 exclude_self: bool = True) -> dict[str, Any]:
        """What ``knn(k, method="auto")`` would run on a store past ``exact_threshold``, without
        running it: ``{"method", "nprobe", "recall_estimate", "pair_share"}`` (see :meth:`knn`).

        Example:
            >>> import numpy as np
            >>> store = EmbeddingStore(8, metric="l2")
            >>> _ = store.add(np.random.default_rng(0).normal(size=(2000, 8)).astype("float32"))
            >>> sorted(store.plan_knn(5))
            ['method', 'nprobe', 'pair_share', 'recall_estimate']
        """
        k = C.positive_int(k, "k")
        nprobe = DEFAULT_NPROBE if nprobe is None else C.positive_int(nprobe, "nprobe")
        if k > len(self) - int(exclude_self):
            raise ValueError(f"k: expected at most {len(self) - int(exclude_self)}, got {k}")
        with self._lock:
            return self._knn_plan(self._b.vec[: len(self)], k, nprobe, exclude_self, target_recall)[0]

    def _knn_plan(self, vec: np.ndarray, k: int, nprobe: int, exclude_self: bool,
                  target: float) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        """Within its candidate blocks the blocked search is exact, so the recall at any nprobe is
        known without running it: it is the share of each sampled row's true neighbours that lie in
        the row's nprobe nearest blocks. The smallest nprobe (16, 32, 64 ...) reaching the target
        is priced by the share of all pairs it scores."""
        from .knn import block_plan

        n = len(vec)
        sample = np.random.default_rng(0).choice(n, min(512, n), replace=False)
        _, ex = brute_knn(vec[sample], vec, k + int(exclude_self), self.metric)
        exact = np.stack([r[r != q][:k] if exclude_self else r[:k] for r, q in zip(ex, sample)])
        centroids, assign = block_plan(vec, max(1, n // 256), self.metric)
        n_blocks = len(centroids)
        am = faiss.METRIC_L2 if self.metric != "ip" else faiss_metric(self.metric)
        _, order = faiss.knn(centroids, centroids, n_blocks, metric=am)  # blocks by nearness
        # rank of every block in each sample row's probe order
        rank = np.empty((len(sample), n_blocks), np.int64)
        rank[np.arange(len(sample))[:, None], order[assign[sample]]] = np.arange(n_blocks)[None, :]
        need = rank[np.arange(len(sample))[:, None], assign[exact]]  # probes needed per true neighbour
        p = nprobe
        while True:
            recall = float((need < p).mean())
            if recall >= target or p >= n_blocks:
                break
            p *= 2
        # a scored pair costs ~1.6x a GEMM pair in the blocked engine (its top-k), while the exact
        # engine scores each unordered pair once (0.5 of the ordered pairs, ~1.3x per pair with its
        # bound checks) and prunes more on clustered data: exact wins from ~40% of the pairs
        pair_share = min(1.0, p * 256 / n)
        report = {"method": "exact" if pair_share >= 0.4 else "blocked", "nprobe": p, "recall_estimate": recall,
                  "pair_share": pair_share}
        return report, centroids, assign

    def _tuned_blocked(self, vec: np.ndarray, k: int, nprobe: int, exclude_self: bool, progress: bool,
                       target: float | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Blocked graph whose nprobe is chosen for ``target`` recall (:meth:`_knn_plan`), the
        exact graph when that is predicted cheaper, or ``(_, None)`` to let small stores use faiss."""
        if target is None:
            return blocked_knn(vec, k, self.metric, nprobe=nprobe, exclude_self=exclude_self, progress=progress)
        report, centroids, assign = self._knn_plan(vec, k, nprobe, exclude_self, target)
        self.last_knn_report = report
        if report["method"] == "exact":
            if len(vec) < EXACT_GRAPH_MIN_ROWS:
                return np.empty(0), None
            return exact_knn_graph(vec, k, self.metric, exclude_self=exclude_self, progress=progress,
                                   centroids=centroids, assign=assign)
        return blocked_knn(vec, k, self.metric, nprobe=report["nprobe"], exclude_self=exclude_self,
                           progress=progress, centroids=centroids, assign=assign)

    def kmeans(self, n_clusters: int, seed: int = 0, niter: int = 20, nredo: int = 1,
               spherical: bool | None = None, progress: bool = False) -> KMeansResult:
        """faiss k-means over the stored vectors (spherical under the cosine metric).

        ``nredo`` runs k-means that many times from different seeds and keeps the best objective.
        ``spherical=True`` clusters the L2-normalised vectors and assigns by cosine (distances are
        then ``1 - cos``) whatever the store's metric; the default follows the metric.

        Example:
            >>> import numpy as np
            >>> store = EmbeddingStore(2, metric="l2")
            >>> _ = store.add(np.array([[0, 0], [0, 1], [9, 9], [9, 8]], "float32"))
            >>> km = store.kmeans(2, seed=0)
            >>> bool(km.assignments[0] == km.assignments[1] != km.assignments[2])
            True
        """
        n_clusters = C.positive_int(n_clusters, "n_clusters")
        with self._lock:
            vec = self._b.vec[: self._b.n].copy()
        sph = self.metric == "cosine" if spherical is None else bool(spherical)
        metric = "cosine" if sph else self.metric
        if sph and self.metric != "cosine":
            vec = normalize(vec)
        if n_clusters > vec.shape[0]:
            raise ValueError(f"n_clusters: expected at most the store size {vec.shape[0]}, got {n_clusters}")
        km = faiss.Kmeans(self.dim, n_clusters, niter=C.positive_int(niter, "niter"), seed=int(seed),
                          nredo=C.positive_int(nredo, "nredo"),
                          spherical=sph, verbose=False, min_points_per_centroid=1)
        with progress_bar(total=1, desc=f"k-means k={n_clusters}", disable=not progress) as bar:
            km.train(vec)
            bar.update(1)
        cent = np.ascontiguousarray(km.centroids, np.float32)
        # assignment uses the same metric as the store ("ip" assigns by largest inner product)
        d, a = brute_knn(vec, cent, 1, metric)
        return KMeansResult(cent, a[:, 0].astype(np.int64), d[:, 0])

    # ------------------------------------------------------------------ embedding a dataset
    @classmethod
    def from_model(cls, model: Any, dataset: Any, batch_size: int = 256, device: str = "cpu",
                   progress: bool = True, metric: str = "cosine", index: str = "auto",
                   num_workers: int = 0, collate_fn: Any = None, step: int | None = None,
                   **store_kwargs: Any) -> "EmbeddingStore":
        """Embed every item of a map-style ``dataset`` with ``model`` (eval mode, no grad).

        Items may be ``x`` or ``(x, y, ...)``; when ``y`` is an integer class it becomes the row's
        label. Ids are the dataset indices ``0..len(dataset)-1``. The model's train/eval mode is
        restored afterwards.

        Example:
            >>> store = EmbeddingStore.from_model(backbone, train_set, batch_size=512)  # doctest: +SKIP
        """
        import torch
        from torch.utils.data import DataLoader

        if not hasattr(dataset, "__len__"):
            raise TypeError(f"dataset: expected a map-style dataset with __len__, got {type(dataset).__name__}")
        batch_size = C.positive_int(batch_size, "batch_size")
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
