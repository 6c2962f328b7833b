"""Global hard-sample mining over the whole :class:`~curriculum.EmbeddingStore`: the hardest
negatives / positives / semi-hard negatives of a batch of anchors, through the store's faiss search
or a per-epoch negatives table built by the blocked engine. Re-exported by :mod:`curriculum.mining`.

Distances follow the store's convention (smaller = nearer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._util import checks as C
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
            :class:`~curriculum.store.ShardedStore`: then :meth:`negatives` is collective (every
            rank calls it with its own batch; the search runs over all shards) and the other
            methods are not supported yet.
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
        if isinstance(store, ShardedStore) and duplicate_threshold is not None:
            raise ValueError("duplicate_threshold: not supported on a ShardedStore yet (expected None)")
        self.store = store
        self.k = C.positive_int(k, "k")
        self.exclude_batch = bool(exclude_batch)
        self.duplicate_threshold = None if duplicate_threshold is None else C.finite_float(
            duplicate_threshold, "duplicate_threshold", -1.0, 1.0)
        self._table: dict[str, Any] | None = None
        self._task = BackgroundTask("negatives table build")
        self.table_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ negatives table
    def build_table(self, k: int | None = None, nprobe: int | None = None, target_recall: float = 0.95,
                    progress: bool | None = None, background: bool = False) -> "HardNegativeMiner":
        """Precompute every stored row's ``k`` (default ``2 * self.k + 8``) nearest rows of another
        label with the blocked all-points engine (:func:`curriculum.neighbors.blocked_knn` with labels:
        dense block products at matrix-multiply speed, a block of one label probing the
        ``nprobe`` nearest blocks that hold other labels). Without ``nprobe``, the smallest one
        whose recall of each row's ``self.k`` hardest negatives clears ``target_recall`` is
        chosen before the build, measured on 512 sampled rows against exact search (the blocked
        search is exact inside its probes, so the recall of any nprobe is known up front);
        ``table_info["recall_estimate"]`` reports it.

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

        Example:
            >>> import numpy as np
            >>> store = EmbeddingStore(1, metric="l2")
            >>> _ = store.add(np.array([[0.0], [1.0], [1.5], [4.0]]), labels=[0, 0, 1, 1])
            >>> HardNegativeMiner(store, k=1).build_table().negatives([0, 3]).ids.tolist()
            [[2], [1]]
        """
        import time

        store = self.store
        self._local_only("build_table")
        if not store.has_labels:
            raise ValueError("store: a negatives table needs a label on every stored row")
        kt = 2 * self.k + 8 if k is None else C.positive_int(k, "k")
        nprobe = None if nprobe is None else C.positive_int(nprobe, "nprobe")
        target = C.finite_float(target_recall, "target_recall", 0.0, 1.0, low_open=True)
        self.wait_table()  # one build at a time
        t0 = time.perf_counter()
        snap = store.snapshot()
        show = bool(progress) if background else want(progress, len(snap))  # no bar from a thread by default

        def work() -> None:
            self._build(snap, kt, nprobe, target, show, t0)

        if background:
            self._task.start(work)
        else:
            work()
        return self

    def _build(self, snap: Any, kt: int, nprobe: int | None, target: float, progress: bool, t0: float) -> None:
        """Build the table from a store snapshot and install it with one assignment (a concurrent
        :meth:`negatives` sees the old or the new table, never a half-built one)."""
        import time

        from ..neighbors import block_plan, blocked_knn, plan_recall

        metric, n = self.store.metric, len(snap)
        estimate = None
        if nprobe is None:  # recall of the k hardest negatives of sampled rows, for every nprobe
            plan = plan_recall(snap.vec, self.k, metric, target, labels=snap.labels)
            centroids, assign, nprobe, estimate = plan.centroids, plan.assign, plan.nprobe, plan.recall_estimate
        else:
            centroids, assign = block_plan(snap.vec, max(1, n // 256), metric)
        _, rows = blocked_knn(snap.vec, kt, metric, nprobe=nprobe, labels=snap.labels, progress=progress,
                              centroids=centroids, assign=assign)
        order = np.argsort(snap.ids, kind="stable")
        self._table = {"ids": np.where(rows >= 0, snap.ids[np.maximum(rows, 0)], -1),
                       "sorted_ids": snap.ids[order], "order": order}
        self.table_info = {"rows": n, "k": kt, "nprobe": nprobe, "recall_estimate": estimate,
                           "store_version": snap.version, "seconds": time.perf_counter() - t0}

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
        trow = self._table_rows(ids, t)
        cand = np.where(trow[:, None] >= 0, t["ids"][np.maximum(trow, 0)], -1)
        # current vectors and labels: the candidates' distances are exact now
        d, out = self.store.rescore(q, cand, k, exclude_labels=lab, exclude_ids=excl if excl.size else None)
        short = np.flatnonzero((out >= 0).sum(1) < min(k, len(self.store) - 1))
        if short.size:  # not in the table, or too few candidates left: search the index
            sub = excl if excl.ndim == 1 else excl[short]
            d[short], out[short] = self.store.search(q[short], k, exclude_ids=sub if sub.size else None,
                                                     exclude_labels=lab[short])
        return self._result(out, d)

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

    def _anchors(self, anchor_ids: Any, embeddings: Any, labels: Any, need_labels: bool) -> tuple:
        ids, q, lab = self._parsed_anchors(anchor_ids, embeddings, labels)
        q = self.store.vectors(ids) if q is None else q
        if lab is None and need_labels:
            if ids is None:
                raise ValueError("labels: fresh embeddings without anchor_ids need labels=")
            lab = self.store.labels[self.store.rows_of(ids)]
            if (lab < 0).any():
                raise ValueError("labels: some anchors have no label in the store; pass labels=")
        if need_labels and not self.store.has_labels:
            raise ValueError("store: label-aware mining needs a label on every stored row")
        return ids, q, lab

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
        return np.unique(np.concatenate(shared)) if shared else np.zeros(0, np.int64)

    def _search_filtered(self, q: np.ndarray, want: int, excl: np.ndarray, keep_fn: Any) -> tuple:
        """Nearest rows passing ``keep_fn(ids, dists) -> mask``; widens the search until ``want``
        qualify or the store is exhausted (exact with a flat index)."""
        n = len(self.store)
        fetch = min(n, max(4 * want, want + 16))
        while True:
            d, i = self.store.search(q, fetch, exclude_ids=excl if excl.size else None)
            ok = (i >= 0) & keep_fn(i, d)
            enough = ok.sum(1) >= want
            if enough.all() or fetch >= n:
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
        steps = np.full(ids.shape, -1, np.int64)
        ok = ids >= 0
        if ok.any():
            steps[ok] = self.store.steps[self.store.rows_of(ids[ok])]
        return Mined(ids, dist, steps)

    def negatives(self, anchor_ids: Any = None, embeddings: Any = None, labels: Any = None,
                  exclude_ids: Any = None, k: int | None = None) -> Mined:
        """The ``k`` nearest stored ids with a different label (label-free when the store has none:
        the nearest ids other than the anchor, skipping near-duplicates). The label filter runs
        inside the faiss search, so one search answers the whole batch; after
        :meth:`build_table`, stored anchors are answered from the table instead (re-scored at the
        current vectors), at a fraction of the latency."""
        if isinstance(self.store, ShardedStore):
            return self._sharded_negatives(anchor_ids, embeddings, labels, exclude_ids, k)
        k = self.k if k is None else C.positive_int(k, "k")
        labelled = self.store.has_labels and (labels is not None or anchor_ids is not None)
        ids, q, lab = self._anchors(anchor_ids, embeddings, labels, need_labels=labelled)
        excl = self._exclusions(ids, len(q), exclude_ids)
        table = self._table
        if labelled and table is not None and ids is not None and embeddings is None and labels is None:
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

    def _local_only(self, what: str) -> None:
        if isinstance(self.store, ShardedStore):
            raise ValueError(f"store: {what} is not supported on a ShardedStore yet (negatives is)")

    def _sharded_negatives(self, anchor_ids: Any, embeddings: Any, labels: Any, exclude_ids: Any,
                           k: int | None) -> Mined:
        """:meth:`negatives` over a :class:`~curriculum.store.ShardedStore`: this rank's anchors
        (fresh ``embeddings``, or stored ``anchor_ids`` whose vectors and labels are fetched from
        their owners) searched over every shard. Collective; a bad argument on one rank raises on
        all. A labelled store needs each anchor's label (``labels=`` or stored ``anchor_ids``)."""
        store = self.store

        def check() -> tuple:
            kk = self.k if k is None else C.positive_int(k, "k")
            ids, q, lab = self._parsed_anchors(anchor_ids, embeddings, labels)
            n = len(ids) if q is None else len(q)
            if store.has_labels and lab is None and ids is None:
                raise ValueError("labels: fresh embeddings without anchor_ids need labels= (the store has labels)")
            return kk, ids, q, lab, self._exclusions(ids, n, exclude_ids)

        k, ids, q, lab, excl = store.checked(check)
        none = np.zeros(0, np.int64)
        fetched = store.vectors_of(ids if q is None else none)  # every rank joins each lookup
        q = fetched if q is None else q
        asked = store.labels_of(ids if store.has_labels and lab is None else none)
        lab = asked if store.has_labels and lab is None else lab
        d, i = store.search(q, k, exclude_ids=excl if excl.size else None,
                            exclude_labels=lab if store.has_labels else None)
        steps = np.full(i.shape, -1, np.int64)
        ok = i >= 0
        steps[ok] = store.steps_of(i[ok])
        return Mined(i, d, steps)

    def _cosine(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        v = self.store.vectors(np.maximum(ids, 0).ravel()).reshape(*ids.shape, -1)
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        vn = v / np.maximum(np.linalg.norm(v, axis=2, keepdims=True), 1e-12)
        return np.einsum("bd,bkd->bk", qn, vn)

    def positives(self, anchor_ids: Any = None, embeddings: Any = None, labels: Any = None,
                  k: int | None = None) -> Mined:
        """The ``k`` *farthest* stored ids with the anchor's label (exact, per class in blocks)."""
        self._local_only("positives")
        k = self.k if k is None else C.positive_int(k, "k")
        ids, q, lab = self._anchors(anchor_ids, embeddings, labels, need_labels=True)
        from ..neighbors import brute_knn
        s_labels, s_ids = self.store.labels, self.store.ids
        out_i = np.full((len(q), k), -1, np.int64)
        out_d = np.full((len(q), k), np.inf, np.float32)
        vec = None
        for c in np.unique(lab):
            members = np.flatnonzero(s_labels == c)
            rows = np.flatnonzero(lab == c)
            if members.size == 0:
                continue
            vec = self.store.vectors(s_ids[members])
            # farthest = nearest under the negated distance: search all members, keep the tail
            d, r = brute_knn(q[rows], vec, members.size, self.store.metric)
            cand = s_ids[members][np.maximum(r, 0)]
            d = np.where(r >= 0, d, -np.inf)
            if ids is not None:
                d = np.where(cand == ids[rows, None], -np.inf, d)
            o = np.argsort(-d, axis=1, kind="stable")[:, :k]
            dd = np.take_along_axis(d, o, 1)
            ii = np.where(np.isfinite(dd), np.take_along_axis(cand, o, 1), -1)
            out_i[rows, :ii.shape[1]] = ii
            out_d[rows, :ii.shape[1]] = np.where(np.isfinite(dd), dd, np.inf)
        return self._result(out_i, out_d)

    def semi_hard(self, anchor_ids: Any, positive_ids: Any, margin: float = 0.2, k: int | None = None,
                  labels: Any = None) -> Mined:
        """Per (anchor, positive): the ``k`` nearest negatives with ``d(a,p) < d(a,n) < d(a,p) + margin``."""
        self._local_only("semi_hard")
        k = self.k if k is None else C.positive_int(k, "k")
        margin = C.finite_float(margin, "margin", 0.0, low_open=True)
        ids, q, lab = self._anchors(anchor_ids, None, labels, need_labels=True)
        pos = C.as_ids(positive_ids, "positive_ids", n=len(q), unique=False)
        from ..neighbors import pair_distances
        dap = pair_distances(q, self.store.vectors(pos), self.store.metric)[:, None]
        excl = self._exclusions(ids, len(q), None)
        store_labels = self.store.labels

        def keep(i: np.ndarray, d: np.ndarray) -> np.ndarray:
            lab_i = store_labels[self.store.rows_of(np.maximum(i, 0).ravel())].reshape(i.shape)
            return (lab_i != lab[:, None]) & (d > dap) & (d < dap + margin)

        out_ids, dist = self._search_filtered(q, k, excl, keep)
        return self._result(out_ids, dist)


__all__ = ['Mined', 'HardNegativeMiner']
