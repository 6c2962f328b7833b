"""The store's approximate index: which one, building it, keeping it current, swapping it.

The index only *proposes candidates*; the rows (:mod:`.rows`) are the truth, so an updated row
just gains a fresh entry (the old one turns *stale*) and a removed row's entry is dropped by the
re-rank. Past ``rebuild_threshold`` stale entries, the store rebuilds from a snapshot in one
:class:`~curriculum._util.background.BackgroundTask` and installs the new index with
:meth:`IndexManager.install` (under the store's lock, replaying rows written meanwhile).

An IVF index over a flat quantizer gets its centroids from :func:`~curriculum.neighbors.kmeans`
and its rows' lists from :func:`~curriculum.neighbors.nearest_rows` (torch products): faiss's
k-means and assignment run the OpenBLAS bundled with its wheel, which on a CPU it does not know
falls back to generic kernels (faiss-cpu 1.15.1 on the project's machine: ~33 GFLOP/s against
torch's 200; :mod:`curriculum._util.blas`) - the IVF4096 index of 1M x 128 rows took 99 s there,
30 s now.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from .._util.progress import progress_bar
from ..neighbors import get_metric
from ..neighbors.kernels import nearest_rows
from ..neighbors.kmeans import kmeans
from .rows import Rows

COARSE_NITER = 10          # Lloyd steps of an IVF index's coarse k-means (faiss's IVF training runs 10)
PREASSIGN_FROM = 4096      # rows added at once from which their lists are assigned by torch products


def auto_nlist(n: int) -> int:
    """Inverted lists of the ``auto`` IVF index for ``n`` rows: ``2**round(log2(4 sqrt(n)))``."""
    return int(2 ** round(math.log2(max(4.0 * math.sqrt(max(n, 1)), 16))))


def ivf_of(index: Any) -> Any:
    """The IVF index inside ``index`` when it is one (``None`` for HNSW, flat, ...)."""
    return faiss.try_extract_index_ivf(index) if index is not None else None


def check_params(dim: int, spec: str, faiss_metric: int, params: dict[str, Any]) -> None:
    """Raise a ``ValueError`` naming the first of ``params`` that faiss cannot set on an index of
    ``spec`` (``"auto"``: an IVF index; ``"flat"`` takes none and ignores them), at construction
    instead of at the first search.

    Example:
        >>> import faiss
        >>> check_params(8, "HNSW16", faiss.METRIC_L2, {"efSearch": 64})
        >>> check_params(8, "HNSW16", faiss.METRIC_L2, {"nprobe": 4})
        Traceback (most recent call last):
        ...
        ValueError: index_params: expected search parameters of 'HNSW16' (as faiss's ParameterSpace sets them), got 'nprobe' = 4
    """
    if spec == "flat" or not params:
        return
    probe = faiss.index_factory(dim, "IVF16,Flat" if spec == "auto" else spec, faiss_metric)
    space = faiss.ParameterSpace()
    for key, value in params.items():
        try:
            space.set_index_parameter(probe, str(key), float(value))
        except Exception:
            raise ValueError(f"index_params: expected search parameters of {spec!r} (as faiss's ParameterSpace "
                             f"sets them), got {key!r} = {value!r}") from None


def _flat_quantizer(index: Any) -> Any:
    """The coarse quantizer of ``index`` when ``index`` itself is an IVF index (no transform or
    refinement around it) over a flat (exhaustive) quantizer, else ``None``."""
    ivf = None if index is None else faiss.downcast_index(index)
    if not isinstance(ivf, faiss.IndexIVF):
        return None
    quantizer = faiss.downcast_index(ivf.quantizer)
    return quantizer if isinstance(quantizer, faiss.IndexFlat) else None


def train_quantizer(index: Any, sample: np.ndarray, metric: str, seed: int = 0) -> bool:
    """Give an untrained IVF index over a flat quantizer ``nlist`` centroids of ``sample`` (k-means
    seeded by ``seed``, :data:`COARSE_NITER` steps; unit-norm unless ``metric`` is l2, as faiss's
    IVF training does for inner products); ``index.train`` then keeps them and trains only its codes.
    False (nothing done) for other indexes (:func:`_flat_quantizer`).

    Example:
        >>> import faiss, numpy as np
        >>> index = faiss.index_factory(8, "IVF16,Flat")
        >>> train_quantizer(index, np.random.default_rng(0).normal(size=(800, 8)).astype("float32"), "l2")
        True
        >>> index.quantizer.ntotal
        16
    """
    quantizer = _flat_quantizer(index)
    if quantizer is None or quantizer.ntotal:
        return False
    nlist = faiss.downcast_index(index).nlist
    centroids = kmeans(sample, nlist, spherical=metric != "l2", seed=seed, niter=COARSE_NITER)
    quantizer.add(np.ascontiguousarray(centroids, np.float32))
    return True


def add_rows(index: Any, vec: np.ndarray, ids: np.ndarray) -> None:
    """``index.add_with_ids(vec, ids)``; into an IVF index over a flat quantizer, from
    :data:`PREASSIGN_FROM` rows, with each row's list (its nearest centroid by the quantizer's
    metric) found by torch products and handed to faiss (``add_core``; not into fast-scan lists).

    Example:
        >>> import faiss, numpy as np
        >>> x = np.random.default_rng(0).normal(size=(5000, 8)).astype("float32")
        >>> index = faiss.index_factory(8, "IVF16,Flat"); index.train(x)
        >>> add_rows(index, x, np.arange(5000)); index.ntotal
        5000
    """
    vec = np.ascontiguousarray(vec, np.float32)
    ids = np.ascontiguousarray(ids, np.int64)
    quantizer = _flat_quantizer(index)
    if quantizer is not None and len(vec) >= PREASSIGN_FROM:
        ivf = faiss.downcast_index(index)
        if not isinstance(ivf, faiss.IndexIVFFastScan):  # fast-scan lists hold packed blocks add_core corrupts
            centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
            metric = "l2" if quantizer.metric_type == faiss.METRIC_L2 else "ip"
            lists = np.ascontiguousarray(nearest_rows(vec, centroids, metric, distances=False)[1][:, 0], np.int64)
            ivf.add_core(len(vec), faiss.swig_ptr(vec), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
            return
    index.add_with_ids(vec, ids)


class IndexManager:
    """Index choice, build and bookkeeping; holds no lock (the store's lock guards it)."""

    def __init__(self, dim: int, metric: str, spec: str, exact_threshold: int, rebuild_threshold: float,
                 params: dict[str, float]) -> None:
        self.dim, self.metric, self.spec = dim, metric, spec
        self.exact_threshold, self.rebuild_threshold = exact_threshold, rebuild_threshold
        self.params = params
        self.index: Any = None
        self.entries = 0
        self.stale = 0
        self.cache: dict[tuple, Any] = {}   # per-index selectors and per-list label counts

    # ------------------------------------------------------------------ choice
    def wants_approx(self, n: int) -> bool:
        if self.spec == "flat":
            return False
        return n > self.exact_threshold if self.spec == "auto" else True

    def approx_spec(self, n: int) -> str:
        if self.spec != "auto":
            return self.spec
        return f"IVF{auto_nlist(n)},Flat"

    def describe(self, n: int) -> str:
        return self.approx_spec(n) if self.wants_approx(n) else "exact"

    @property
    def stale_fraction(self) -> float:
        return self.stale / self.entries if self.entries else 0.0

    def needs_rebuild(self) -> bool:
        return self.index is not None and self.stale_fraction > self.rebuild_threshold

    def current(self, n: int) -> bool:
        """Whether the installed index serves ``n`` rows without a build."""
        return (self.index is not None) == self.wants_approx(n)

    # ------------------------------------------------------------------ build and install
    def build(self, vec: np.ndarray, ids: np.ndarray, spec: str, progress: bool) -> Any:
        """A new faiss index over ``vec`` / ``ids`` (no store state is touched)."""
        index = faiss.index_factory(self.dim, spec, get_metric(self.metric).faiss)
        params = dict(self.params)
        ivf = ivf_of(index)
        if self.spec == "auto" and ivf is not None and "nprobe" not in params:
            params["nprobe"] = max(16, ivf.nlist // 64)
        with progress_bar(total=3, desc=f"building {spec}", disable=not progress) as bar:
            if not index.is_trained:
                if ivf is not None and vec.shape[0] < ivf.nlist:
                    raise ValueError(f"index: {spec!r} needs at least {ivf.nlist} vectors to train, "
                                     f"the store has {vec.shape[0]}")
                n_train = min(vec.shape[0], max(64 * (ivf.nlist if ivf is not None else 256), 50_000))
                pick = np.random.default_rng(0).choice(vec.shape[0], n_train, replace=False)
                sample = np.ascontiguousarray(vec if n_train >= vec.shape[0] else vec[np.sort(pick)])
                train_quantizer(index, sample, self.metric)
                index.train(sample)  # what else the index codes (PQ, SQ); a quantizer set above is kept
            bar.update(1)
            ps = faiss.ParameterSpace()
            for key, val in params.items():
                ps.set_index_parameter(index, key, val)
            bar.update(1)
            if ivf is None or isinstance(faiss.downcast_index(index), faiss.IndexRefine):
                index = faiss.IndexIDMap(index)  # indexes that keep no ids of their own
            add_rows(index, vec, ids)
            bar.update(1)
        return index

    def install(self, index: Any, rows: Rows, since_version: int) -> None:
        """Swap ``index`` in (call under the store's lock): rows written after ``since_version``
        are added first, so the new index misses nothing."""
        changed = rows.live("version") > since_version
        if changed.any():
            add_rows(index, rows.live("vec")[changed], rows.live("ids")[changed])
        self.index = index
        self.entries = int(index.ntotal)
        self.stale = max(self.entries - rows.n, 0)
        self.cache.clear()

    def drop(self) -> None:
        self.index, self.entries, self.stale = None, 0, 0
        self.cache.clear()

    # ------------------------------------------------------------------ writes
    def on_write(self, vec: np.ndarray, ids: np.ndarray, replaced: int) -> None:
        """Rows added or updated: a fresh entry each; ``replaced`` old entries turn stale."""
        if self.index is not None:
            add_rows(self.index, vec, ids)
            self.entries += len(ids)
            self.stale += replaced

    def on_remove(self, count: int) -> None:
        if self.index is not None:
            self.stale += count


__all__ = ['auto_nlist', 'ivf_of', 'check_params', 'train_quantizer', 'add_rows', 'IndexManager']
