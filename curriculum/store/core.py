"""The faiss-indexed embedding store: one vector per training sample, keyed by dataset index.

:class:`EmbeddingStore` is a façade over composed parts: :class:`~.rows.Rows` (buffers and the
id map - the truth), :class:`~.index.IndexManager` (which approximate index, build, swap),
:class:`~.search.Search` (search paths), :mod:`.graph` (all-points kNN graph, k-means),
:mod:`.persistence` (files) and :mod:`.embed` (embedding a dataset).

Concurrency model
-----------------
One lock (``RLock``) guards the rows, the id map and the index manager.

* Writers (``add`` / ``update`` / ``remove``) take it for the write and bump :attr:`version`.
* Searches take it for the search itself (milliseconds): a faiss index is not safe against a
  concurrent ``add``.
* Long readers (``knn``, ``kmeans``, ``plan_knn``, the negatives table, index builds) copy a
  :class:`~.rows.Snapshot` under the lock and compute outside it, so writers and searches go on
  meanwhile; their results are keyed by the snapshot's version.
* The background index rebuild is one :class:`~curriculum._util.background.BackgroundTask`: it
  builds from a snapshot outside the lock and installs the new index under the lock in one step,
  replaying rows written meanwhile. Nothing ever waits for it while holding the lock: a
  foreground ``build()`` waits *before* taking the lock, so a rebuild, a refresher and the
  training loop can never deadlock.
* Every public read (``ids``, ``labels``, ``steps``, ``len``, ``vectors``) is taken under the lock
  and is consistent with one version.

Index choice (``index="auto"``): exact search up to ``exact_threshold`` rows (default 100,000),
beyond it ``IVF{nlist},Flat`` with ``nlist = 2**round(log2(4*sqrt(N)))`` and ``nprobe = max(16,
nlist // 64)``; any faiss factory string (``"HNSW32"``, ``"IVF4096,SQ8"`` ...) may be given, with
search parameters in ``index_params`` (``{"nprobe": 64}``, ``{"efSearch": 128}``). The index only
proposes candidates: each is re-scored exactly at the current vectors, so writes are visible to
the next search at once, and a query the index leaves short of ``k`` is answered exactly.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import faiss
import numpy as np

from .._util import checks as C
from .._util.arrays import sorted_unique
from .._util.background import BackgroundTask
from .._util.progress import want
from ..neighbors import METRICS, checked_device, device_knn, first_k_valid, get_metric
from . import graph as G
from . import persistence
from .embed import embed_dataset
from .index import IndexManager, check_params, ivf_of
from .rows import MISSING, Rows, Snapshot
from .search import Search


class EmbeddingStore:
    """One embedding per training sample, searchable through faiss.

    Args:
        dim: vector dimension.
        metric: ``"cosine"`` (vectors are stored L2-normalised), ``"l2"`` or ``"ip"``.
            Distances returned are always *smaller = nearer* (see :mod:`curriculum.neighbors.metric`).
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
        self.metric = C.choice(metric, "metric", tuple(METRICS))
        self._metric = get_metric(metric)
        if not isinstance(index, str) or not index:
            raise TypeError(f"index: expected 'auto', 'flat' or a faiss factory string, got {index!r}")
        if index not in ("auto", "flat"):
            try:  # validate the factory string now, not at the first search
                faiss.index_factory(self.dim, index, self._metric.faiss)
            except Exception as exc:
                raise ValueError(f"index: {index!r} is not a valid faiss factory string for dim={dim} ({exc})") from None
        if index_params is not None and not isinstance(index_params, dict):
            raise TypeError(f"index_params: expected a dict of faiss parameters, got {type(index_params).__name__}")
        self.index_spec = index
        self.exact_threshold = C.positive_int(exact_threshold, "exact_threshold", 0)
        self.rebuild_threshold = C.finite_float(rebuild_threshold, "rebuild_threshold", 0.0, 1.0, low_open=True)
        check_params(self.dim, index, self._metric.faiss, dict(index_params or {}))
        self.index_params = dict(index_params or {})
        self._lock = threading.RLock()
        self._rows = Rows(self.dim)
        self._im = IndexManager(self.dim, self.metric, index, self.exact_threshold, self.rebuild_threshold,
                                self.index_params)
        self._search = Search(self._rows, self._im, self.metric)
        self._rebuild_task = BackgroundTask("index rebuild")
        self._version = 0
        self._knn_cache: tuple | None = None
        self.last_knn_report: dict[str, Any] = {}

    # ------------------------------------------------------------------ reads
    def __len__(self) -> int:
        return self._rows.n

    def __repr__(self) -> str:
        return (f"EmbeddingStore(n={len(self)}, dim={self.dim}, metric={self.metric!r}, "
                f"index={self.index_spec!r}, active={self.active_index!r})")

    def _read(self, name: str) -> np.ndarray:
        with self._lock:
            return self._rows.live(name).copy()

    @property
    def ids(self) -> np.ndarray:
        """Stored ids in row order (a copy)."""
        return self._read("ids")

    @property
    def labels(self) -> np.ndarray:
        """Label of every row in ``ids`` order; ``-1`` where none was given."""
        return self._read("labels")

    @property
    def steps(self) -> np.ndarray:
        """Training step each row's vector was computed at; ``-1`` where unknown."""
        return self._read("steps")

    @property
    def version(self) -> int:
        """Bumped by every write: results computed at one version stay valid until it changes."""
        return self._version

    @property
    def has_labels(self) -> bool:
        """Whether every stored row carries a label (label-aware scores and mining need it)."""
        with self._lock:
            return bool(self._rows.n) and bool((self._rows.live("labels") >= 0).all())

    @property
    def active_index(self) -> str:
        """What the next search uses: ``"exact"`` or the faiss description of the index."""
        return self._im.describe(len(self))

    @property
    def index_info(self) -> dict[str, Any]:
        """The installed approximate index: ``{"spec", "entries", "stale", "nprobe"}`` (empty when exact)."""
        with self._lock:
            if self._im.index is None:
                return {}
            ivf = ivf_of(self._im.index)
            return {"spec": self._im.approx_spec(len(self)), "entries": self._im.entries, "stale": self._im.stale,
                    "nprobe": None if ivf is None else int(ivf.nprobe)}

    def set_search_params(self, **params: float) -> None:
        """Set faiss search parameters (``nprobe=``, ``efSearch=``...) on the installed index and
        keep them for later builds.

        Example:
            >>> s = EmbeddingStore(4, metric="l2", index="IVF4,Flat")
            >>> s.set_search_params(nprobe=2); s.index_params
            {'nprobe': 2}
        """
        with self._lock:
            if self._im.index is not None:
                ps = faiss.ParameterSpace()
                for key, val in params.items():
                    try:
                        ps.set_index_parameter(self._im.index, key, val)
                    except RuntimeError as exc:
                        raise ValueError(f"{key}: not a search parameter of {self.active_index} ({exc})") from None
            self.index_params.update(params)
            self._im.params = self.index_params
            self._im.cache.clear()

    def snapshot(self) -> Snapshot:
        """Every row (vectors, ids, labels, steps) at the current version, unchanged by later writes
        and free to take (copy on write: the store copies its buffers before it changes rows a
        snapshot shows). Read its arrays; never write into them.

        Example:
            >>> import numpy as np
            >>> from curriculum import EmbeddingStore
            >>> store = EmbeddingStore(1, metric="l2"); _ = store.add(np.array([[0.], [1]]))
            >>> snap = store.snapshot(); store.update([0], np.array([[5.]])); _ = store.remove([1])
            >>> snap.vec.ravel().tolist(), store.vectors_of([0]).ravel().tolist()
            ([0.0, 1.0], [5.0])
        """
        with self._lock:
            return self._rows.snapshot(self._version)

    def rows_of(self, ids: Any, name: str = "ids") -> np.ndarray:
        """Row positions of ``ids``; raises ``KeyError`` for ids that are not stored."""
        ids = C.as_ids(ids, name, unique=False)
        with self._lock:
            rows = self._rows.lookup(ids)
        if (rows < 0).any():
            raise KeyError(f"{name}: ids not in the store: {ids[rows < 0][:5].tolist()}")
        return rows

    def labels_of(self, ids: Any) -> np.ndarray:
        """Labels of stored ``ids`` (an array of any shape; ``-1`` for unlabelled rows); raises
        ``KeyError`` for ids that are not stored.

        Example:
            >>> import numpy as np
            >>> s = EmbeddingStore(1, metric="l2"); _ = s.add(np.zeros((3, 1)), labels=[4, 5, 6])
            >>> s.labels_of([[2, 0]]).tolist()
            [[6, 4]]
        """
        return self._column_of(ids, "labels")

    def vectors_of(self, ids: Any) -> np.ndarray:
        """Current vectors of stored ``ids`` (an array of any shape), ``(*ids.shape, dim)``; raises
        ``KeyError`` for ids that are not stored (the same call as on a sharded store).

        Example:
            >>> import numpy as np
            >>> s = EmbeddingStore(2, metric="l2"); _ = s.add(np.array([[1., 2], [3, 4]]), ids=[7, 9])
            >>> s.vectors_of([[9]]).tolist()
            [[[3.0, 4.0]]]
        """
        return self._column_of(ids, "vec")

    def steps_of(self, ids: Any) -> np.ndarray:
        """Training step each of the stored ``ids``' vectors was computed at (``-1`` unknown).

        Example:
            >>> import numpy as np
            >>> s = EmbeddingStore(1, metric="l2"); _ = s.add(np.zeros((2, 1)), step=5)
            >>> s.steps_of([1]).tolist()
            [5]
        """
        return self._column_of(ids, "steps")

    def _column_of(self, ids: Any, column: str) -> np.ndarray:
        arr = C.to_numpy(ids, "ids")
        rows = self.rows_of(np.ravel(arr), "ids")
        with self._lock:
            col = getattr(self._rows, column)
            return col[rows].reshape(*arr.shape, *col.shape[1:])

    def contains(self, ids: Any) -> np.ndarray:
        """Boolean mask: which of ``ids`` are stored."""
        ids = C.as_ids(ids, "ids", unique=False)
        with self._lock:
            return self._rows.lookup(ids) >= 0

    def vectors(self, ids: Any = None) -> np.ndarray:
        """Current vectors of ``ids`` (all rows when None), as a float32 copy."""
        with self._lock:
            if ids is None:
                return self._rows.live("vec").copy()
            return self._rows.vec[self.rows_of(ids)]

    def staleness(self, current_step: int) -> np.ndarray:
        """Steps since each row's vector was computed (``-1`` where the step is unknown)."""
        current_step = C.positive_int(current_step, "current_step", 0)
        s = self.steps
        return np.where(s >= 0, current_step - s, -1)

    # ------------------------------------------------------------------ writes
    def _prep(self, vectors: Any, name: str = "vectors") -> np.ndarray:
        return self._metric.prepare(C.as_vectors(vectors, name, self.dim), name)

    def add(self, vectors: Any, ids: Any = None, labels: Any = None, step: int | None = None) -> np.ndarray:
        """Add rows. ``ids`` default to ``max id + 1 ..``; returns the ids added.

        Labels must be non-negative integers; ``step`` is the training step the vectors were
        computed at (kept for staleness). Nothing is added if any argument is invalid.
        """
        v = self._prep(vectors)
        n = v.shape[0]
        lab = C.as_labels(labels, "labels", n) if labels is not None else np.full(n, MISSING, np.int64)
        st = MISSING if step is None else C.positive_int(step, "step", 0)
        given = None if ids is None else C.as_ids(ids, "ids", n=n)
        with self._lock:
            ids_arr = given if given is not None else np.arange(self._rows.next_id(), self._rows.next_id() + n)
            if n == 0:
                return ids_arr
            clash = self._rows.lookup(ids_arr) >= 0
            if clash.any():
                raise ValueError(f"ids: expected ids not yet in the store, got existing ids "
                                 f"{ids_arr[clash][:5].tolist()} (use update() to replace vectors)")
            self._version += 1
            self._rows.append(v, ids_arr, lab, st, self._version)
            self._im.on_write(v, ids_arr, 0)
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
            self._version += 1
            self._rows.write(rows, v, lab, st, self._version)
            self._im.on_write(v, ids_arr, len(rows))
        self._maybe_rebuild()

    def remove(self, ids: Any) -> None:
        """Remove rows by id; they vanish from every later search."""
        ids_arr = C.as_ids(ids, "ids")
        with self._lock:
            rows = self.rows_of(ids_arr)
            self._version += 1
            self._rows.delete(rows)
            self._im.on_remove(len(rows))
        self._maybe_rebuild()

    # ------------------------------------------------------------------ index lifecycle
    @property
    def stale_fraction(self) -> float:
        """Share of approximate-index entries that no longer match a live row's vector."""
        return self._im.stale_fraction

    def _maybe_rebuild(self) -> None:
        if self._im.needs_rebuild():
            self.rebuild(background=True)

    def _build_and_install(self, progress: bool | None) -> None:
        """Build from a snapshot outside the lock; install under it (replaying later writes)."""
        with self._lock:
            n = len(self)
            if not self._im.wants_approx(n):
                self._im.drop()
                return
            snap, spec = self._rows.snapshot(self._version), self._im.approx_spec(n)
        index = self._im.build(snap.vec, snap.ids, spec, want(progress, len(snap.ids)))
        with self._lock:
            self._im.install(index, self._rows, snap.version)

    def build(self, progress: bool | None = None) -> None:
        """Bring the approximate index up to date now: wait for a running background rebuild, then
        build unless the installed index is current (nothing stale). Exact stores drop the index."""
        self._rebuild_task.wait()  # outside the lock: the rebuild installs under it
        with self._lock:
            fresh = self._im.current(len(self)) and self._im.stale == 0
        if not fresh:
            self._build_and_install(progress)

    def rebuild(self, background: bool = False, progress: bool | None = None) -> bool:
        """Rebuild the approximate index from the current vectors.

        With ``background=True`` the new index is built in a thread while searches keep using
        the old one, and swapped in when ready (rows written meanwhile are added to it first);
        returns whether a build started (False while one is already running). In the
        foreground, waits for a running background build, then builds. A failed background
        build is re-raised by the next ``rebuild``, ``build``, ``search`` or :meth:`wait_rebuild`.
        """
        if background:  # a bar from a background thread would cut into the training loop's output
            self._rebuild_task.check()
            return self._rebuild_task.start(lambda: self._build_and_install(bool(progress)))
        self._rebuild_task.wait()
        self._build_and_install(progress)
        return True

    def wait_rebuild(self, timeout: float | None = None) -> None:
        """Block until a background rebuild (if any) is done; re-raise its error if it failed."""
        self._rebuild_task.wait(timeout)

    def _ensure_index(self) -> None:
        """Build the index a search needs (first search past the threshold), outside the lock."""
        self._rebuild_task.check()
        if not self._im.current(len(self)) and not self._rebuild_task.running:
            self.build()

    # ------------------------------------------------------------------ search
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
                query's label); exact stores and graph indexes search exactly.

        Returns:
            ``(distances, ids)``, both ``(n, k)``, nearest first; ``inf`` / ``-1`` where fewer
            than ``k`` rows qualify (an empty store returns only those).
        """
        k = C.positive_int(k, "k")
        q = self._prep(queries, "queries")
        excl = _exclusions(exclude_ids, q.shape[0])
        labs = None if exclude_labels is None else C.as_labels(exclude_labels, "exclude_labels", q.shape[0])
        self._ensure_index()
        with self._lock:
            return self._search.search(q, k, excl, labs, self._version)

    def rescore(self, queries: Any, candidate_ids: Any, k: int, exclude_labels: Any = None,
                exclude_ids: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest of each query's ``candidate_ids`` (``(n, m)``, ``-1`` pads) at the
        *current* vectors and labels: removed ids, rows labelled ``exclude_labels[i]`` and
        ``exclude_ids`` dropped. Candidates precomputed elsewhere (a negatives table) stay exact.

        Example:
            >>> import numpy as np
            >>> s = EmbeddingStore(1, metric="l2"); _ = s.add(np.array([[0.0], [2.0], [1.0]]))
            >>> s.rescore(np.array([[0.0]]), np.array([[1, 2]]), k=1)[1].tolist()
            [[2]]
        """
        q = self._prep(queries, "queries")
        cand = C.to_numpy(candidate_ids, "candidate_ids")
        if cand.ndim != 2 or cand.shape[0] != q.shape[0] or (cand.size and not np.issubdtype(cand.dtype, np.integer)):
            raise ValueError(f"candidate_ids: expected an integer array of shape ({q.shape[0]}, m), got {cand.shape} "
                             f"{cand.dtype}")
        k = C.positive_int(k, "k")
        labs = None if exclude_labels is None else C.as_labels(exclude_labels, "exclude_labels", q.shape[0])
        excl = _exclusions(exclude_ids, q.shape[0])
        with self._lock:
            d, ids = self._search.rerank(q, cand.astype(np.int64), cand.shape[1], labs)
        ok = (ids >= 0) & ~Search.excluded(ids, excl)
        return first_k_valid(d, ids, ok, k)

    # ------------------------------------------------------------------ graph and clusters
    def knn(self, k: int, exclude_self: bool = True, batch_size: int = 8192, progress: bool | None = None,
            method: str = "auto", nprobe: int | None = None,
            target_recall: float | None = 0.95, device: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The all-points kNN graph: ``k`` nearest stored ids of every stored row.

        Row ``i`` of the result belongs to ``store.ids[i]`` (of the version it was computed at);
        returns ``(distances, ids)``, each ``(N, k)``. The last graph is cached until the store
        changes, so several scores share one computation.

        Methods: ``"exact"`` (below 50,000 rows faiss BLAS search in query chunks of
        ``batch_size``; from there :func:`curriculum.neighbors.exact_knn_graph`, which scores each
        unordered pair once and skips pairs of blocks the triangle inequality rules out),
        ``"index"`` (through the approximate index, as ``search`` does), ``"blocked"`` (score each
        ~256-row cluster against its ``nprobe`` nearest clusters with one matrix product - see
        :func:`curriculum.neighbors.blocked_knn`), ``"descent"`` (NN-descent from a random-projection
        forest, on a PCA projection above 128 dimensions, final distances exact - see
        :func:`curriculum.neighbors.descent_knn`). ``"auto"``: exact below 5,000 rows (and up to
        ``exact_threshold``) or with ``index="flat"``; from there the recall the blocked graph would
        reach is measured on 512 sampled rows (:func:`curriculum.neighbors.plan_recall`) and the
        smallest nprobe (>= ``nprobe`` when given) meeting ``target_recall`` is found (from 20,000
        rows first on blocks of ~1,024 rows, a tenth of the cost: where even those need twice the
        pairs per row that choose NN-descent, it runs without the finer plan). Where it
        needs fewer than 2,500 pairs per row (k-means blocks hold the neighbourhoods: clustered
        data) the blocked graph runs at that nprobe, or exact search when it would score 40% of all
        pairs; from 2,500 (real text and image embeddings) and 20,000 rows NN-descent runs and its
        recall is measured on 512 sampled rows - short of ``target_recall``, it runs again from the lists
        it found with longer lists (1.25x when it came within 0.05, else 2x; at most three runs), then
        the blocked plan replaces it where that reaches the target under 40% of all pairs, else the
        exact graph (``descent_recall`` in the report). ``store.last_knn_report`` says what ran
        (method, nprobe, recall estimate or measurement, pairs scored); :meth:`plan_knn` says it
        before running. ``device`` (a torch device such as ``"cuda"``; with ``method`` "auto" or
        "exact"): the exact graph is computed there by chunked matrix products and top-k
        (:func:`curriculum.neighbors.device_knn`) and returned as numpy.

        Example:
            >>> import numpy as np
            >>> from curriculum import EmbeddingStore
            >>> store = EmbeddingStore(1, metric="l2"); _ = store.add(np.array([[0.], [1.], [3.]], np.float32))
            >>> store.knn(1, device="cpu")[1].ravel().tolist(), store.last_knn_report["method"]
            ([1, 0, 1], 'exact')
        """
        k = C.positive_int(k, "k")
        batch_size = C.positive_int(batch_size, "batch_size")
        method = C.choice(method, "method", ("auto", "exact", "index", "blocked", "descent"))
        target = None if target_recall is None else C.finite_float(target_recall, "target_recall", 0.0, 1.0,
                                                                     low_open=True)
        floor = 1 if nprobe is None else C.positive_int(nprobe, "nprobe")
        snap = self.snapshot()
        n = len(snap)
        if k > n - int(bool(exclude_self)):
            raise ValueError(f"k: expected at most {n - int(bool(exclude_self))} (store size"
                             f"{' minus self' if exclude_self else ''}), got {k}")
        if device is not None:
            return self._device_knn(snap, k, bool(exclude_self), method, device)
        tune = method == "auto" and target is not None
        if method == "auto":
            small = n <= self.exact_threshold and n < G.AUTO_PLAN_MIN_ROWS
            method = "exact" if (self.index_spec == "flat" or small) else "blocked"
        tune = tune and method == "blocked"
        nprobe = floor if tune or nprobe is not None else G.DEFAULT_NPROBE
        # a tuned graph is keyed by its target too: knn(k, target_recall=0.8) must not answer knn(k) later
        key = (snap.version, bool(exclude_self), method, nprobe if method == "blocked" else None,
               target if tune else None)
        cached = self._cached_knn(key, k)
        if cached is not None:
            return cached
        if method == "index":
            self._ensure_index()
            if self._im.index is None:
                raise ValueError("method: 'index' needs an approximate index (this store searches exactly)")
        d, ids, report = G.graph(snap, k, self.metric, method, nprobe, bool(exclude_self), want(progress, len(snap.ids)),
                                 target if tune else None, batch_size, self._locked_candidates)
        self.last_knn_report = report  # what ran: method, nprobe, recall estimate, pairs scored
        self._knn_cache = (key, k, d, ids)  # reused by every score computed before the next write
        return d.copy(), ids.copy()

    def _device_knn(self, snap: Any, k: int, exclude_self: bool, method: str,
                    device: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`knn` on a torch ``device``: the exact graph (cached like the others)."""
        if method not in ("auto", "exact"):
            raise ValueError(f"method: expected 'auto' or 'exact' with device={device!r} (the graph on a device "
                             f"is exact), got {method!r}")
        dev = checked_device(device)
        key = (snap.version, exclude_self, "exact", None, None)
        cached = self._cached_knn(key, k)
        if cached is not None:
            return cached
        def others(kk: int) -> tuple[np.ndarray, np.ndarray]:
            d, rows = device_knn(snap.vec, kk, self.metric, dev, True)
            return d, snap.ids[rows]
        d, found = others(k) if exclude_self else G.graph_with_self(snap.ids, snap.vec, k, len(snap), self.metric,
                                                                    others)
        self._knn_cache = (key, k, d, found)
        self.last_knn_report = {"method": "exact", "device": str(dev), "pairs_scored": len(snap) ** 2}
        return d.copy(), self._knn_cache[3].copy()

    def cached_knn(self, k: int, version: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached all-points graph's first ``k`` columns, ``(distances, ids)``, if :meth:`knn`
        left one of at least ``k`` neighbours (self excluded; exact or tuned to a recall target)
        at ``version`` (default: the current one), else None. Nothing is computed.

        Example:
            >>> import numpy as np
            >>> from curriculum import EmbeddingStore
            >>> store = EmbeddingStore(1, metric="l2"); _ = store.add(np.array([[0.], [1.], [3.]], np.float32))
            >>> store.cached_knn(1) is None
            True
            >>> _ = store.knn(2); store.cached_knn(1)[1].ravel().tolist()
            [1, 0, 1]
            >>> _ = store.add(np.array([[9.]], np.float32)); store.cached_knn(1) is None
            True
        """
        k = C.positive_int(k, "k")
        with self._lock:
            version = self._version if version is None else int(version)
        cached = self._knn_cache  # (key, k, distances, ids); key: version, exclude_self, method, nprobe, target
        if cached is None or cached[1] < k or cached[0][:2] != (version, True):
            return None
        if cached[0][2] != "exact" and cached[0][4] is None:  # an untuned approximate graph: recall unknown
            return None
        return cached[2][:, :k].copy(), cached[3][:, :k].copy()

    def _cached_knn(self, key: tuple, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached graph's first ``k`` columns (copies) if it was computed with at least ``k``
        neighbours for ``key`` or for a request it answers as well (:func:`_serves`), else None."""
        cached = self._knn_cache
        if cached is not None and cached[1] >= k and (cached[0] == key or _serves(cached[0], key)):
            return cached[2][:, :k].copy(), cached[3][:, :k].copy()
        return None

    def _locked_candidates(self, q: np.ndarray, kf: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            return self._search.candidates(q, kf)

    def plan_knn(self, k: int, nprobe: int | None = None, target_recall: float = 0.95,
                 exclude_self: bool = True) -> dict[str, Any]:
        """What ``knn(k, method="auto")`` would run on a store of 5,000 rows or more, without
        running it: ``{"method", "nprobe", "recall_estimate", "pair_share", "plan_block_rows"}``
        (see :meth:`knn`; the estimate and share are the blocked plan's, also when NN-descent is
        chosen - its recall is measured when it runs; ``plan_block_rows``: the size of the blocks
        of the plan that decided, ~256, or ~1,024 where the coarse plan chose NN-descent).

        Example:
            >>> import numpy as np
            >>> from curriculum import EmbeddingStore
            >>> store = EmbeddingStore(8, metric="l2")
            >>> rng = np.random.default_rng(0)
            >>> _ = store.add(rng.normal(size=(20_000, 8)).astype("float32"))   # noise: blocks hold no neighbourhood
            >>> plan = store.plan_knn(5)
            >>> plan["method"], plan["pair_share"] * 20_000 > 2500   # blocks would need > 2,500 pairs per row
            ('descent', True)
        """
        k = C.positive_int(k, "k")
        nprobe = 1 if nprobe is None else C.positive_int(nprobe, "nprobe")
        target = C.finite_float(target_recall, "target_recall", 0.0, 1.0, low_open=True)
        snap = self.snapshot()
        if k > len(snap) - int(bool(exclude_self)):
            raise ValueError(f"k: expected at most {len(snap) - int(bool(exclude_self))}, got {k}")
        return G.knn_plan(snap.vec, k, self.metric, nprobe, bool(exclude_self), target)[0]

    def kmeans(self, n_clusters: int, seed: int = 0, niter: int = 20, nredo: int = 1,
               spherical: bool | None = None, progress: bool | None = None) -> G.KMeansResult:
        """k-means over the stored vectors (spherical under the cosine metric): k-means++ seeding, then
        Lloyd steps by torch products on a sample of up to 256 rows a centroid; every row assigned.

        ``nredo`` runs k-means that many times from different seeds and keeps the best objective.
        ``spherical=True`` clusters the L2-normalised vectors and assigns by cosine (distances are
        then ``1 - cos``) whatever the store's metric; the default follows the metric.

        Example:
            >>> import numpy as np
            >>> from curriculum import EmbeddingStore
            >>> store = EmbeddingStore(2, metric="l2")
            >>> _ = store.add(np.array([[0, 0], [0, 1], [9, 9], [9, 8]], "float32"))
            >>> km = store.kmeans(2, seed=0)
            >>> bool(km.assignments[0] == km.assignments[1] != km.assignments[2])
            True
        """
        n_clusters = C.positive_int(n_clusters, "n_clusters")
        niter, nredo = C.positive_int(niter, "niter"), C.positive_int(nredo, "nredo")
        vec = self.snapshot().vec
        if n_clusters > vec.shape[0]:
            raise ValueError(f"n_clusters: expected at most the store size {vec.shape[0]}, got {n_clusters}")
        sph = self.metric == "cosine" if spherical is None else bool(spherical)
        return G.kmeans(vec, self.metric, n_clusters, seed, niter, nredo, sph, want(progress, len(vec)))

    # ------------------------------------------------------------------ embedding a dataset
    @classmethod
    def from_model(cls, model: Any, dataset: Any, batch_size: int = 256, device: Any = None,
                   progress: bool | None = None, metric: str = "cosine", index: str = "auto",
                   num_workers: int = 0, collate_fn: Any = None, step: int | None = None,
                   input_key: str | None = None, label_key: str | None = None,
                   **store_kwargs: Any) -> "EmbeddingStore":
        """Embed every item of a map-style ``dataset`` with ``model`` (eval mode, no grad).

        Items may be ``x`` or ``(x, y, ...)``; when ``y`` is an integer class it becomes the row's
        label. Items that are dicts (a Hugging Face ``datasets.Dataset`` with
        ``.with_format("torch")``) give the model ``item[input_key]`` and the label
        ``item[label_key]`` (default ``"label"`` or ``"labels"`` when present). Ids are the dataset indices ``0..len(dataset)-1``. The model's train/eval mode is
        restored afterwards. Batches go to ``device``, by default the device of the model's first
        parameter (a model on the GPU embeds on the GPU), else the CPU.

        Example:
            >>> store = EmbeddingStore.from_model(backbone, train_set, batch_size=512)  # doctest: +SKIP
            >>> store = EmbeddingStore.from_model(net, hf_ds.with_format("torch"), input_key="pixel_values")  # doctest: +SKIP
        """
        return embed_dataset(cls, model, dataset, batch_size, device, progress, metric, index, num_workers,
                             collate_fn, step, store_kwargs, input_key, label_key)

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
        extra_arrays = persistence.check_extra(extra)
        with self._lock:
            snap = self._rows.snapshot(self._version)
            header = {"format": persistence.FORMAT_NAME, "version": persistence.FORMAT_VERSION, "dim": self.dim,
                      "metric": self.metric, "index": self.index_spec, "exact_threshold": self.exact_threshold,
                      "rebuild_threshold": self.rebuild_threshold, "index_params": self.index_params,
                      "n": len(snap)}
            index = self._im.index if self._im.index is not None and self._im.stale == 0 else None
            index = None if index is None else faiss.clone_index(index)
        arrays = {"vectors": snap.vec, "ids": snap.ids, "labels": snap.labels, "steps": snap.steps}
        persistence.write(path, header, {**arrays, **extra_arrays}, index)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EmbeddingStore":
        """Load a store written by :meth:`save`. A truncated, foreign or inconsistent file raises
        ``ValueError`` naming the field and the file (see :mod:`curriculum.store.persistence`)."""
        path = os.fspath(path)
        header, arrays, index = persistence.read(path)
        try:
            store = cls(header["dim"], metric=header["metric"], index=header["index"],
                        exact_threshold=header["exact_threshold"], rebuild_threshold=header["rebuild_threshold"],
                        index_params=header.get("index_params"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"header: {path!r} holds invalid settings ({exc})") from None
        store._rows.load(arrays["vectors"].astype(np.float32), arrays["ids"].astype(np.int64), arrays["labels"].astype(np.int64),
                         arrays["steps"].astype(np.int64))
        if index is not None:
            store._im.install(index, store._rows, since_version=0)
        return store


def _exclusions(exclude_ids: Any, n_queries: int) -> np.ndarray | None:
    """``exclude_ids`` validated: a sorted unique 1-D array, or a per-query ``(n, m)`` int64 matrix."""
    if exclude_ids is None:
        return None
    excl = C.to_numpy(exclude_ids, "exclude_ids")
    if excl.ndim != 2:
        return sorted_unique(C.as_ids(excl, "exclude_ids", unique=False))
    if excl.shape[0] != n_queries:
        raise ValueError(f"exclude_ids: expected {n_queries} rows (one per query), got {excl.shape[0]}")
    if excl.size and not np.issubdtype(excl.dtype, np.integer):
        raise TypeError(f"exclude_ids: expected integer ids, got dtype {excl.dtype}")
    return excl.astype(np.int64)


def _serves(have: tuple, want: tuple) -> bool:
    """Whether a graph cached under key ``have`` answers a request keyed ``want`` (same store
    version and self-exclusion): the exact graph answers an exact or recall-tuned request; a
    tuned graph a tuned request of a recall target no higher. (Keys: version, exclude_self,
    method, nprobe, target.)"""
    if have[:2] != want[:2]:
        return False
    if have[2] == "exact":
        return want[2] == "exact" or want[4] is not None
    return have[4] is not None and want[4] is not None and have[2] == want[2] and want[4] <= have[4]


__all__ = ['EmbeddingStore']
