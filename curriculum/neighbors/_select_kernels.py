"""Compiled selection of each row's ``k`` smallest scores under a bound (numba, cached on disk,
GIL released): :func:`smallest_k_under`.

The blocked engine scores a block's queries against their own block first, then the nearer
blocks; the ``k``-th smallest score of those leading columns bounds each row's ``k``-th smallest
overall, and on data the engine is chosen for (neighbourhoods that follow the blocks) only a few
``k`` of a row's 1-2 thousand scores fall under it; a sharded ring's visiting rows bring their
own bound (the ``k``-th found so far). One pass keeps what falls under it, a quickselect and a
sort finish.

A few queries against many rows (:func:`~curriculum.neighbors.kernels.exact_topk`) keep a running
top-k per query instead (:func:`merge_smallest`): after the first few thousand rows a query's
``k``-th best rejects almost every score with one comparison; so do the blocked engine's blocks
at small ``k`` (:func:`smallest_k_running`).

Also each row's ``k`` best of a few hundred candidates by distance, ties by id
(:func:`first_k_by_distance_then_id`: the sharded store's merges of per-shard lists), and the
column of each row's smallest score once its value is known (:func:`first_at`: a row minimum by
``torch.amin`` reads the scores ~10x faster than ``torch.min`` with indices here).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _swap(v, i, a, b):
    v[a], v[b] = v[b], v[a]
    i[a], i[b] = i[b], i[a]


@njit(cache=True)
def _keep_smallest(v, i, cnt, k):
    """Reorder ``v[:cnt]`` (``i`` alongside) so that ``v[:k]`` holds its ``k`` smallest
    (quickselect, Hoare partition around the median of three)."""
    lo, hi, want = 0, cnt - 1, k - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if v[mid] < v[lo]:
            _swap(v, i, mid, lo)
        if v[hi] < v[lo]:
            _swap(v, i, hi, lo)
        if v[hi] < v[mid]:
            _swap(v, i, hi, mid)
        pivot = v[mid]
        a, b = lo, hi
        while a <= b:
            while v[a] < pivot:
                a += 1
            while v[b] > pivot:
                b -= 1
            if a <= b:
                _swap(v, i, a, b)
                a += 1
                b -= 1
        if want <= b:
            hi = b
        elif want >= a:
            lo = a
        else:
            break


@njit(cache=True, inline="always")
def _collect(score, r, t, bv, bi):
    """Row ``r``'s entries <= ``t`` and their columns into ``bv``, ``bi``; returns how many."""
    cnt = 0
    for j in range(score.shape[1]):
        s = score[r, j]
        if s <= t:
            bv[cnt] = s
            bi[cnt] = j
            cnt += 1
    return cnt


@njit(cache=True, nogil=True)
def smallest_k_under(score, bound, k, out_v, out_i):
    """``out_v[r]``, ``out_i[r]``: the (at most ``k``) smallest entries of ``score[r]`` that are
    <= ``bound[r]``, ascending, then ``inf`` / ``-1`` - for rows that need only what beats what
    they already hold (a ring's running top-k)."""
    n, m = score.shape
    bv = np.empty(m, score.dtype)
    bi = np.empty(m, np.int64)
    for r in range(n):
        cnt = _collect(score, r, bound[r], bv, bi)
        if cnt > k:
            _keep_smallest(bv, bi, cnt, k)
            cnt = k
        _insertion_sort(bv, bi, cnt)
        for a in range(k):
            out_v[r, a] = bv[a] if a < cnt else np.inf
            out_i[r, a] = bi[a] if a < cnt else -1


@njit(cache=True, inline="always")
def _merge_row(score, r, offset, best_v, best_i, keep_inf):
    """Fold row ``r`` of ``score`` into row ``r`` of the running top-k (see :func:`merge_smallest`);
    ``keep_inf``: ``inf`` entries fill slots still empty (NaN never enters)."""
    k = best_v.shape[1]
    bound = best_v[r, k - 1]
    room = keep_inf and best_i[r, k - 1] < 0
    for j in range(score.shape[1]):
        s = score[r, j]
        if s < bound or (room and s == s):
            a = k - 1
            while a > 0 and (best_v[r, a - 1] > s or best_i[r, a - 1] < 0):
                best_v[r, a] = best_v[r, a - 1]
                best_i[r, a] = best_i[r, a - 1]
                a -= 1
            best_v[r, a] = s
            best_i[r, a] = offset + j
            bound = best_v[r, k - 1]
            room = keep_inf and best_i[r, k - 1] < 0


@njit(cache=True, parallel=True)
def merge_smallest(score, offset, best_v, best_i):
    """Fold each row of ``score`` (columns = rows ``offset``, ``offset + 1``, ... of the searched
    set) into that row's running top-k ``best_v`` / ``best_i`` (ascending; ``inf`` / ``-1`` =
    empty): an entry enters only below the current ``k``-th, so of equal scores the one seen first
    (the smaller row) stays; ``inf`` and NaN never enter. Rows in parallel."""
    for r in prange(score.shape[0]):
        _merge_row(score, r, offset, best_v, best_i, False)


@njit(cache=True, nogil=True)
def smallest_k_running(score, out_v, out_i):
    """``out_v[r]``, ``out_i[r]``: the ``k = out_v.shape[1]`` smallest entries of ``score[r]`` and
    their columns, ascending (of equal scores the earlier column first; ``inf`` entries count,
    NaN never enters), by one running top-k pass per row (:func:`merge_smallest`'s, serial: the
    blocked engine calls it from its own threads)."""
    out_v[:] = np.inf
    out_i[:] = -1
    for r in range(score.shape[0]):
        _merge_row(score, r, 0, out_v, out_i, True)


@njit(cache=True, inline="always")
def _insertion_sort(v, i, k):
    """Sort ``v[:k]`` ascending, ``i`` alongside (k is a few dozen)."""
    for a in range(1, k):
        sv, si = v[a], i[a]
        b = a - 1
        while b >= 0 and v[b] > sv:
            v[b + 1] = v[b]
            i[b + 1] = i[b]
            b -= 1
        v[b + 1] = sv
        i[b + 1] = si


@njit(cache=True, parallel=True)
def first_k_by_distance_then_id(d, ids, k, out_d, out_i):
    """``out_d[r]``, ``out_i[r]``: the ``k`` first of row ``r``'s candidates in the order of
    distance, then id (``-1`` - no candidate - after every id): one stable sort of the distances,
    then each run of equal distances that reaches into the first ``k`` ordered by id."""
    n, m = d.shape
    big = np.iinfo(np.int64).max
    for r in prange(n):
        o = np.argsort(d[r], kind="mergesort")
        a = 0
        while a < k:
            b = a + 1
            while b < m and d[r, o[b]] == d[r, o[a]]:
                b += 1
            for i in range(a + 1, b):  # a run of equal distances (short): insertion sort by id
                v = o[i]
                kv = ids[r, v] if ids[r, v] >= 0 else big
                j = i - 1
                while j >= a:
                    kj = ids[r, o[j]] if ids[r, o[j]] >= 0 else big
                    if kj <= kv:
                        break
                    o[j + 1] = o[j]
                    j -= 1
                o[j + 1] = v
            a = b
        for j in range(k):
            out_d[r, j] = d[r, o[j]]
            out_i[r, j] = ids[r, o[j]]


@njit(cache=True, parallel=True)
def first_at(score, value, out_i):
    """``out_i[r]``: the first column of row ``r`` holding ``value[r]`` (the row's minimum from a
    vectorised reduction: torch's ``min`` returns the first of equal minima too). Rows are scanned
    64 columns at a time with a branch-free test, then inside the block that holds it; a row
    without it (a NaN minimum) gets its first NaN."""
    n, k = score.shape
    for r in prange(n):
        target = value[r]
        found = -1
        j = 0
        while j < k and found < 0:
            e = min(k, j + 64)
            hit = False
            for t in range(j, e):
                hit |= (score[r, t] == target) | (score[r, t] != score[r, t])
            if hit:
                for t in range(j, e):
                    if score[r, t] == target or score[r, t] != score[r, t]:
                        found = t
                        break
            j = e
        out_i[r] = found
