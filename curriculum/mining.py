"""Hard-sample mining: in-batch miners and global miners over the whole embedding store.

In-batch miners take ``(embeddings, labels)`` of one batch and return index tensors in the
shapes metric-learning users know: triplets ``(anchor, positive, negative)`` or pairs
``(a1, p, a2, n)``. Global miners search the whole :class:`~curriculum.EmbeddingStore`
through faiss and return *dataset ids* the loader can fetch.

Distances follow the store's convention (smaller = nearer): ``cosine`` = 1 - cos, ``l2`` =
Euclidean, ``ip`` = -<a, b>.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import _checks as C
from .store import EmbeddingStore

DISTANCES = ("cosine", "l2", "ip")


def pairwise_distance(a: torch.Tensor, b: torch.Tensor, distance: str = "cosine") -> torch.Tensor:
    """``(len(a), len(b))`` distance matrix, smaller = nearer."""
    if distance == "l2":
        return torch.cdist(a, b).clamp_min(0)
    if distance == "cosine":
        a = torch.nn.functional.normalize(a, dim=1)
        b = torch.nn.functional.normalize(b, dim=1)
        return 1.0 - a @ b.T
    return -(a @ b.T)


def _empty3(device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    e = torch.zeros(0, dtype=torch.long, device=device)
    return e, e.clone(), e.clone()


class BaseMiner:
    """Validates ``(embeddings, labels)`` once; subclasses implement :meth:`mine`.

    Calling a miner (``miner(emb, labels)``) checks the inputs and runs ``mine``. Anchors with
    no valid positive or negative produce no tuple (never a garbage index). Mining runs on the
    embeddings' device (a CUDA batch is mined on the GPU) and returns index tensors there.
    """

    def __init__(self, distance: str = "cosine") -> None:
        self.distance = C.choice(distance, "distance", DISTANCES)

    def __call__(self, embeddings: Any, labels: Any) -> tuple[torch.Tensor, ...]:
        emb = torch.as_tensor(embeddings)
        if emb.ndim != 2:
            raise ValueError(f"embeddings: expected a 2-D (batch, dim) tensor, got shape {tuple(emb.shape)}")
        if not emb.is_floating_point():
            raise TypeError(f"embeddings: expected a float tensor, got dtype {emb.dtype}")
        if not torch.isfinite(emb).all():
            raise ValueError("embeddings: expected finite values, got NaN or inf")
        lab = torch.as_tensor(labels, device=emb.device)
        if lab.ndim != 1 or lab.shape[0] != emb.shape[0]:
            raise ValueError(f"labels: expected {emb.shape[0]} labels (one per embedding), got shape {tuple(lab.shape)}")
        if lab.is_floating_point():
            raise TypeError(f"labels: expected integer labels, got dtype {lab.dtype}")
        with torch.no_grad():
            return self.mine(emb.detach(), lab.long())

    def mine(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:  # pragma: no cover
        raise NotImplementedError

    def _masks(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        return same & ~eye, ~same


class BatchHardMiner(BaseMiner):
    """Per anchor: the farthest positive and the closest negative (Hermans et al. 2017).

    Example:
        >>> emb = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
        >>> a, p, n = BatchHardMiner("l2")(emb, torch.tensor([0, 0, 1, 1]))
        >>> a.tolist(), p.tolist(), n.tolist()
        ([0, 1, 2, 3], [1, 0, 3, 2], [2, 2, 1, 1])
    """

    def mine(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = pairwise_distance(emb, emb, self.distance)
        pos, neg = self._masks(labels)
        ok = pos.any(1) & neg.any(1)
        p = torch.where(pos, d, -torch.inf).argmax(1)
        n = torch.where(neg, d, torch.inf).argmin(1)
        a = torch.arange(len(labels), device=labels.device)[ok]
        return a, p[ok], n[ok]


class SemiHardMiner(BaseMiner):
    """For every positive pair (a, p): the closest negative with ``d(a,p) < d(a,n) < d(a,p) + margin``
    (FaceNet, Schroff et al. 2015); ``all_negatives=True`` returns every semi-hard triplet.

    Example:
        >>> emb = torch.tensor([[0.0], [1.0], [1.5], [1.8], [5.0]])
        >>> SemiHardMiner(margin=1.0, distance="l2")(emb, torch.tensor([0, 0, 1, 1, 1]))[2].tolist()
        [2, 1, 1, 1, 1]
    """

    def __init__(self, margin: float = 0.2, distance: str = "cosine", all_negatives: bool = False) -> None:
        super().__init__(distance)
        self.margin = C.finite_float(margin, "margin", 0.0, low_open=True)
        self.all_negatives = bool(all_negatives)

    def mine(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = pairwise_distance(emb, emb, self.distance)
        pos, neg = self._masks(labels)
        a, p = torch.nonzero(pos, as_tuple=True)
        if a.numel() == 0:
            return _empty3(emb.device)
        dap = d[a, p][:, None]
        dan = d[a]
        semi = neg[a] & (dan > dap) & (dan < dap + self.margin)
        if self.all_negatives:
            i, n = torch.nonzero(semi, as_tuple=True)
            return a[i], p[i], n
        ok = semi.any(1)
        n = torch.where(semi, dan, torch.inf).argmin(1)
        return a[ok], p[ok], n[ok]


class MarginMiner(BaseMiner):
    """All triplets violating the margin: ``d(a,p) - d(a,n) + margin > 0``, computed in anchor chunks
    so memory stays O(chunk x B^2).

    Example:
        >>> emb = torch.tensor([[0.0], [1.0], [1.2]])
        >>> [t.tolist() for t in MarginMiner(0.5, "l2")(emb, torch.tensor([0, 0, 1]))]
        [[0, 1], [1, 0], [2, 2]]
    """

    def __init__(self, margin: float = 0.2, distance: str = "cosine", chunk: int = 64) -> None:
        super().__init__(distance)
        self.margin = C.finite_float(margin, "margin", 0.0)
        self.chunk = C.positive_int(chunk, "chunk")

    def mine(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = pairwise_distance(emb, emb, self.distance)
        pos, neg = self._masks(labels)
        out = []
        for s in range(0, len(labels), self.chunk):
            e = min(len(labels), s + self.chunk)
            viol = pos[s:e, :, None] & neg[s:e, None, :] & (d[s:e, :, None] - d[s:e, None, :] + self.margin > 0)
            a, p, n = torch.nonzero(viol, as_tuple=True)
            out.append((a + s, p, n))
        if not out:
            return _empty3(emb.device)
        return tuple(torch.cat(x) for x in zip(*out))  # type: ignore[return-value]


class MultiSimilarityMiner(BaseMiner):
    """Multi-similarity pair mining (Wang et al. 2019) on cosine similarity ``S``: keep a negative
    pair if ``S_an + epsilon > min_p S_ap`` and a positive pair if ``S_ap - epsilon < max_n S_an``.
    Returns pairs ``(a1, p, a2, n)``.
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__("cosine")
        self.epsilon = C.finite_float(epsilon, "epsilon", 0.0)

    def mine(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        e = torch.nn.functional.normalize(emb, dim=1)
        s = e @ e.T  # the similarity itself: 1 - (1 - cos) rounds differently at the epsilon boundary
        pos, neg = self._masks(labels)
        min_pos = torch.where(pos, s, torch.inf).min(1, keepdim=True).values
        max_neg = torch.where(neg, s, -torch.inf).max(1, keepdim=True).values
        keep_neg = neg & (s + self.epsilon > min_pos)
        keep_pos = pos & (s - self.epsilon < max_neg)
        a1, p = torch.nonzero(keep_pos, as_tuple=True)
        a2, n = torch.nonzero(keep_neg, as_tuple=True)
        return a1, p, a2, n


# ---------------------------------------------------------------------- global mining
@dataclass(frozen=True)
class Mined:
    """Global mining result for ``B`` anchors: ``(B, k)`` dataset ids (``-1`` where fewer qualify),
    their distances to the anchor, and the training step each returned embedding was computed at
    (``-1`` unknown) - its staleness under a drifting encoder."""

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
        store: the :class:`~curriculum.EmbeddingStore` (labels needed unless ``labels=False``).
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

    def __init__(self, store: EmbeddingStore, k: int = 20, exclude_batch: bool = True,
                 duplicate_threshold: float | None = None) -> None:
        if not isinstance(store, EmbeddingStore):
            raise TypeError(f"store: expected an EmbeddingStore, got {type(store).__name__}")
        self.store = store
        self.k = C.positive_int(k, "k")
        self.exclude_batch = bool(exclude_batch)
        self.duplicate_threshold = None if duplicate_threshold is None else C.finite_float(
            duplicate_threshold, "duplicate_threshold", -1.0, 1.0)
        self._table: dict[str, Any] | None = None
        self._table_thread: Any = None
        self._table_error: BaseException | None = None
        self.table_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ negatives table
    def build_table(self, k: int | None = None, nprobe: int | None = None, target_recall: float = 0.95,
                    progress: bool = False, background: bool = False) -> "HardNegativeMiner":
        """Precompute every stored row's ``k`` (default ``2 * self.k + 8``) nearest rows of another
        label with the blocked all-points engine (:func:`curriculum.knn.blocked_knn` with labels:
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
        swapped in when ready; :meth:`wait_table` joins it and re-raises a failure.

        Example:
            >>> import numpy as np
            >>> store = EmbeddingStore(1, metric="l2")
            >>> _ = store.add(np.array([[0.0], [1.0], [1.5], [4.0]]), labels=[0, 0, 1, 1])
            >>> HardNegativeMiner(store, k=1).build_table().negatives([0, 3]).ids.tolist()
            [[2], [1]]
        """
        import threading
        import time

        from . import knn
        from .knn import block_plan, block_purity, exact_rows, nprobe_for, probe_ranks

        store = self.store
        if not store.has_labels:
            raise ValueError("store: a negatives table needs a label on every stored row")
        kt = 2 * self.k + 8 if k is None else C.positive_int(k, "k")
        nprobe = None if nprobe is None else C.positive_int(nprobe, "nprobe")
        target = C.finite_float(target_recall, "target_recall", 0.0, 1.0, low_open=True)
        self.wait_table()  # one build at a time
        t0 = time.perf_counter()
        with store._lock:
            n = len(store)
            vec = store._b.vec[:n].copy()
            ids = store.ids.copy()
            labels = store.labels.copy()
            version = store._version

        def work() -> None:
            try:
                centroids, assign = block_plan(vec, max(1, n // 256), store.metric)
                p, estimate = nprobe, None
                if p is None:  # recall of the k hardest negatives of sampled rows, for every nprobe
                    sample = np.random.default_rng(0).choice(n, min(512, n), replace=False)
                    truth = exact_rows(vec, sample, self.k, store.metric, labels=labels)
                    pure = block_purity(labels, assign, len(centroids))
                    ranks = probe_ranks(centroids, assign, sample, truth, store.metric, pure=pure)
                    p, estimate = nprobe_for(ranks, target, 1, len(centroids))
                _, rows = knn.blocked_knn(vec, kt, store.metric, nprobe=p, labels=labels, progress=progress,
                                          centroids=centroids, assign=assign)
                table = np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
                order = np.argsort(ids, kind="stable")
                new = {"ids": table, "sorted_ids": ids[order], "order": order}
                self._table = new  # one assignment: a concurrent negatives() sees the old or the new table
                self.table_info = {"rows": n, "k": kt, "nprobe": p, "recall_estimate": estimate,
                                   "store_version": version, "seconds": time.perf_counter() - t0}
            except BaseException as exc:  # surfaced by wait_table
                self._table_error = exc

        if background:
            self._table_thread = threading.Thread(target=work, name="curriculum-negatives-table", daemon=True)
            self._table_thread.start()
        else:
            work()
            self.wait_table()
        return self

    def wait_table(self) -> None:
        """Block until a background :meth:`build_table` is done; re-raise its error if it failed."""
        t = self._table_thread
        if t is not None:
            t.join()
            self._table_thread = None
        err, self._table_error = self._table_error, None
        if err is not None:
            raise RuntimeError(f"build_table: the table build failed ({err!r})") from err

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
        from .knn import first_k_valid

        trow = self._table_rows(ids, t)
        cand = np.where(trow[:, None] >= 0, t["ids"][np.maximum(trow, 0)], -1)
        with self.store._lock:  # current vectors and labels: the candidates' distances are exact now
            d, cid = self.store._rerank(q, cand, cand.shape[1], lab)
            ok = (cid >= 0) & ~self.store._excluded(cid, excl if excl.size else None)
        d, out = first_k_valid(d, cid, ok, k)
        short = np.flatnonzero((out >= 0).sum(1) < min(k, len(self.store) - 1))
        if short.size:  # not in the table, or too few candidates left: search the index
            sub = excl if excl.ndim == 1 else excl[short]
            d[short], out[short] = self.store.search(q[short], k, exclude_ids=sub if sub.size else None,
                                                     exclude_labels=lab[short])
        return self._result(out, d)

    def _anchors(self, anchor_ids: Any, embeddings: Any, labels: Any, need_labels: bool) -> tuple:
        if anchor_ids is None and embeddings is None:
            raise ValueError("anchor_ids: expected anchor ids or embeddings=, got neither")
        ids = None if anchor_ids is None else C.as_ids(anchor_ids, "anchor_ids", unique=False)
        if embeddings is not None:
            q = C.as_vectors(embeddings, "embeddings", self.store.dim)
            if ids is not None and len(ids) != len(q):
                raise ValueError(f"anchor_ids: expected {len(q)} ids (one per embedding), got {len(ids)}")
        else:
            q = self.store.vectors(ids)
        lab = None
        if labels is not None:
            lab = C.as_labels(labels, "labels", len(q))
        elif need_labels:
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

    def _cosine(self, q: np.ndarray, ids: np.ndarray) -> np.ndarray:
        v = self.store.vectors(np.maximum(ids, 0).ravel()).reshape(*ids.shape, -1)
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        vn = v / np.maximum(np.linalg.norm(v, axis=2, keepdims=True), 1e-12)
        return np.einsum("bd,bkd->bk", qn, vn)

    def positives(self, anchor_ids: Any = None, embeddings: Any = None, labels: Any = None,
                  k: int | None = None) -> Mined:
        """The ``k`` *farthest* stored ids with the anchor's label (exact, per class in blocks)."""
        k = self.k if k is None else C.positive_int(k, "k")
        ids, q, lab = self._anchors(anchor_ids, embeddings, labels, need_labels=True)
        from .knn import brute_knn
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
        k = self.k if k is None else C.positive_int(k, "k")
        margin = C.finite_float(margin, "margin", 0.0, low_open=True)
        ids, q, lab = self._anchors(anchor_ids, None, labels, need_labels=True)
        pos = C.as_ids(positive_ids, "positive_ids", n=len(q), unique=False)
        from .knn import pair_distances
        dap = pair_distances(q, self.store.vectors(pos), self.store.metric)[:, None]
        excl = self._exclusions(ids, len(q), None)
        store_labels = self.store.labels

        def keep(i: np.ndarray, d: np.ndarray) -> np.ndarray:
            lab_i = store_labels[self.store.rows_of(np.maximum(i, 0).ravel())].reshape(i.shape)
            return (lab_i != lab[:, None]) & (d > dap) & (d < dap + margin)

        out_ids, dist = self._search_filtered(q, k, excl, keep)
        return self._result(out_ids, dist)


class CrossBatchMemory:
    """A FIFO of recent embeddings (XBM, Wang et al. 2020) for mining without a full store.

    Args:
        size: slots in the memory (the oldest entries are evicted first).
        dim: embedding dimension.
        distance: ``"cosine"``, ``"l2"`` or ``"ip"``.
        device: where the memory lives (``"cuda"`` keeps it beside a GPU model, so adding a batch
            and mining it never leave the GPU); inputs are moved there, results are returned on
            the query's device.

    Example:
        >>> mem = CrossBatchMemory(size=3, dim=1, distance="l2")
        >>> mem.add(torch.tensor([[0.0], [1.0], [2.0], [3.0]]), torch.tensor([0, 1, 1, 0]))  # oldest evicted
        >>> slots, dist = mem.negatives(torch.tensor([[2.9]]), torch.tensor([0]), k=2)
        >>> mem.emb[slots[0], 0].tolist()
        [2.0, 1.0]
    """

    def __init__(self, size: int, dim: int, distance: str = "cosine", device: torch.device | str = "cpu") -> None:
        self.size, self.dim = C.positive_int(size, "size"), C.positive_int(dim, "dim")
        self.distance = C.choice(distance, "distance", DISTANCES)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda', got {device!r}") from exc
        self.emb = torch.zeros(self.size, self.dim, device=self.device)
        self.labels = torch.full((self.size,), -1, dtype=torch.long, device=self.device)
        self.ids = torch.full((self.size,), -1, dtype=torch.long, device=self.device)
        self.ptr = 0
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, embeddings: Any, labels: Any, ids: Any = None) -> None:
        """Append a batch (``ids`` are optional dataset ids kept beside each slot)."""
        dev = self.device
        e = torch.as_tensor(embeddings).detach().to(dev, torch.float32)
        lab = torch.as_tensor(labels).detach().to(dev, torch.long)
        if e.ndim != 2 or e.shape[1] != self.dim or lab.shape != (e.shape[0],):
            raise ValueError(f"embeddings, labels: expected shapes (n, {self.dim}) and (n,), got {tuple(e.shape)} "
                             f"and {tuple(lab.shape)}")
        if not torch.isfinite(e).all():
            raise ValueError("embeddings: expected finite values, got NaN or inf")
        if ids is None:
            i = torch.full((e.shape[0],), -1, dtype=torch.long, device=dev)
        else:
            i = torch.as_tensor(ids).detach().to(dev, torch.long)
            if i.shape != (e.shape[0],):
                raise ValueError(f"ids: expected {e.shape[0]} ids (one per embedding), got shape {tuple(i.shape)}")
        e, lab, i = e[-self.size:], lab[-self.size:], i[-self.size:]
        pos = (self.ptr + torch.arange(len(e), device=dev)) % self.size
        self.emb[pos], self.labels[pos], self.ids[pos] = e, lab, i
        self.ptr = int((self.ptr + len(e)) % self.size)
        self.count = min(self.size, self.count + len(e))

    def negatives(self, embeddings: Any, labels: Any, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, k)`` memory slots of the nearest different-label entries (``-1`` where fewer) and
        distances, on the device of ``embeddings``."""
        q = torch.as_tensor(embeddings).detach()
        out_dev = q.device
        e = q.to(self.device, torch.float32)
        lab = torch.as_tensor(labels).detach().to(self.device, torch.long)
        d = pairwise_distance(e, self.emb[: self.count], self.distance)
        d = torch.where(lab[:, None] != self.labels[None, : self.count], d, torch.inf)
        kk = min(C.positive_int(k, "k"), self.count)
        vals, slots = torch.topk(d, kk, dim=1, largest=False) if kk else (d[:, :0], d[:, :0].long())
        slots = torch.where(torch.isfinite(vals), slots, -1)
        return slots.to(out_dev), vals.to(out_dev)
