"""Global hard-sample mining over the whole :class:`~curriculum.EmbeddingStore` (or every shard
of a :class:`~curriculum.store.ShardedStore`): the hardest negatives / positives / semi-hard
negatives of a batch of anchors, through the store's faiss search or a per-epoch negatives table
built by the blocked engine or an other-label NN-descent. Re-exported by :mod:`curriculum.mining`.

Distances follow the store's convention (smaller = nearer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._util import checks as C
from .._util.arrays import sorted_unique
from .._util.background import BackgroundTask
from .._util.progress import want
from ..store import EmbeddingStore, ShardedStore


@dataclass(frozen=True)
class Mined:
    """Global mining result for ``B`` anchors: ``(B, k)`` dataset ids (``-1`` where fewer qualify),
    their distances to the anchor, and the training step each returned embedding was computed at
    (``-1`` unknown) - its staleness under a drifting encoder.

    Example:
        >>> import numpy as np
        >>> store = EmbeddingStore(1, metric="l2"); _ = store.add(np.array([[0.], [1], [5]]), labels=[0, 1, 1])
        >>> m = HardNegativeMiner(store, k=1).negatives([0])
        >>> m.ids.tolist(), m.distances.tolist()
        ([[1]], [[1.0]])
    """

    ids: np.ndarray
    distances: np.ndarray
    steps: np.ndarray

    def triplets(self, anchors: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flatten into ``(anchor, positive, negative)`` dataset-id triplets (one per valid negative)."""
        r, c = np.nonzero(self.ids >= 0)
        return np.asarray(anchors)[r], np.asarray(positives)[r], self.ids[r, c]


class HardNegativeMiner:
    """Hardest negatives / positives / semi-hard negatives over the whole store, through faiss.

    Args:
        store: the :class:`~curriculum.EmbeddingStore` (labels needed unless ``labels=False``), or a
            :class:`~curriculum.store.ShardedStore`: then every method is collective (every rank
            calls it with its own batch of anchors; the search runs over all shards, the table is
            built shard-wise), and a labelled store needs each anchor's label (``labels=`` or
            stored ``anchor_ids``).
        k: results per anchor.
        exclude_batch: also exclude the ids of the other anchors in the same call.
        duplicate_threshold: label-free (SSL) mode only - skip store entries whose cosine
            similarity to the anchor exceeds this (near-duplicates are the same object, not negatives).

    Example:
        >>> import numpy as np
        >>> store = EmbeddingStore(1, metric="l2")
        >>> _ = store.add(np.array([[0.0], [1.0], [1.5], [4.0]]), labels=[0, 0, 1, 1])
        >>> HardNegativeMiner(store, k=2).negatives([0]).ids.tolist()   # nearest other-label ids
        [[2, 3]]
    """

    def __init__(self, store: EmbeddingStore | ShardedStore, k: int = 20, exclude_batch: bool = True,
                 duplicate_threshold: float | None = None) -> None:
        if not isinstance(store, (EmbeddingStore, ShardedStore)):
            raise TypeError(f"store: expected an EmbeddingStore or a ShardedStore, got {type(store).__name__}")
        self.store = store
        self._sharded = isinstance(store, ShardedStore)
        self.k = C.positive_int(k, "k")
        self.exclude_batch = bool(exclude_batch)
        self.duplicate_threshold = None if duplicate_threshold is None else C.finite_float(
            duplicate_threshold, "duplicate_threshold", -1.0, 1.0)
        self._table: dict[str, Any] | None = None
        self._task = BackgroundTask("negatives table build")
        self.table_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ negatives table
    def build_table(self, k: int | None = None, nprobe: int | None = None, target_recall: float = 0.95,
                    progress: bool | None = None, background: bool = False,
                    method: str = "auto") -> "HardNegativeMiner":
        """Precompute every stored row's ``k`` (default ``2 * self.k + 8``) nearest rows of another
        label, by one of two engines (``method``):

        - ``"blocked"``: the blocked all-points engine (:func:`curriculum.neighbors.blocked_knn`
          with labels: dense block products at matrix-multiply speed, a block of one label probing
          the ``nprobe`` nearest blocks that hold other labels). Without ``nprobe``, the smallest
          one whose recall of each row's ``self.k`` hardest negatives clears ``target_recall`` is
          chosen before the build, measured on 512 sampled rows against exact search (the
          blocked search is exact inside its probes, so the recall of any nprobe is known up front).
        - ``"descent"``: an other-label NN-descent
          (:func:`curriculum.neighbors.negatives.descent_negatives`): a blocked pass of few probes
          seeds the lists, rounds refine them through the kNN graph and the reverse lists until
          the recall measured on 512 sampled rows clears ``target_recall``. On real features the
          probes the blocked engine needs grow with N; this does not (Fashion-MNIST CNN-128,
          recall 0.96: 94 s vs 142 s at 1M rows, 213 s vs 418 s at 2M). It walks the store's
          cached kNN graph where :meth:`EmbeddingStore.knn` left one at this version (the scores
          compute it: :meth:`EmbeddingStore.cached_knn`), else it computes its own
          (``table_info["graph"]``: ``"cached"`` or ``"built"``; a fifth of the build at 1M).
        - ``"auto"`` (default): ``"descent"`` from
          :data:`~curriculum.neighbors.negatives.DESCENT_FROM_ROWS` rows unless ``nprobe``
          is given, else ``"blocked"``.

        ``table_info`` reports the method, ``recall_estimate`` and the seconds.

        Afterwards :meth:`negatives` for stored anchors (``anchor_ids`` without fresh
        ``embeddings``/``labels``) reads the anchors' rows of the table, re-scores those candidates
        at the *current* vectors and labels, drops excluded ids and keeps the ``k`` best - a
        gather of ``B x k`` vectors instead of a search over the store. Anchors added after the
        build, or left with fewer than ``k`` valid candidates, fall back to the index search. The
        table is a snapshot of the neighbourhoods at build time: rebuild it when the encoder has
        moved (once per epoch is the usual rhythm); ``table_info`` records when it was built.
        With ``background=True`` the table is built in a thread from a snapshot of the store
        while :meth:`negatives` keeps answering from the previous table (or the index), and is
        swapped in when ready; :meth:`wait_table` waits for it and re-raises a failure.

        On a :class:`~curriculum.store.ShardedStore` (collective, in the foreground: a thread must
        not run collectives beside the caller's) each shard's rows get their table rows where
        they live, from :meth:`ShardedStore.knn` with ``exclude_same_label=True`` (rows regrouped by k-means
        region and each rank's batch table built as here, where the sampled ceiling allows; else -
        and with ``method="blocked"`` - a blocked ring on a global plan for other-label
        neighbours); :meth:`negatives` asks each anchor's owner
        for its candidates and re-scores them on the shards that hold them.

        Example:
            >>> import numpy as np
            >>> store = EmbeddingStore(1, metric="l2")
            >>> _ = store.add(np.array([[0.0], [1.0], [1.5], [4.0]]), labels=[0, 0, 1, 1])
            >>> HardNegativeMiner(store, k=1).build_table().negatives([0, 3]).ids.tolist()
            [[2], [1]]
        """
        import time

        from ..neighbors.negatives import table_method

        store = self.store

        def check() -> tuple:
            if not store.has_labels:
                raise ValueError("store: a negatives table needs a label on every stored row")
            if self._sharded and (background or nprobe is not None):
                raise ValueError(f"{'background' if background else 'nprobe'}: not on a ShardedStore (the table "
                                 "is built collectively, by the region route or a labelled blocked ring)")
            how = C.choice(method, "method", ("auto", "blocked", "descent"))
            if self._sharded and how == "descent":
                raise ValueError("method: 'descent' runs in one process; a ShardedStore's table is built by the "
                                 "region route or a labelled blocked ring")
            how = table_method(how, nprobe)
            return (2 * self.k + 8 if k is None else C.positive_int(k, "k"),
                    None if nprobe is None else C.positive_int(nprobe, "nprobe"),
                    C.finite_float(target_recall, "target_recall", 0.0, 1.0, low_open=True), how)
        kt, nprobe, target, how = self._checked(check)
        self.wait_table()  # one build at a time
        t0 = time.perf_counter()
        if self._sharded:
            _, rows = store.knn(kt, exclude_same_label=True, progress=progress, target_recall=target,
                                method="blocked" if how == "blocked" else "auto")
            rep = store.last_knn_report
            self._install(store.ids, rows, {"rows": len(store), "k": kt, "nprobe": None, "method": rep.get("method"),
                                            "recall_estimate": rep.get("recall_estimate"),
                                            "batch_engine": rep.get("batch_engine")}, t0)
            return self
        snap = store.snapshot()
        show = bool(progress) if background else want(progress, len(snap))  # no bar from a thread by default

        def work() -> None:
            self._build(snap, kt, nprobe, target, how, show, t0)

        if background:
            self._task.start(work)
        else:
            work()
        return self

    def _build(self, snap: Any, kt: int, nprobe: int | None, target: float, method: str, progress: bool,
               t0: float) -> None:
        """Build the table from a store snapshot (:func:`~curriculum.neighbors.negatives.negatives_table`,
        walking the store's cached graph where there is one) and install it with one assignment."""
        from ..neighbors.negatives import negatives_table

        graph = _cached_graph(self.store, snap) if method != "blocked" and nprobe is None else None
        rows, info = negatives_table(snap.vec, snap.labels, min(kt, len(snap) - 1), self.store.metric,
                                     recall_k=self.k, target=target, method=method, nprobe=nprobe, graph=graph,
                                     progress=progress)
        if info["method"] == "descent":
            info["graph"] = "built" if graph is None else "cached"
        self._install(snap.ids, np.where(rows >= 0, snap.ids[np.maximum(rows, 0)], -1),
                      {"rows": len(snap), "k": kt, **info, "store_version": snap.version}, t0)

    def _install(self, ids: np.ndarray, table: np.ndarray, info: dict[str, Any], t0: float) -> None:
        """Install a table (row ``i``: the candidate ids of ``ids[i]``) with one assignment: a
        concurrent :meth:`negatives` sees the old or the new table, never a half-built one."""
        import time

        order = np.argsort(ids, kind="stable")
        self._table = {"ids": table, "sorted_ids": ids[order], "order": order}
        self.table_info = {**info, "seconds": time.perf_counter() - t0}

    def wait_table(self) -> None:
        """Block until a background :meth:`build_table` is done; re-raise its error if it failed."""
        self._task.wait()

    def drop_table(self) -> None:
        """Forget the negatives table: :meth:`negatives` searches the index again."""
        self.wait_table()
        self._table, self.table_info = None, {}

    @staticmethod
    def _table_rows(ids: np.ndarray, t: dict[str, Any]) -> np.ndarray:
        """Row of each anchor id in table ``t``, ``-1`` for ids added after the build."""
        pos = np.minimum(np.searchsorted(t["sorted_ids"], ids), max(len(t["sorted_ids"]) - 1, 0))
        hit = t["sorted_ids"][pos] == ids if len(t["sorted_ids"]) else np.zeros(len(ids), bool)
        return np.where(hit, t["order"][pos], -1)

    def _table_negatives(self, ids: np.ndarray, q: np.ndarray, lab: np.ndarray, excl: np.ndarray, k: int,
                         t: dict[str, Any]) -> Mined:
        def candidates(asked: np.ndarray) -> np.ndarray:
            trow = self._table_rows(asked, t)
            return np.where(trow[:, None] >= 0, t["ids"][np.maximum(trow, 0)], -1)
        # each anchor's table row (asked of its owner on a sharded store), at current vectors and labels
        cand = self.store.values_of(ids, candidates, (t["ids"].shape[1],)) if self._sharded else candidates(ids)
        d, out = self.store.rescore(q, cand, k, exclude_labels=lab, exclude_ids=excl if excl.size else None)
        short = np.flatnonzero((out >= 0).sum(1) < min(k, len(self.store) - 1))
        if not self._everywhere(short.size == 0):  # not in the table, or too few candidates left: search
            sub = excl if excl.ndim == 1 else excl[short]
            d[short], out[short] = self.store.search(q[short], k, exclude_ids=sub if sub.size else None,
                                                     exclude_labels=lab[short])
        return self._result(out, d)

    # ------------------------------------------------------------------ one process or every shard alike
    def _checked(self, fn: Any) -> Any:
        """``fn()`` (argument checks); on a sharded store agreed by every rank: one rank's bad
        argument raises on all, so none is left waiting in a collective."""
        return self.store.checked(fn) if self._sharded else fn()

    def _everywhere(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (one process: ``flag``): branches into collectives
        and loops over them take the same turn on every rank."""
        if not self._sharded:
            return bool(flag)
        return bool(self.store.comm.all_reduce(np.array([bool(flag)], np.int64), "min")[0])

    def _read(self, what: str, ids: np.ndarray, fill: Any) -> np.ndarray:
        """``store.<what>_of`` the ids (any shape), ``fill`` where an id is ``-1``. Collective on a
        sharded store."""
        ok = ids >= 0
        got = getattr(self.store, f"{what}_of")(ids[ok])
        out = np.full(ids.shape + got.shape[1:], fill, got.dtype)
        out[ok] = got
        return out

    def _parsed_anchors(self, anchor_ids: Any, embeddings: Any, labels: Any) -> tuple:
        """``(ids, embeddings, labels)`` checked, each ``None`` where not given (no store access)."""
        if anchor_ids is None and embeddings is None:
            raise ValueError("anchor_ids: expected anchor ids or embeddings=, got neither")
        ids = None if anchor_ids is None else C.as_ids(anchor_ids, "anchor_ids", unique=False)
        q = None if embeddings is None else C.as_vectors(embeddings, "embeddings", self.store.dim)
        n = len(ids) if q is None else len(q)
        if ids is not None and len(ids) != n:
            raise ValueError(f"anchor_ids: expected {n} ids (one per embedding), got {len(ids)}")
        return ids, q, None if labels is None else C.as_labels(labels, "labels", n)

    def _anchors(self, anchor_ids: Any, embeddings: Any, labels: Any, need_labels: bool,
                 extra: Any = None) -> tuple:
        """``(ids, vectors, labels, extra(ids, n))`` of the ``n`` anchors: stored anchors' vectors
        (and labels when needed) fetched from the store; ``extra``: more argument checks, run (and
        on a sharded store agreed) with these."""
        def check() -> tuple:
            ids, q, lab = self._parsed_anchors(anchor_ids, embeddings, labels)
            if need_labels and lab is None and ids is None:
                raise ValueError("labels: fresh embeddings without anchor_ids need labels="
                                 + (" (the store has labels)" if self.store.has_labels else ""))
            if need_labels and not self.store.has_labels:
                raise ValueError("store: label-aware mining needs a label on every stored row")
            return ids, q, lab, None if extra is None else extra(ids, len(ids) if q is None else len(q))
        ids, q, lab, more = self._checked(check)
        none = np.zeros(0, np.int64)
        fetched = self.store.vectors_of(ids if q is None else none)  # every rank joins each lookup
        q = fetched if q is None else q
        asked = self.store.labels_of(ids if need_labels and lab is None else none)
        if need_labels and lab is None:
            lab = asked
            self._checked(lambda: _all_labelled(lab))
        return ids, q, lab, more

    def _exclusions(self, ids: np.ndarray | None, n: int, extra: Any) -> np.ndarray:
        """Ids to skip: 1-D (shared by every anchor: the batch and ``extra``) when possible, else
        a per-anchor ``(n, m)`` matrix (each anchor's own id)."""
        shared = []
        if ids is not None and self.exclude_batch:
            shared.append(ids)
        if extra is not None:
            shared.append(C.as_ids(extra, "exclude_ids", unique=False))
        if ids is not None and not self.exclude_batch:
            cols = [ids[:, None]]
            cols += [np.broadcast_to(s_[None, :], (n, len(s_))) for s_ in shared]
            return np.concatenate(cols, axis=1)
        return sorted_unique(np.concatenate(shared)) if shared else np.zeros(0, np.int64)

    def _search_filtered(self, q: np.ndarray, want: int, excl: np.ndarray, keep_fn: Any) -> tuple:
        """Nearest rows passing ``keep_fn(ids, dists) -> mask``; widens the search until ``want``
        qualify or the store is exhausted (exact with a flat index) - on every rank alike."""
        n = len(self.store)
        fetch = min(n, max(4 * want, want + 16))
        while True:
            d, i = self.store.search(q, fetch, exclude_ids=excl if excl.size else None)
            ok = (i >= 0) & keep_fn(i, d)
            enough = ok.sum(1) >= want
            if self._everywhere(enough.all() or fetch >= n):
                break
            fetch = min(n, fetch * 4)
        order = np.argsort(~ok, axis=1, kind="stable")[:, :want]
        ids = np.where(np.take_along_axis(ok, order, 1), np.take_along_axis(i, order, 1), -1)
        dist = np.where(ids >= 0, np.take_along_axis(d, order, 1), np.inf).astype(np.float32)
        if ids.shape[1] < want:
            pad = want - ids.shape[1]
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
        return ids, dist

    def _result(self, ids: np.ndarray, dist: np.ndarray) -> Mined:
        return Mined(ids, dist, self._read("steps", ids, -1))

    def negatives(self, anchor_ids: Any = None, embeddings: Any = None, labels: Any = None,
                  exclude_ids: Any = None, k: int | None = None) -> Mined:
        """The ``k`` nearest stored ids with a different label (label-free when the store has none:
        the nearest ids other than the anchor, skipping near-duplicates). The label filter runs
        inside the faiss search, so one search answers the whole batch; after
        :meth:`build_table`, stored anchors are answered from the table instead (re-scored at the
        current vectors), at a fraction of the latency."""
        labelled = self.store.has_labels and (self._sharded or labels is not None or anchor_ids is not None)

        def args(ids: np.ndarray | None, n: int) -> tuple:
            return self.k if k is None else C.positive_int(k, "k"), self._exclusions(ids, n, exclude_ids)
        ids, q, lab, (k, excl) = self._anchors(anchor_ids, embeddings, labels, labelled, args)
        table = self._table
        if self._everywhere(labelled and table is not None and ids is not None and embeddings is None
                            and labels is None):
            return self._table_negatives(ids, q, lab, excl, k, table)
        if labelled:
            d, i = self.store.search(q, k, exclude_ids=excl if excl.size else None, exclude_labels=lab)
            return self._result(i, d)
        thr = self.duplicate_threshold

        def keep(i: np.ndarray, d: np.ndarray) -> np.ndarray:
            if thr is None:
                return np.ones(i.shape, bool)
            return self._cosine(q, i) <= thr

        out_ids, dist = self._search_filtered(q, k, excl, keep)
        return self._result(out_ids, dist)

    def _cosine(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        v = self._read("vectors", ids, 0.0)
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        vn = v / np.maximum(np.linalg.norm(v, axis=2, keepdims=True), 1e-12)
        return np.einsum("bd,bkd->bk", qn, vn)

    def positives(self, anchor_ids: Any = None, embeddings: Any = None, labels: Any = None,
                  k: int | None = None) -> Mined:
        """The ``k`` *farthest* stored ids with the anchor's label (exact, per class in blocks;
        on a sharded store each shard's farthest, merged)."""
        ids, q, lab, k = self._anchors(anchor_ids, embeddings, labels, True,
                                       lambda ids, n: self.k if k is None else C.positive_int(k, "k"))
        own = np.full(len(q), -1, np.int64) if ids is None else ids
        if not self._sharded:
            neg_d, out = _farthest_same_label(self.store, q, lab, own, k)
        else:  # the same on every shard for every rank's anchors; nearest under the negated distance
            neg_d, out = self.store.fan_out(q, lab, own[:, None], lambda aq, al, ao: _farthest_same_label(
                self.store.local, aq, al, ao[:, 0], k), k)
        return self._result(out, np.where(out >= 0, -neg_d, np.inf).astype(np.float32))

    def semi_hard(self, anchor_ids: Any, positive_ids: Any, margin: float = 0.2, k: int | None = None,
                  labels: Any = None) -> Mined:
        """Per (anchor, positive): the ``k`` nearest negatives with ``d(a,p) < d(a,n) < d(a,p) + margin``."""
        def args(ids: np.ndarray | None, n: int) -> tuple:
            return (self.k if k is None else C.positive_int(k, "k"),
                    C.finite_float(margin, "margin", 0.0, low_open=True),
                    C.as_ids(positive_ids, "positive_ids", n=n, unique=False))
        ids, q, lab, (k, margin, pos) = self._anchors(anchor_ids, None, labels, True, args)
        from ..neighbors import pair_distances
        dap = pair_distances(q, self.store.vectors_of(pos), self.store.metric)[:, None]
        excl = self._exclusions(ids, len(q), None)

        def keep(i: np.ndarray, d: np.ndarray) -> np.ndarray:
            return (self._read("labels", i, -1) != lab[:, None]) & (d > dap) & (d < dap + margin)

        out_ids, dist = self._search_filtered(q, k, excl, keep)
        return self._result(out_ids, dist)


def _all_labelled(lab: np.ndarray) -> None:
    if (lab < 0).any():
        raise ValueError("labels: some anchors have no label in the store; pass labels=")


def _cached_graph(store: Any, snap: Any) -> np.ndarray | None:
    """The store's cached kNN graph at the snapshot's version (:meth:`EmbeddingStore.cached_knn`,
    :data:`~curriculum.neighbors.negatives.GRAPH_K` neighbours) as row numbers of the snapshot, or
    None where none is cached: the descent then computes its own."""
    from ..neighbors.negatives import GRAPH_K

    cached = store.cached_knn(min(GRAPH_K, len(snap) - 1), version=snap.version)
    if cached is None:
        return None
    order = np.argsort(snap.ids, kind="stable")
    return order[np.searchsorted(snap.ids, cached[1], sorter=order)]

def _farthest_same_label(store: EmbeddingStore, q: np.ndarray, lab: np.ndarray, own: np.ndarray,
                         k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` farthest rows of ``store`` with its label (never its ``own`` id), as
    ``(negated distances ascending, ids)``, ``inf`` / ``-1`` where fewer: the farthest are the
    nearest under the negated distance (exact, per class)."""
    from ..neighbors import brute_knn

    s_labels, s_ids = store.labels, store.ids
    out_i = np.full((len(q), k), -1, np.int64)
    out_d = np.full((len(q), k), np.inf, np.float32)
    for c in np.unique(lab):
        members = np.flatnonzero(s_labels == c)
        rows = np.flatnonzero(lab == c)
        if members.size == 0:
            continue
        d, r = brute_knn(q[rows], store.vectors(s_ids[members]), members.size, store.metric)
        cand = s_ids[members][np.maximum(r, 0)]
        neg = np.where((r >= 0) & (cand != own[rows, None]), -d, np.inf)
        o = np.argsort(neg, axis=1, kind="stable")[:, :k]
        nd = np.take_along_axis(neg, o, 1)
        out_i[rows, :o.shape[1]] = np.where(np.isfinite(nd), np.take_along_axis(cand, o, 1), -1)
        out_d[rows, :o.shape[1]] = nd
    return out_d, out_i


__all__ = ['Mined', 'HardNegativeMiner']
