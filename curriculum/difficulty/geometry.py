"""Geometry difficulty scores, read from the embedding store (higher = harder).

Every score goes through the store's kNN graph (exact for small stores, the faiss index beyond)
computed in chunks, so a million samples fit in memory. ``knn_distance``, ``prototype_distance``,
``label_disagreement``, ``label_entropy``, ``class_margin`` and ``near_duplicates`` also take a
:class:`~curriculum.store.ShardedStore` (every rank calls them; each gets its own shard's rows,
:meth:`ShardedStore.gather` makes them global). Distances follow the store's metric
(*smaller = nearer*, see :mod:`curriculum.knn`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .._util import checks as C
from ..neighbors import blocked_knn, brute_knn
from .._util.progress import progress_bar, want
from ..store import EmbeddingStore, ShardedStore
from .base import Difficulty

LABEL_RECALL = 0.9
"""Recall target of the graph under the label scores (``label_disagreement``, ``label_entropy``):
a vote over ``k`` (about 50) neighbours barely moves when a few of them are the next-nearest
instead. On ``curriculum bench --sections noise`` (three real sets, symmetric and pairwise noise)
the default ``label_noise`` AUC moved by at most 0.0006 against a 0.95 target, at 4-15% less
graph time on the image sets (the text sets' graph is exact at either target); a graph already
cached at a higher target (or the exact one) is reused."""


def _check_store(store: EmbeddingStore, k: int | None = None, labels: bool = False, sharded: bool = False) -> None:
    kinds = (EmbeddingStore, ShardedStore) if sharded else EmbeddingStore
    if not isinstance(store, kinds):
        raise TypeError(f"store: expected an EmbeddingStore{' or a ShardedStore' if sharded else ''}, "
                        f"got {type(store).__name__}")
    if len(store) < 2:
        raise ValueError(f"store: expected at least 2 rows, got {len(store)}")
    if k is not None:
        C.positive_int(k, "k")
        if k > len(store) - 1:
            raise ValueError(f"k: expected at most {len(store) - 1} (store size minus the sample itself), got {k}")
    if labels and not store.has_labels:
        missing = int((store.labels < 0).sum())
        raise ValueError(f"store: this score needs a label on every row, {missing} of {len(store)} rows have none "
                         "(pass labels= to store.add)")


def _neighbour_labels(store: EmbeddingStore, k: int, progress: bool | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d, nb = store.knn(k, progress=progress, target_recall=LABEL_RECALL)
    labels = store.labels
    return d, store.labels_of(nb), labels


def knn_distance(store: EmbeddingStore, k: int = 10, progress: bool | None = None) -> Difficulty:
    """Mean distance to the ``k`` nearest other samples: outliers and rare modes are hard.

    Example:
        >>> scores = knn_distance(store, k=10)        # doctest: +SKIP
    """
    _check_store(store, k, sharded=True)
    d, _ = store.knn(k, progress=progress)
    return Difficulty(d.astype(np.float64).mean(axis=1), store.ids, f"knn_distance(k={k})")


def prototype_distance(store: EmbeddingStore, n_clusters: int = 10, seed: int = 0, niter: int = 20,
                       progress: bool | None = None) -> Difficulty:
    """``1 - cos(z, nearest centroid)`` of spherical k-means (Sorscher et al. 2022, SSL prototypes).

    Samples far from every prototype are atypical, hence hard.

    Example:
        >>> import numpy as np
        >>> store = EmbeddingStore(2, metric="cosine"); _ = store.add(np.array([[1., 0], [1, .1], [0, 1], [.1, 1], [1, 1]]))
        >>> d = prototype_distance(store, n_clusters=2)
        >>> int(d.order()[-1])   # the diagonal point, between both prototypes, is hardest
        4
    """
    _check_store(store, sharded=True)
    km = store.kmeans(n_clusters, seed=seed, niter=niter, spherical=True, progress=progress)
    return Difficulty(km.distances.astype(np.float64), store.ids, f"prototype_distance(n_clusters={n_clusters})")


def label_k(store: EmbeddingStore) -> int:
    """The default ``k`` of the label scores: 5 neighbours per class, between 10 and 50, at most a
    quarter of the median class size (at least 5) and ``N - 1``. Measured on ``curriculum bench
    --sections noise``: ``k = 50`` finds flipped labels better than ``k = 10`` on every set (10
    classes: AUC 0.972 -> 0.983; 59 classes: 0.911 -> 0.958), at 1.1-1.2x the time; with few rows
    per class a large ``k`` reaches into other classes by necessity. Every label score takes an
    explicit ``k`` instead.

    Example:
        >>> import numpy as np
        >>> store = EmbeddingStore(1, metric="l2")
        >>> _ = store.add(np.arange(1000.)[:, None], labels=np.arange(1000) % 10)
        >>> label_k(store)   # 10 classes of 100 rows: min(50, 100 // 4)
        25
    """
    sizes = _class_sizes(store)
    sizes = sizes[sizes > 0]
    k = int(np.clip(5 * len(sizes), 10, 50))
    return int(max(1, min(k, max(5, int(np.median(sizes)) // 4), len(store) - 1)))


def _class_sizes(store: EmbeddingStore) -> np.ndarray:
    lab = store.labels[store.labels >= 0]
    if isinstance(store, ShardedStore):  # over every shard
        top = int(store.comm.all_reduce(np.array([lab.max() if len(lab) else -1], np.int64), "max")[0])
        return store.comm.all_reduce(np.bincount(lab, minlength=top + 1))
    return np.bincount(lab)


def label_disagreement(store: EmbeddingStore, k: int | None = None, progress: bool | None = None) -> Difficulty:
    """``1 -`` the share of the ``k`` nearest neighbours that carry the sample's own label
    (default ``k``: :func:`label_k`, from the number and size of the classes).

    High for mislabelled samples and for samples deep in another class's region.

    Example:
        >>> import numpy as np
        >>> store = EmbeddingStore(1, metric="l2")
        >>> _ = store.add(np.array([[0.], [1], [2], [10], [11], [12]]), labels=[0, 0, 1, 1, 1, 1])
        >>> label_disagreement(store, k=2).scores.round(2).tolist()
        [0.5, 0.5, 1.0, 0.0, 0.0, 0.0]
    """
    _check_store(store, k, labels=True, sharded=True)
    k = label_k(store) if k is None else k
    _, nl, lab = _neighbour_labels(store, k, progress)
    return Difficulty(1.0 - (nl == lab[:, None]).mean(axis=1), store.ids, f"label_disagreement(k={k})")


def label_entropy(store: EmbeddingStore, k: int | None = None, progress: bool | None = None) -> Difficulty:
    """Entropy (nats) of the label histogram of the ``k`` nearest neighbours: class boundaries are
    hard (default ``k``: :func:`label_k`).

    Example:
        >>> import numpy as np
        >>> store = EmbeddingStore(1, metric="l2")
        >>> _ = store.add(np.array([[0.], [1], [2], [10], [11], [12]]), labels=[0, 0, 1, 1, 1, 1])
        >>> (label_entropy(store, k=2).scores > 0).tolist()
        [True, True, False, False, False, False]
    """
    _check_store(store, k, labels=True, sharded=True)
    k = label_k(store) if k is None else k
    _, nl, lab = _neighbour_labels(store, k, progress)
    n_cls = int(max(lab.max(), nl.max())) + 1
    counts = np.zeros((len(lab), n_cls))
    np.add.at(counts, (np.repeat(np.arange(len(lab)), k), nl.ravel()), 1.0)
    p = counts / k
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return Difficulty(h + 0.0, store.ids, f"label_entropy(k={k})")


def class_margin(store: EmbeddingStore, k: int = 10, progress: bool | None = None) -> Difficulty:
    """Distance to the nearest same-class sample minus distance to the nearest other-class sample.

    Positive when another class is nearer than the sample's own (hard). Samples whose nearest
    same- or other-class neighbour is not among their ``k`` nearest are resolved by a search
    restricted to that class (or its complement): exact for stores searched exactly (up to
    ``exact_threshold`` rows), through the blocked kNN engine beyond (one label-aware pass finds
    every row's nearest other-class row at once). ``k`` trades speed only. A
    sample alone in its class takes the largest same-class distance seen. On a
    :class:`~curriculum.store.ShardedStore` (collective; this shard's rows) the other-class rows
    come from the sharded label-filtered graph and the missing same-class ones from searches over
    every shard with k widening 4x (equal to one process on exactly searched shards).

    Example:
        >>> import numpy as np
        >>> store = EmbeddingStore(1, metric="l2")
        >>> _ = store.add(np.array([[0.], [1], [5], [6]]), labels=[0, 0, 1, 0])
        >>> class_margin(store, k=2).order()[-1].item()   # id 3 sits in class 1's cluster
        3
    """
    _check_store(store, k, labels=True, sharded=True)
    d, nl, lab = _neighbour_labels(store, k, progress)
    progress = want(progress, len(store))
    d_same, d_other = _first_same_and_other(d, nl, lab)
    if isinstance(store, ShardedStore):
        return _class_margin_sharded(store, k, d_same, d_other, lab)
    vec = store.vectors()
    exact = len(store) <= store.exact_threshold or store.index_spec == "flat"

    def nearest(q_rows: np.ndarray, base_rows: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        if exact or len(base_rows) <= 4096:
            return brute_knn(vec[q_rows], vec[base_rows], kk, store.metric)
        return blocked_knn(vec[q_rows], kk, store.metric, base=vec[base_rows], progress=progress)

    classes = np.unique(lab)
    if not exact and len(classes) > 1 and np.isnan(d_other).any():
        # one label-aware blocked pass gives every row its nearest other-class row (blocks of one
        # class probe the nearest blocks of other classes) instead of one search per class
        dd, rr = blocked_knn(vec, 1, store.metric, labels=lab, progress=progress)
        fill = np.isnan(d_other) & (rr[:, 0] >= 0)
        d_other[fill] = dd[fill, 0]
    for c in classes:
        in_c = np.flatnonzero(lab == c)
        out_c = np.flatnonzero(lab != c)
        need = in_c[np.isnan(d_same[in_c])]
        if need.size and in_c.size > 1:
            dd, rr = nearest(need, in_c, 2)
            self_hit = in_c[np.maximum(rr, 0)] == need[:, None]
            pick = np.argmax(~self_hit, axis=1)
            d_same[need] = dd[np.arange(len(need)), pick]
        need = in_c[np.isnan(d_other[in_c])]
        if need.size and out_c.size:
            dd, _ = nearest(need, out_c, 1)
            d_other[need] = dd[:, 0]
    return _margin(store, k, d_same, d_other, lambda a, op: a)


def _first_same_and_other(d: np.ndarray, nl: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the first same-label and the first other-label row of each kNN list (NaN: none)."""
    same = nl == lab[:, None]
    rows = np.arange(len(lab))
    d_same = np.where(same.any(axis=1), d[rows, np.argmax(same, axis=1)], np.nan).astype(np.float64)
    d_other = np.where((~same).any(axis=1), d[rows, np.argmax(~same, axis=1)], np.nan).astype(np.float64)
    return d_same, d_other


def _margin(store: Any, k: int, d_same: np.ndarray, d_other: np.ndarray, reduce: Any) -> Difficulty:
    """The score once the nearest distances are known. A sample alone in its class takes the
    largest same-class distance seen; with a single class there is no other-class neighbour.
    ``reduce(array, "max")`` makes a maximum global (an all-reduce on a sharded store)."""
    def global_max(v: np.ndarray) -> float:
        return float(reduce(np.array([np.nanmax(v) if np.isfinite(v).any() else -np.inf]), "max")[0])

    lonely = np.isnan(d_same) | np.isinf(d_same)
    top = global_max(np.where(lonely, np.nan, d_same))
    d_same[lonely] = top if np.isfinite(top) else 0.0
    d_other[np.isnan(d_other)] = global_max(d_same)
    return Difficulty(d_same - d_other, store.ids, f"class_margin(k={k})")


def _class_margin_sharded(store: ShardedStore, k: int, d_same: np.ndarray, d_other: np.ndarray,
                          lab: np.ndarray) -> Difficulty:
    """:func:`class_margin` over the shards (this shard's rows; collective). The nearest
    other-class row of every row comes from one label-filtered pass of the sharded graph when
    any row anywhere lacks one; a row whose nearest same-class row is not in its k nearest is
    searched for over every shard with k widening 4x until it turns up."""
    comm, n = store.comm, len(store)
    if int(comm.all_reduce(np.array([np.isnan(d_other).sum()]))[0]):
        dd, ii = store.knn(1, exclude_same_label=True)
        fill = np.isnan(d_other) & (ii[:, 0] >= 0)
        d_other[fill] = dd[fill, 0]
    need, fetch = np.flatnonzero(np.isnan(d_same)), 4 * k
    while int(comm.all_reduce(np.array([need.size]))[0]):
        ids = store.ids[need]
        dd, ii = store.search(store.vectors(ids), min(fetch, n), exclude_ids=ids[:, None])
        got = np.full(ii.shape, -2, np.int64)
        got[ii >= 0] = store.labels_of(ii[ii >= 0])
        hit = got == lab[need][:, None]
        found = hit.any(axis=1)
        d_same[need[found]] = dd[found, np.argmax(hit[found], axis=1)]
        done = fetch >= n  # every row was searched: what is left is alone in its class
        need, fetch = (need[:0] if done else need[~found]), fetch * 4
    return _margin(store, k, d_same, d_other, comm.all_reduce)


def near_duplicates(store: EmbeddingStore, threshold: float = 0.95, n_clusters: int | None = None,
                    seed: int = 0, block: int = 2048, progress: bool | None = None) -> list[np.ndarray]:
    """Groups of near-duplicate ids: cosine similarity above ``threshold`` (SemDeDup, Abbas et al. 2023).

    Vectors are clustered by spherical k-means (``n_clusters`` defaults to ``N // 1000``, at
    least 1) and pairs are compared only within a cluster, in blocks. With ``n_clusters=1`` the
    answer is exact. Groups are the connected components of the duplicate graph, each sorted,
    listed by their smallest id. On a :class:`~curriculum.store.ShardedStore` (collective; every
    rank gets all the groups) each cluster is compared on one rank, its rows sent there once.

    Example:
        >>> import numpy as np
        >>> store = EmbeddingStore(2, metric="cosine"); _ = store.add(np.array([[1., 0], [1, 1e-3], [0, 1]]))
        >>> [g.tolist() for g in near_duplicates(store, threshold=0.99)]
        [[0, 1]]
    """
    _check_store(store, sharded=True)
    threshold = C.finite_float(threshold, "threshold", -1.0, 1.0)
    n = len(store)
    nc = max(1, n // 1000) if n_clusters is None else C.positive_int(n_clusters, "n_clusters")
    vec = store.vectors()
    if store.metric != "cosine":
        vec = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
    assign = np.zeros(len(vec), np.int64) if nc == 1 else store.kmeans(nc, seed=seed, spherical=True).assignments
    if isinstance(store, ShardedStore):
        return _near_duplicates_sharded(store, vec, assign, threshold, block, progress)
    src, dst = _duplicate_pairs(vec, assign, threshold, block, want(progress, n))
    return _groups(store.ids[src], store.ids[dst])


def _duplicate_pairs(vec: np.ndarray, assign: np.ndarray, threshold: float, block: int,
                     progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs ``(i, j)`` of one cluster that join the cluster's rows whose cosine similarity
    (unit rows) exceeds ``threshold`` into the same components: every cluster's rows against each
    other, in blocks of ``block`` rows, joined by union-find as each block is scanned - a spanning
    forest (at most one pair per row), never the list of all pairs above the threshold."""
    from ._dup_kernels import forest_edges, join_above

    src, dst = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    order = np.argsort(assign, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(assign[order]) != 0]) if len(order) else np.zeros(0, np.int64)
    limit = np.float32(threshold)  # the float32 comparison numpy makes with a Python float
    with progress_bar(total=len(vec), desc="near-duplicates", disable=not progress) as bar:
        for members in np.split(order, starts[1:]):
            x = np.ascontiguousarray(vec[members], np.float32)
            parent = np.arange(len(members), dtype=np.int64)
            for s in range(0, len(members), block):
                join_above(x[s:s + block] @ x.T, limit, s, parent)
            rows, roots = forest_edges(parent)
            src.append(members[rows])
            dst.append(members[roots])
            bar.update(len(members))
    return np.concatenate(src), np.concatenate(dst)


def _groups(src: np.ndarray, dst: np.ndarray) -> list[np.ndarray]:
    """Connected components of the duplicate edges (ids), each sorted, listed by their smallest id."""
    if src.size == 0:
        return []
    nodes, inv = np.unique(np.concatenate([src, dst]), return_inverse=True)
    g = coo_matrix((np.ones(src.size), (inv[:src.size], inv[src.size:])), shape=(len(nodes), len(nodes)))
    _, comp = connected_components(g, directed=False)
    o = np.argsort(comp, kind="stable")
    groups = [np.sort(nodes[part]) for part in np.split(o, np.flatnonzero(np.diff(comp[o])) + 1)]
    return sorted(groups, key=lambda g_: int(g_[0]))


def _near_duplicates_sharded(store: ShardedStore, vec: np.ndarray, assign: np.ndarray, threshold: float,
                             block: int, progress: bool | None) -> list[np.ndarray]:
    """:func:`near_duplicates` over the shards (collective; every rank gets all the groups): each
    cluster's rows travel to one rank (cluster ``c`` to rank ``c % world``: every row moves once,
    ``N x dim`` floats in all), its pairs are compared there, and the duplicate edges (two ids
    each, few) are gathered by every rank for the components."""
    comm = store.comm
    order = np.argsort(assign % comm.world, kind="stable")
    cuts = np.cumsum(np.bincount(assign % comm.world, minlength=comm.world))[:-1]
    got = [np.concatenate(comm.exchange(np.split(a[order], cuts))) for a in (vec, store.ids, assign)]
    src, dst = _duplicate_pairs(got[0], got[2], threshold, block, want(progress, len(got[0])))
    ids = got[1]
    return _groups(np.concatenate(comm.all_gather(ids[src])), np.concatenate(comm.all_gather(ids[dst])))


__all__ = ['knn_distance', 'prototype_distance', 'label_disagreement', 'label_entropy', 'label_k', 'LABEL_RECALL',
           'class_margin', 'near_duplicates']
