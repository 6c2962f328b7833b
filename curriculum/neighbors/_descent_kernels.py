"""Compiled kernels of the NN-descent engine (numba, ``parallel``, cached on disk).

Conventions: ``x`` is a C-contiguous float32 matrix; ``kind`` 0 ranks by ``-<a, b>`` (ip, and
cosine on L2-normalised rows), 1 by the squared L2 distance. A node's list is a max-heap of
``K`` entries (``dist[i, 0]`` is its worst), ``idx = -1`` marks an empty slot, ``flag`` 1 a
neighbour not yet joined. Every parallel phase writes only rows it owns (node ``i`` belongs to
thread ``i % T``), and updates are applied in a fixed order, so the graph does not depend on the
thread count or timing. Random choices come from a counter-based hash of (seed, ...): no state.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_M = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@njit(cache=True, inline="always")
def _hash(a: int, b: int, c: int) -> np.uint64:
    """splitmix64 of three integers: a deterministic pseudo-random 64-bit value."""
    z = np.uint64(a) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(b) * np.uint64(0xD1B54A32D192ED03) \
        + np.uint64(c) * np.uint64(0x8CB92BA72F3D8DD7)
    z = (z ^ (z >> np.uint64(30))) * _M
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@njit(cache=True, fastmath=True, inline="always")
def _dist(x, a, b, kind):
    s = np.float32(0.0)
    if kind == 0:
        for t in range(x.shape[1]):
            s += x[a, t] * x[b, t]
        return -s
    for t in range(x.shape[1]):
        u = x[a, t] - x[b, t]
        s += u * u
    return s


@njit(cache=True, inline="always")
def _push(dist, idx, flag, i, d, j, f):
    """Insert neighbour ``j`` at ``d`` into node ``i``'s heap unless it is no better than the
    worst or already listed; 1 if inserted."""
    if d >= dist[i, 0]:
        return 0
    K = dist.shape[1]
    for t in range(K):
        if idx[i, t] == j:
            return 0
    pos = 0
    while True:
        c = 2 * pos + 1
        if c >= K:
            break
        if c + 1 < K and dist[i, c + 1] > dist[i, c]:
            c += 1
        if dist[i, c] <= d:
            break
        dist[i, pos], idx[i, pos], flag[i, pos] = dist[i, c], idx[i, c], flag[i, c]
        pos = c
    dist[i, pos], idx[i, pos], flag[i, pos] = d, j, f
    return 1


@njit(cache=True, fastmath=True, inline="always")
def _hyperplane(x, perm, s, e, seed, stream, step, angular, normal):
    """The hyperplane halfway between two rows of ``perm[s:e]`` picked by hashes of ``(seed,
    stream, step)``: ``normal`` is filled, the offset returned (0 when ``angular``)."""
    m = e - s
    a = perm[s + np.int64(_hash(seed, stream, 2 * step) % np.uint64(m))]
    b = perm[s + np.int64(_hash(seed, stream, 2 * step + 1) % np.uint64(m - 1))]
    if b == a:
        b = perm[e - 1]
    off = np.float32(0.0)
    for t in range(x.shape[1]):
        normal[t] = x[a, t] - x[b, t]
        if not angular:
            off -= normal[t] * (x[a, t] + x[b, t]) * np.float32(0.5)
    return off


@njit(cache=True, inline="always")
def _side(v, seed, tree, row):
    """1 above the hyperplane, 0 below; a row on it goes to a hashed side."""
    if v == 0:
        return np.uint8(_hash(seed, tree, row) & np.uint64(1))
    return np.uint8(1) if v > 0 else np.uint8(0)


@njit(cache=True, inline="always")
def _partition(perm, s, e, side, n_left):
    """Reorder ``perm[s:e]`` so the ``n_left`` rows of side 1 (``side`` by position from ``s``)
    come first; a degenerate split (all on one side: duplicates) is halved instead. Returns the
    size of the first part."""
    m = e - s
    if n_left == 0 or n_left == m:
        return m // 2
    lo, hi = s, e - 1
    while lo < hi:
        if side[lo - s] == 1:
            lo += 1
        elif side[hi - s] == 0:
            hi -= 1
        else:
            perm[lo], perm[hi] = perm[hi], perm[lo]
            side[lo - s], side[hi - s] = side[hi - s], side[lo - s]
    return n_left


@njit(cache=True, fastmath=True)
def _split_down(x, leaf_size, seed, tree, angular, perm, stack, top, bounds, n_leaves):
    """Split the pending segments ``stack[:top]`` of ``perm`` depth first until every piece has
    at most ``leaf_size`` rows, appending each leaf's start to ``bounds``; returns the leaf count."""
    n, d = x.shape
    normal = np.empty(d, np.float32)
    side = np.empty(n, np.uint8)
    step = 0
    while top > 0:
        top -= 1
        s, e = stack[top, 0], stack[top, 1]
        if e - s <= leaf_size:
            bounds[n_leaves] = s
            n_leaves += 1
            continue
        step += 1
        off = _hyperplane(x, perm, s, e, seed, tree, step, angular, normal)
        n_left = 0
        for r in range(s, e):
            v = off
            for t in range(d):
                v += normal[t] * x[perm[r], t]
            side[r - s] = _side(v, seed, tree, perm[r])
            n_left += side[r - s]
        n_left = _partition(perm, s, e, side, n_left)
        stack[top, 0], stack[top, 1] = s, s + n_left
        stack[top + 1, 0], stack[top + 1, 1] = s + n_left, e
        top += 2
    return n_leaves


@njit(cache=True, parallel=True, fastmath=True)
def _sides(x, seed, node, normals, offs, side):
    """Every row's side of its segment's hyperplane in every tree, in one pass over the rows in
    memory order (``node[t, r]``: the row's active segment in tree ``t``, -1 when in a leaf).
    Four trees at a time: each element of the row serves four hyperplanes."""
    n_trees, n = node.shape
    for r in prange(n):
        for t0 in range(0, n_trees, 4):  # past the last tree, the last tree's plane again (unused)
            t1, t2, t3 = min(t0 + 1, n_trees - 1), min(t0 + 2, n_trees - 1), min(t0 + 3, n_trees - 1)
            j0, j1, j2, j3 = max(node[t0, r], 0), max(node[t1, r], 0), max(node[t2, r], 0), max(node[t3, r], 0)
            v0, v1, v2, v3 = offs[t0, j0], offs[t1, j1], offs[t2, j2], offs[t3, j3]
            for q in range(x.shape[1]):
                e = x[r, q]
                v0 += normals[t0, j0, q] * e
                v1 += normals[t1, j1, q] * e
                v2 += normals[t2, j2, q] * e
                v3 += normals[t3, j3, q] * e
            vals = (v0, v1, v2, v3)
            for a in range(4):
                t = t0 + a
                if t < n_trees and node[t, r] >= 0:
                    side[t, r] = _side(vals[a], seed, t, r)


@njit(cache=True, parallel=True, fastmath=True)
def rp_forest(x, n_trees, leaf_size, seed, angular, sync_segments):
    """``n_trees`` random-projection trees: ``(perms, bounds, n_leaves)``, tree ``t``'s leaf ``l``
    = ``perms[t, bounds[t, l]:bounds[t, l + 1]]`` (at most ``leaf_size`` rows). The upper levels
    (while a tree has at most ``sync_segments`` segments) are split level by level for all trees
    at once - one pass over the rows in memory order per level (:func:`_sides`) instead of one
    gather of scattered rows per tree and level; the small segments below are split depth first,
    in cache."""
    n, d = x.shape
    perms = np.empty((n_trees, n), np.int32)
    bounds = np.zeros((n_trees, n + 1), np.int64)
    counts = np.zeros(n_trees, np.int64)
    seg = np.zeros((n_trees, sync_segments, 2), np.int64)
    n_seg = np.zeros(n_trees, np.int64)
    node = np.zeros((n_trees, n), np.int32)
    for t in prange(n_trees):
        for r in range(n):
            perms[t, r] = r
        if n <= leaf_size:
            counts[t] = 1
            node[t] = -1
        else:
            seg[t, 0, 1], n_seg[t] = n, 1
    normals = np.empty((n_trees, sync_segments, d), np.float32)
    offs = np.zeros((n_trees, sync_segments), np.float32)
    side = np.zeros((n_trees, n), np.uint8)
    level = 0
    while n_seg.max() > 0 and 2 * n_seg.max() <= sync_segments:
        level += 1
        for t in prange(n_trees):
            for j in range(n_seg[t]):
                offs[t, j] = _hyperplane(x, perms[t], seg[t, j, 0], seg[t, j, 1], seed, level * n_trees + t, j,
                                         angular, normals[t, j])  # streams apart from _split_down's (tree)
        _sides(x, seed, node, normals, offs, side)
        for t in prange(n_trees):
            n_seg[t], counts[t] = _split_level(perms[t], seg[t], n_seg[t], side[t], node[t], leaf_size,
                                               bounds[t], counts[t])
    for t in prange(n_trees):
        stack = np.empty((n + 2, 2), np.int64)  # pending segments are disjoint and non-empty
        stack[:n_seg[t]] = seg[t, :n_seg[t]]
        counts[t] = _split_down(x, leaf_size, seed, t, angular, perms[t], stack, n_seg[t], bounds[t], counts[t])
        bounds[t, counts[t]] = n
        bounds[t, :counts[t] + 1] = np.sort(bounds[t, :counts[t] + 1])
    return perms, bounds, counts


@njit(cache=True)
def _split_level(perm, seg, n_seg, side, node, leaf_size, bounds, n_leaves):
    """One tree's level: partition each active segment by its rows' ``side``; the halves of at
    most ``leaf_size`` rows become leaves (their starts appended to ``bounds``), the others the
    next level's segments (``seg``, ``node`` updated). Returns ``(segments, leaves)``."""
    buf = np.empty(len(perm), np.uint8)
    nxt = np.empty((2 * n_seg, 2), np.int64)
    c = 0
    for j in range(n_seg):
        s, e = seg[j, 0], seg[j, 1]
        n_left = 0
        for r in range(s, e):
            buf[r - s] = side[perm[r]]
            n_left += buf[r - s]
        cut = s + _partition(perm, s, e, buf, n_left)
        for lo, hi in ((s, cut), (cut, e)):
            if hi - lo <= leaf_size:
                bounds[n_leaves] = lo
                n_leaves += 1
                label = -1
            else:
                nxt[c, 0], nxt[c, 1] = lo, hi
                label = c
                c += 1
            for r in range(lo, hi):
                node[perm[r]] = label
    seg[:c] = nxt[:c]
    return c, n_leaves


@njit(cache=True, fastmath=True, inline="always")
def _dist2x2(x, a0, a1, b0, b1, kind):
    """:func:`_dist` of the four pairs ``(a0, b0), (a0, b1), (a1, b0), (a1, b1)`` in one pass:
    each loaded element serves two pairs (1.5-1.7x four :func:`_dist` calls on rows in cache)."""
    s00 = s01 = s10 = s11 = np.float32(0.0)
    if kind == 0:
        for t in range(x.shape[1]):
            u0, u1, v0, v1 = x[a0, t], x[a1, t], x[b0, t], x[b1, t]
            s00 += u0 * v0
            s01 += u0 * v1
            s10 += u1 * v0
            s11 += u1 * v1
        return -s00, -s01, -s10, -s11
    for t in range(x.shape[1]):
        u0, u1, v0, v1 = x[a0, t], x[a1, t], x[b0, t], x[b1, t]
        s00 += (u0 - v0) * (u0 - v0)
        s01 += (u0 - v1) * (u0 - v1)
        s10 += (u1 - v0) * (u1 - v0)
        s11 += (u1 - v1) * (u1 - v1)
    return s00, s01, s10, s11


@njit(cache=True, inline="always")
def _push_pair(dist, idx, flag, a, b, d):
    _push(dist, idx, flag, a, d, b, 1)
    _push(dist, idx, flag, b, d, a, 1)


@njit(cache=True, fastmath=True, inline="always")
def _join_leaf(x, kind, perm, s, e, dist, idx, flag):
    """Every pair of rows ``perm[s:e]`` into both rows' heaps, the rows taken two by two against
    two by two (:func:`_dist2x2`)."""
    u = s
    while u + 1 < e:
        a0, a1 = perm[u], perm[u + 1]
        _push_pair(dist, idx, flag, a0, a1, _dist(x, a0, a1, kind))
        v = u + 2
        while v + 1 < e:
            b0, b1 = perm[v], perm[v + 1]
            d00, d01, d10, d11 = _dist2x2(x, a0, a1, b0, b1, kind)
            _push_pair(dist, idx, flag, a0, b0, d00)
            _push_pair(dist, idx, flag, a0, b1, d01)
            _push_pair(dist, idx, flag, a1, b0, d10)
            _push_pair(dist, idx, flag, a1, b1, d11)
            v += 2
        if v < e:
            b0 = perm[v]
            _push_pair(dist, idx, flag, a0, b0, _dist(x, a0, b0, kind))
            _push_pair(dist, idx, flag, a1, b0, _dist(x, a1, b0, kind))
        u += 2


@njit(cache=True, parallel=True, fastmath=True)
def join_leaves(x, kind, perm, bounds, n_leaves, dist, idx, flag):
    """Score every pair inside each leaf of one tree into both rows' heaps (leaves are disjoint,
    so leaves run in parallel without sharing a row). Returns the pairs scored."""
    scored = np.zeros(n_leaves, np.int64)
    for leaf in prange(n_leaves):
        s, e = bounds[leaf], bounds[leaf + 1]
        _join_leaf(x, kind, perm, s, e, dist, idx, flag)
        scored[leaf] = (e - s) * (e - s - 1) // 2
    return scored.sum()


@njit(cache=True, parallel=True, fastmath=True)
def fill_random(x, kind, seed, dist, idx, flag):
    """Fill the empty slots of every heap with random rows (scored), as NN-descent starts."""
    n, K = idx.shape
    for i in prange(n):
        tries = 0
        while idx[i, 0] < 0 and tries < 4 * K + 16:
            j = np.int64(_hash(seed, i, 7919 + tries) % np.uint64(n))
            tries += 1
            if j != i:
                _push(dist, idx, flag, i, _dist(x, i, j, kind), j, 1)


@njit(cache=True, parallel=True, fastmath=True)
def seed_lists(x, kind, init, dist, idx, flag):
    """Put each row's known neighbours ``init[i]`` (rows, ``-1`` pads) into its heap, scored and
    flagged old (already joined with each other)."""
    for i in prange(idx.shape[0]):
        for t in range(init.shape[1]):
            j = init[i, t]
            if j >= 0 and j != i:
                _push(dist, idx, flag, i, _dist(x, i, j, kind), j, 0)


@njit(cache=True, parallel=True)
def build_candidates(idx, flag, n_cand, seed, it, n_threads):
    """Each node's sampled new and old candidates: its neighbours and reverse neighbours, at most
    ``n_cand`` of each kind, picked by a hashed priority. Sampled new neighbours become old.
    Reverse neighbours are gathered first (:func:`_reverse_lists`), so each node fills its own
    heaps from rows in order (at 1M rows 2.3x faster than pushing into the targets' heaps)."""
    n, K = idx.shape
    new_i = np.full((n, n_cand), -1, np.int32)
    old_i = np.full((n, n_cand), -1, np.int32)
    new_p = np.full((n, n_cand), np.inf, np.float32)  # heaps on the priority: the smallest are kept
    old_p = np.full((n, n_cand), np.inf, np.float32)
    unused = np.zeros((n, n_cand), np.uint8)
    pri = np.empty((n, K), np.float32)
    for i in prange(n):
        for s in range(K):
            j = idx[i, s]
            pri[i, s] = np.float32(_hash(seed + it, min(i, j), max(i, j)) >> np.uint64(40))
    active = np.zeros(n, np.uint8)  # nodes with a new candidate: only they join, so only they need old ones
    for i in range(n):
        for s in range(K):
            if flag[i, s] and idx[i, s] >= 0:
                active[i] = 1
                active[idx[i, s]] = 1
    start, src_p, src_i, src_f = _reverse_lists(idx, flag, pri, n_threads)
    for j in prange(n):
        for s in range(K):
            i = idx[j, s]
            if i < 0:
                continue
            if flag[j, s]:
                _push(new_p, new_i, unused, j, pri[j, s], i, 0)
            elif active[j]:
                _push(old_p, old_i, unused, j, pri[j, s], i, 0)
        for r in range(start[j], start[j + 1]):
            if src_f[r]:
                _push(new_p, new_i, unused, j, src_p[r], src_i[r], 0)
            elif active[j]:
                _push(old_p, old_i, unused, j, src_p[r], src_i[r], 0)
    for i in prange(n):
        for s in range(K):
            if flag[i, s]:
                for c in range(n_cand):
                    if new_i[i, c] == idx[i, s]:
                        flag[i, s] = 0
                        break
    return new_i, old_i


@njit(cache=True)
def _reverse_lists(idx, flag, pri, n_threads):
    """Reverse neighbours as compressed rows: node ``j``'s are ``src_i[start[j]:start[j + 1]]``
    (ascending), with the pair's priority and new-flag copied beside them - independent writes
    instead of a dependent, cache-missing heap push per list entry."""
    n = idx.shape[0]
    start = np.zeros(n + 1, np.int64)
    none_i, none_p, none_f = np.empty(0, np.int32), np.empty(0, np.float32), np.empty(0, np.uint8)
    _reverse_pass(idx, flag, pri, n_threads, True, start, none_i, none_p, none_f)
    for j in range(n):
        start[j + 1] += start[j]
    fill = start[:-1].copy()
    src_i = np.empty(start[n], np.int32)
    src_p = np.empty(start[n], np.float32)
    src_f = np.empty(start[n], np.uint8)
    _reverse_pass(idx, flag, pri, n_threads, False, fill, src_i, src_p, src_f)
    return start, src_p, src_i, src_f


@njit(cache=True, parallel=True)
def _reverse_pass(idx, flag, pri, n_threads, count, at, src_i, src_p, src_f):
    """One pass over every list entry ``(i, s)`` pointing at ``j``, thread ``t`` handling the
    ``j`` of the ``t``-th range only: with ``count``, ``at[j + 1]`` counts them; else each is
    written at ``at[j]`` (then advanced)."""
    n, K = idx.shape
    for t in prange(n_threads):
        lo, hi = t * n // n_threads, (t + 1) * n // n_threads
        for i in range(n):
            for s in range(K):
                j = idx[i, s]
                if lo <= j < hi:
                    if count:
                        at[j + 1] += 1
                    else:
                        r = at[j]
                        src_i[r], src_p[r], src_f[r] = i, pri[i, s], flag[i, s]
                        at[j] = r + 1


@njit(cache=True, inline="always")
def _listed(idx, i, j):
    found = False
    for t in range(idx.shape[1]):  # no early exit: the loop compiles to a few vector compares
        found |= idx[i, t] == j
    return found


@njit(cache=True, inline="always")
def _record(dist, idx, a, b, d, base, c, ua, ub, ud):
    """Record pair (a, b) at distance ``d`` if it improves an end that does not list the other
    yet (the lists are read only for pairs that beat an end's worst); the sign of the stored row
    says which: ``ub = b`` improves ``b``'s list, ``-1 - b`` does not (likewise ``ua``).
    Returns the new count."""
    to_a = d < dist[a, 0]
    to_b = d < dist[b, 0]
    if not (to_a or to_b) or a == b:  # most pairs: no list to check
        return c
    to_a = to_a and not _listed(idx, a, b)
    to_b = to_b and not _listed(idx, b, a)
    if not (to_a or to_b):
        return c
    ua[base + c] = a if to_a else -1 - a
    ub[base + c] = b if to_b else -1 - b
    ud[base + c] = d
    return c + 1


@njit(cache=True, inline="always")
def _valid_candidates(new_i, old_i, i, comb):
    """Row ``i``'s new candidates then its old ones (``-1`` slots left out) into ``comb``;
    returns ``(new, all)`` counts."""
    m = 0
    for p in range(new_i.shape[1]):
        if new_i[i, p] >= 0:
            comb[m] = new_i[i, p]
            m += 1
    total = m
    for q in range(old_i.shape[1]):
        if old_i[i, q] >= 0:
            comb[total] = old_i[i, q]
            total += 1
    return m, total


@njit(cache=True, parallel=True, fastmath=True)
def _join_chunk(x, kind, new_i, old_i, dist, idx, lo, hi, slot, ua, ub, ud, cnt, combs):
    """Local join of nodes ``lo..hi``: candidate pairs (new x new, new x old) closer than either
    end's current worst, written to node-owned slots of ``ua / ub / ud``. Each node's new
    candidates go two at a time against the candidates after them (:func:`_dist2x2`); ``combs``
    holds each node's valid candidates (one row per node of the chunk)."""
    for i in prange(lo, hi):
        comb = combs[i - lo]
        m, total = _valid_candidates(new_i, old_i, i, comb)
        base = (i - lo) * slot
        c = 0
        p = 0
        while p < m:
            a0 = comb[p]
            if p + 1 == m:  # the last new candidate: against the old ones
                for q in range(m, total):
                    c = _record(dist, idx, a0, comb[q], _dist(x, a0, comb[q], kind), base, c, ua, ub, ud)
                break
            a1 = comb[p + 1]
            c = _record(dist, idx, a0, a1, _dist(x, a0, a1, kind), base, c, ua, ub, ud)
            q = p + 2
            while q < total:
                b0 = comb[q]
                b1 = comb[q + 1] if q + 1 < total else b0
                d00, d01, d10, d11 = _dist2x2(x, a0, a1, b0, b1, kind)
                c = _record(dist, idx, a0, b0, d00, base, c, ua, ub, ud)
                c = _record(dist, idx, a1, b0, d10, base, c, ua, ub, ud)
                if q + 1 < total:
                    c = _record(dist, idx, a0, b1, d01, base, c, ua, ub, ud)
                    c = _record(dist, idx, a1, b1, d11, base, c, ua, ub, ud)
                q += 2
            p += 2
        cnt[i - lo] = c


@njit(cache=True, parallel=True)
def _apply(ua, ub, ud, cnt, slot, dist, idx, flag, n_threads):
    """Apply the recorded updates to the ends they improved, each row by its owning thread, in
    slot order."""
    changed = np.zeros(n_threads, np.int64)
    for t in prange(n_threads):
        for r in range(cnt.shape[0]):
            base = r * slot
            for u in range(cnt[r]):
                a, b, d = ua[base + u], ub[base + u], ud[base + u]
                ra = a if a >= 0 else -1 - a
                rb = b if b >= 0 else -1 - b
                if a >= 0 and ra % n_threads == t:
                    changed[t] += _push(dist, idx, flag, ra, d, rb, 1)
                if b >= 0 and rb % n_threads == t:
                    changed[t] += _push(dist, idx, flag, rb, d, ra, 1)
    return changed.sum()


@njit(cache=True)
def local_join(x, kind, new_i, old_i, dist, idx, flag, chunk, n_threads):
    """One NN-descent round over all nodes, in chunks of ``chunk`` nodes; returns
    ``(heap updates, pairs scored)``."""
    n, nc = new_i.shape
    slot = nc * (nc - 1) // 2 + nc * old_i.shape[1]
    ua = np.empty(chunk * slot, np.int32)
    ub = np.empty(chunk * slot, np.int32)
    ud = np.empty(chunk * slot, np.float32)
    cnt = np.zeros(chunk, np.int64)
    combs = np.empty((chunk, nc + old_i.shape[1]), np.int32)
    changed = 0
    scored = 0
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        cnt[:] = 0
        _join_chunk(x, kind, new_i, old_i, dist, idx, lo, hi, slot, ua, ub, ud, cnt, combs)
        changed += _apply(ua, ub, ud, cnt[:hi - lo], slot, dist, idx, flag, n_threads)
        for i in range(lo, hi):
            m = 0
            for p in range(nc):
                m += new_i[i, p] >= 0
            o = 0
            for p in range(old_i.shape[1]):
                o += old_i[i, p] >= 0
            scored += m * (m - 1) // 2 + m * o
    return changed, scored


@njit(cache=True, parallel=True)
def sort_heaps(dist, idx):
    """Each row's heap in ascending distance order (in place)."""
    for i in prange(dist.shape[0]):
        order = np.argsort(dist[i])
        dist[i] = dist[i][order]
        idx[i] = idx[i][order]


@njit(cache=True, parallel=True, fastmath=True)
def rescore(x, kind, idx, k):
    """Each row's ``k`` nearest among its listed rows, scored again on ``x`` (the full vectors
    after a search in a reduced space, or lists merged from two sources): ``(raw scores
    ascending, rows)``, a row listed twice kept once, ``-1`` / ``inf`` padding."""
    n, K = idx.shape
    out_d = np.full((n, k), np.inf, np.float32)
    out_i = np.full((n, k), -1, np.int64)
    for i in prange(n):
        d = np.empty(K, np.float32)
        for s in range(K):
            j = idx[i, s]
            d[s] = _dist(x, i, j, kind) if j >= 0 else np.inf
        order = np.argsort(d, kind="mergesort")
        got = 0
        for s in range(K):
            j = idx[i, order[s]]
            if got == k or j < 0:  # empty slots sort last
                break
            dv = d[order[s]]
            t = got - 1  # a repeat scores the same: look among the entries of equal score kept so far
            while t >= 0 and out_d[i, t] == dv and out_i[i, t] != j:
                t -= 1
            if t < 0 or out_d[i, t] != dv:
                out_d[i, got] = dv
                out_i[i, got] = j
                got += 1
    return out_d, out_i


__all__ = ["rp_forest", "join_leaves", "fill_random", "build_candidates", "local_join", "sort_heaps", "rescore"]
