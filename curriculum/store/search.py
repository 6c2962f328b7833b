"""The store's search paths (a part composed into :class:`~curriculum.EmbeddingStore`): nearest
ids with exclusions and label filters; the index's candidates re-scored at the current vectors.

Every method here runs under the store's lock (the caller takes it): the faiss index is not
safe against a concurrent ``add``.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from ..neighbors import brute_knn, exact_topk, first_k_valid, get_metric, sort_dedupe
from .index import IndexManager, ivf_of
from .rows import Rows

BITMAP_BITS_PER_ROW = 64  # a label filter is a bitmap over the ids while the largest id is below this many a row
WIDEN = 4  # a label-filtered search probes up to this many times nprobe lists while its lists lack other-label rows


def _nearest_lists(q: np.ndarray, cent: np.ndarray, ip: bool, allowed: np.ndarray,
                   width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``width`` nearest allowed lists (``-1`` past the allowed ones) and its score
    to each, in faiss's convention (inner product, or squared L2), for ``search_preassigned``."""
    import torch

    score = torch.from_numpy(q) @ torch.from_numpy(cent).T
    if not ip:
        score = 2.0 * score - torch.from_numpy((cent * cent).sum(1))[None, :]  # -||q - c||^2 + ||q||^2
    score.masked_fill_(torch.from_numpy(~allowed), -torch.inf)
    sq_t, iq_t = torch.topk(score, width, dim=1)  # ~10x faster than numpy's argpartition here
    sq, iq = sq_t.numpy(), iq_t.numpy()
    iq = np.where(np.isfinite(sq), iq, -1).astype(np.int64)
    dq = sq if ip else (q * q).sum(1)[:, None] - sq
    return iq, np.ascontiguousarray(np.where(np.isfinite(dq), dq, 0.0), np.float32)


class Search:
    """Search over ``rows`` through ``im``'s index (or exactly when there is none)."""

    def __init__(self, rows: Rows, im: IndexManager, metric: str) -> None:
        self.rows, self.im, self.metric = rows, im, get_metric(metric)

    # ------------------------------------------------------------------ label filters
    def _label_params(self, label: int, version: int) -> Any:
        """faiss search parameters whose ID selector skips every id carrying ``label``, cached: a
        bitmap of the other ids where the ids are dense enough (a bit per id up to the largest, at
        most :data:`BITMAP_BITS_PER_ROW` a row: one lookup per scanned entry - with a hash set of
        the label's ids the check cost more than the distances, 2x the 1M CNN features' search at
        nprobe 64), else the label's ids in a hash set, negated."""
        cache = self.im.cache
        key = ("sel", version, int(label))
        hit = cache.get(key)
        if hit is not None:
            return hit[-1]
        all_ids, labels = self.rows.live("ids"), self.rows.live("labels")
        if len(all_ids) and 0 <= all_ids.min() and all_ids.max() < BITMAP_BITS_PER_ROW * len(all_ids) + 2 ** 16:
            allowed = all_ids[labels != label]
            mask = np.zeros(int(all_ids.max()) + 1, bool)
            mask[allowed] = True
            bits = np.packbits(mask, bitorder="little")
            held: tuple[Any, ...] = (bits, faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)))
        else:
            ids = np.ascontiguousarray(all_ids[labels == label])
            inner = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids))
            held = (ids, inner, faiss.IDSelectorNot(inner))
        params = faiss.SearchParametersIVF(sel=held[-1], nprobe=ivf_of(self.im.index).nprobe)
        if len(cache) > 64:  # drop the selectors, keep the per-list label counts
            keep = {k: v for k, v in cache.items() if k[0] == "lists"}
            cache.clear()
            cache.update(keep)
        cache[key] = (*held, params)
        return params

    def candidates(self, q: np.ndarray, kf: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids) of ``kf`` nearest candidates per query, sorted, at the current vectors."""
        index = self.im.index
        if index is None:
            return self.exact(q, kf)
        kq = min(2 * kf + 8, max(int(index.ntotal), 1))
        _, cand = index.search(q, kq)
        return self.rerank(q, cand, kf, None)

    def exact(self, q: np.ndarray, kf: int, labs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact search over every row (with ``labs``: rows of another label than the query's)."""
        r = self.rows
        if r.n == 0:
            return np.full((len(q), kf), np.inf, np.float32), np.full((len(q), kf), -1, np.int64)
        if labs is None:
            d, rows = brute_knn(q, r.live("vec"), kf, self.metric.name)
        else:  # one masked matrix product per chunk of rows, every query at once
            d, rows = exact_topk(q, r.live("vec"), kf, self.metric.name, labs, r.live("labels"))
        return d, np.where(rows >= 0, r.ids[np.maximum(rows, 0)], -1)

    def rerank(self, q: np.ndarray, cand: np.ndarray, kf: int, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact distances of candidate ids at the current vectors; stale, removed and (with
        ``labels``) same-label candidates dropped; sorted, de-duplicated, ``kf`` kept."""
        r = self.rows
        rows = r.lookup(cand)
        live = (cand >= 0) & (rows >= 0)
        if labels is not None:
            live &= r.labels[np.maximum(rows, 0)] != labels[:, None]
        d = self.metric.pair_distances(q, r.vec[np.maximum(rows, 0)]).astype(np.float32)
        d, ids = sort_dedupe(np.where(live, d, np.inf), np.where(live, cand, -1))
        return d[:, :kf], ids[:, :kf]

    def _list_label_counts(self, ivf: Any, version: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(label values, per-list count of each label, centroids) of an IVF index: which inverted
        lists hold rows of which label. Cached per index and brought up to date incrementally: rows
        added or updated since (their new index entries) are assigned to their lists and counted;
        entries left stale by updates and removals stay counted, which only errs towards probing a
        list or filtering it (the re-rank drops what is stale). A full recount runs for a new index,
        a new label or a large change."""
        key = ("lists",)
        b = self.rows
        hit = self.im.cache.get(key)
        if hit is not None:
            values, counts, cent, seen = hit
            if seen == version:
                return values, counts, cent
            changed = np.flatnonzero(b.version[: b.n] > seen)
            labs = b.labels[changed]
            codes = np.minimum(np.searchsorted(values, labs), len(values) - 1)
            if changed.size <= max(b.n // 20, 1) and (values[codes] == labs).all():
                lists = ivf.quantizer.assign(np.ascontiguousarray(b.vec[changed]), 1)[:, 0] if changed.size else changed
                np.add.at(counts, (lists, codes), 1)
                self.im.cache[key] = (values, counts, cent, version)
                return values, counts, cent
        values, codes = np.unique(b.labels[: b.n], return_inverse=True)
        inv = ivf.invlists
        sizes = np.array([inv.list_size(li) for li in range(ivf.nlist)], np.int64)
        entry_ids = np.empty(int(sizes.sum()), np.int64)
        pos = 0
        for li in np.flatnonzero(sizes):
            entry_ids[pos:pos + sizes[li]] = faiss.rev_swig_ptr(inv.get_ids(int(li)), int(sizes[li]))
            pos += sizes[li]
        rows = b.lookup(entry_ids)
        list_of = np.repeat(np.arange(ivf.nlist), sizes)
        counts = np.zeros((ivf.nlist, len(values)), np.int64)
        ok = rows >= 0
        np.add.at(counts, (list_of[ok], codes[rows[ok]]), 1)
        cent = np.ascontiguousarray(ivf.quantizer.reconstruct_n(0, ivf.nlist), np.float32)
        self.im.cache[key] = (values, counts, cent, version)
        return values, counts, cent

    def _label_probe_search(self, q: np.ndarray, kf: int, labs: np.ndarray, version: int) -> tuple[np.ndarray, np.ndarray]:
        """Label-filtered candidates from an IVF index, probing only lists that hold rows of another
        label: each anchor's ``nprobe`` nearest *useful* lists (a list holding only the anchor's
        label is never scanned - on label-clustered embeddings most of a plain probe would be),
        and past them, up to :data:`WIDEN` x ``nprobe``, the next ones while the lists before hold
        fewer than the rows wanted of another label (an anchor left short is answered exactly:
        on the 1M CNN features at nprobe 16 that exact fallback was 2/3 of the time).
        Anchors whose probed lists are all free of their label need no ID filter and share one
        faiss call; the others are filtered per label inside faiss."""
        ivf = self.im.index if isinstance(self.im.index, faiss.IndexIVF) else None
        if ivf is None:  # a graph index (HNSW) cannot route around an excluded neighbourhood (its
            return self.exact(q, kf, labs)  # filtered search stalls in the anchor's cluster): exact
        values, counts, cent = self._list_label_counts(ivf, version)
        code = np.searchsorted(values, labs)
        known = (code < len(values)) & (values[np.minimum(code, len(values) - 1)] == labs)
        total = counts.sum(1)
        other = total[:, None] - counts  # rows of other labels per list
        allowed = np.ones((len(q), ivf.nlist), bool)
        allowed[known] = (other[:, code[known]] > 0).T
        # a fresh IVFFlat holds the current vectors: its distances are exact and its hits live, so
        # no margin and no re-ranking are needed (an updated store or compressed codes re-rank)
        exact_codes = self.im.stale == 0 and isinstance(ivf, faiss.IndexIVFFlat)
        kq = min(kf if exact_codes else 2 * kf + 8, max(int(ivf.ntotal), 1))
        nprobe = min(ivf.nprobe, ivf.nlist)
        width = min(ivf.nlist, WIDEN * nprobe)
        iq, dq = _nearest_lists(q, cent, ivf.metric_type == faiss.METRIC_INNER_PRODUCT, allowed, width)
        lists = np.maximum(iq, 0)
        held = np.where(known[:, None], other[lists, np.where(known, code, 0)[:, None]], total[lists])
        held *= iq >= 0  # rows of another label in each probed list
        iq[(np.arange(width) >= nprobe) & (np.cumsum(held, 1) - held >= kq)] = -1  # past nprobe only while short
        mixed = np.zeros(len(q), bool)
        mixed[known] = (counts[np.maximum(iq[known], 0), code[known][:, None]] * (iq[known] >= 0)).any(1)
        cand = np.full((len(q), kq), -1, np.int64)
        cand_d = np.full((len(q), kq), np.inf, np.float32)
        groups = [(np.flatnonzero(~mixed), None)] + [
            (np.flatnonzero(mixed & (labs == c)), int(c)) for c in np.unique(labs[mixed])]
        for rows, label in groups:
            if rows.size == 0:
                continue
            params = faiss.SearchParametersIVF(nprobe=width) if label is None else self._label_params(label, version)
            params.nprobe = width
            qq = np.ascontiguousarray(q[rows], np.float32)
            a_i = np.ascontiguousarray(iq[rows])
            a_d = np.ascontiguousarray(dq[rows])
            out_d = np.empty((rows.size, kq), np.float32)
            out_i = np.empty((rows.size, kq), np.int64)
            ivf.search_preassigned_c(rows.size, faiss.swig_ptr(qq), kq, faiss.swig_ptr(a_i), faiss.swig_ptr(a_d),
                                     faiss.swig_ptr(out_d), faiss.swig_ptr(out_i), False, params)
            cand[rows], cand_d[rows] = out_i, out_d
        if exact_codes:
            d = self.metric.to_distance(cand_d)
            d[cand < 0] = np.inf
            return d, np.where(np.isfinite(d), cand, -1)
        return self.rerank(q, cand, kf, labs)

    # ------------------------------------------------------------------ search
    def fetch(self, q: np.ndarray, kf: int, labs: np.ndarray | None, version: int) -> tuple[np.ndarray, np.ndarray]:
        """``kf`` nearest per query (other-label only with ``labs``); rows the index leaves short
        of ``kf`` (a small ``nprobe``, stale entries) are answered exactly instead."""
        if self.im.index is None:
            return self.exact(q, kf, labs)
        d, ids = self.candidates(q, kf) if labs is None else self._label_probe_search(q, kf, labs, version)
        short = np.flatnonzero((ids >= 0).sum(1) < min(kf, self.rows.n))
        if short.size:
            d[short], ids[short] = self.exact(q[short], kf, None if labs is None else labs[short])
        return d, ids

    def search(self, q: np.ndarray, k: int, excl: np.ndarray | None, labs: np.ndarray | None,
               version: int) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`EmbeddingStore.search` (arguments validated there)."""
        extra = 0 if excl is None else (excl.shape[1] if excl.ndim == 2 else excl.size)
        # excluded ids rarely sit among a query's nearest: fetch a margin first and widen only
        # the rows left short (a batch of 256 excluded ids no longer multiplies the search)
        fetch = k + min(extra, k + 16)
        d, ids = self.fetch(q, fetch, labs, version)
        ok = (ids >= 0) & ~self.excluded(ids, excl)
        short = np.flatnonzero(ok.sum(1) < k) if fetch < k + extra else np.zeros(0, np.int64)
        if short.size:
            d2, i2 = self.fetch(q[short], k + extra, None if labs is None else labs[short], version)
            sub = None if excl is None else (excl[short] if excl.ndim == 2 else excl)
            pad = ((0, 0), (0, extra - (fetch - k)))
            d = np.pad(d, pad, constant_values=np.inf)
            ids = np.pad(ids, pad, constant_values=-1)
            ok = np.pad(ok, pad, constant_values=False)
            d[short], ids[short], ok[short] = d2, i2, (i2 >= 0) & ~self.excluded(i2, sub)
        return first_k_valid(d, ids, ok, k)

    @staticmethod
    def excluded(ids: np.ndarray, excl: np.ndarray | None) -> np.ndarray:
        """Mask of ``ids`` that ``excl`` (1-D shared, or 2-D per query) rules out."""
        if excl is None or (excl.ndim == 2 and not excl.shape[1]):
            return np.zeros(ids.shape, bool)
        if excl.ndim == 2:
            return (ids[:, :, None] == excl[:, None, :]).any(-1)
        return np.isin(ids, excl)


__all__ = ['Search']
