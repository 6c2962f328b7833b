"""Search over the :class:`~curriculum.EmbeddingStore` (a mixin of it): nearest ids with exclusions
and label filters, candidates from the approximate index re-scored at the current vectors.

Split from ``store.py`` so that each file holds one idea: ``store.py`` the rows and the index
lifecycle, this module the search paths, ``store_graph.py`` the all-points kNN graph.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from . import _checks as C
from .knn import brute_knn, exact_topk, first_k_valid, pair_distances, sort_dedupe, to_distance


class SearchMixin:
    """``search`` and its helpers; relies on the store's buffers, id map, lock and index."""

    _b: Any
    _index: Any
    _index_stale: int
    _lock: Any
    _sel_cache: dict
    _version: int
    metric: str

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
        if len(self._sel_cache) > 64:  # drop the selectors, keep the per-list label counts
            keep = {k: v for k, v in self._sel_cache.items() if k[0] == "lists"}
            self._sel_cache.clear()
            self._sel_cache.update(keep)
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
        """(label values, per-list count of each label, centroids) of an IVF index: which inverted
        lists hold rows of which label. Cached per index and brought up to date incrementally: rows
        added or updated since (their new index entries) are assigned to their lists and counted;
        entries left stale by updates and removals stay counted, which only errs towards probing a
        list or filtering it (the re-rank drops what is stale). A full recount runs for a new index,
        a new label or a large change."""
        key = ("lists", id(self._index))
        b = self._b
        hit = self._sel_cache.get(key)
        if hit is not None:
            values, counts, cent, seen = hit
            if seen == self._version:
                return values, counts, cent
            changed = np.flatnonzero(b.version[: b.n] > seen)
            labs = b.labels[changed]
            codes = np.minimum(np.searchsorted(values, labs), len(values) - 1)
            if changed.size <= max(b.n // 20, 1) and (values[codes] == labs).all():
                lists = ivf.quantizer.assign(np.ascontiguousarray(b.vec[changed]), 1)[:, 0] if changed.size else changed
                np.add.at(counts, (lists, codes), 1)
                self._sel_cache[key] = (values, counts, cent, self._version)
                return values, counts, cent
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
        cent = np.ascontiguousarray(ivf.quantizer.reconstruct_n(0, ivf.nlist), np.float32)
        self._sel_cache[key] = (values, counts, cent, self._version)
        return values, counts, cent

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
        b = self._b
        d, rows = exact_topk(q, b.vec[: b.n], kf, self.metric, labs, b.labels[: b.n])
        return d, np.where(rows >= 0, b.ids[np.maximum(rows, 0)], -1)

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
