"""Curating uncurated, long-tailed pools: hierarchical k-means, balanced selection, de-duplication.

Vo et al. 2024 ("Automatic data curation for self-supervised learning: a clustering-based
approach") cluster the pool with *hierarchical* k-means - each level clusters the previous
level's centroids, and each level is refined by *resampling* (k-means re-run on a balanced
sample drawn from the current clusters, which moves centroids off the dense head and onto the
tail) - and then sample a balanced subset down the hierarchy: at each node the target is split
over the children as ``min(x, |C_j|)`` with ``x`` chosen so that the total meets the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from .._util import checks as C
from .._util.progress import progress_bar, want
from ..neighbors import brute_knn, normalize
from ..store import EmbeddingStore


@dataclass(frozen=True)
class Hierarchy:
    """Clusters at each level: ``assignments[0]`` maps every row to a level-0 (finest) cluster,
    ``assignments[l]`` maps level-``l-1`` clusters to level-``l`` clusters; ``centroids[l]`` too.

    Example:
        >>> import numpy as np
        >>> h = Hierarchy([np.array([0, 0, 1]), np.array([0, 0])], [np.zeros((2, 1)), np.zeros((1, 1))])
        >>> len(h.assignments), h.assignments[0].tolist()
        (2, [0, 0, 1])
    """

    assignments: list[np.ndarray]
    centroids: list[np.ndarray]

    def leaf_of_top(self) -> np.ndarray:
        """Top-level cluster of every row."""
        a = self.assignments[0]
        for m in self.assignments[1:]:
            a = m[a]
        return a


def kmeans_pp_init(x: np.ndarray, k: int, seed: int = 0, sample: int = 50_000) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) on a sample: each new centre is drawn with
    probability proportional to the squared distance to the nearest centre so far, so small,
    distant clusters (the tail) get centres instead of being swallowed by the dense head."""
    rng = np.random.default_rng(seed)
    if len(x) > sample:
        x = x[rng.choice(len(x), sample, replace=False)]
    x = np.ascontiguousarray(x, np.float32)
    centers = np.empty((k, x.shape[1]), np.float32)
    centers[0] = x[rng.integers(len(x))]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for i in range(1, k):
        tot = d2.sum()
        j = rng.choice(len(x), p=d2 / tot) if tot > 0 else rng.integers(len(x))
        centers[i] = x[j]
        d2 = np.minimum(d2, ((x - centers[i]) ** 2).sum(1))
    return centers


def _kmeans(x: np.ndarray, k: int, seed: int, spherical: bool, niter: int = 20, nredo: int | None = None) -> np.ndarray:
    """k-means++ seeded faiss k-means; the best of ``nredo`` restarts (5 for small inputs such as
    the upper levels of a hierarchy, where a bad local optimum splits a mode or merges two)."""
    x = np.ascontiguousarray(x, np.float32)
    redo = nredo if nredo is not None else (5 if len(x) * k <= 5e7 else 1)
    best, best_obj = None, np.inf
    for r in range(redo):
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed + r, spherical=spherical, verbose=False,
                          min_points_per_centroid=1, max_points_per_centroid=1 << 30)
        km.train(x, init_centroids=kmeans_pp_init(x, k, seed + 7919 * r))
        obj = float(km.obj[-1]) if len(km.obj) else 0.0
        better = obj > best_obj if spherical else obj < best_obj  # spherical k-means maximises similarity
        if best is None or better:
            best, best_obj = np.ascontiguousarray(km.centroids, np.float32), obj
    return best


def _assign(x: np.ndarray, cent: np.ndarray, metric: str) -> np.ndarray:
    return brute_knn(np.ascontiguousarray(x, np.float32), cent, 1, metric)[1][:, 0]


def hierarchical_kmeans(vectors: np.ndarray, levels: tuple[int, ...], metric: str = "cosine", seed: int = 0,
                        resample_iters: int = 3, resample_per_cluster: int | None = None,
                        upper: str = "ward", progress: bool | None = None) -> Hierarchy:
    """Hierarchical clustering with resampling refinement (after Vo et al. 2024).

    ``levels`` lists the number of clusters from the finest level to the coarsest (decreasing).
    The finest level is k-means (k-means++ seeded) refined by ``resample_iters`` rounds that
    re-run k-means on a sample of at most ``resample_per_cluster`` points per current cluster
    (default: the median cluster size), so dense regions stop pulling every centroid to them.
    Upper levels cluster the previous level's centroids: by Ward agglomeration (``upper="ward"``,
    the default: on a few hundred or thousand centroids it is cheap and does not split a dense
    mode into several top clusters while merging small ones, as k-means measurably did in our
    tests) or by the same refined k-means (``upper="kmeans"``, Vo et al.'s choice).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
        >>> h = hierarchical_kmeans(x, levels=(20, 4), metric="l2")
        >>> [len(c) for c in h.centroids], h.assignments[0].shape
        ([20, 4], (200,))
    """
    upper = C.choice(upper, "upper", ("ward", "kmeans"))
    x = np.ascontiguousarray(vectors, np.float32)
    if metric == "cosine":
        x = normalize(x)
    ks = [C.positive_int(k, "levels") for k in levels]
    if not ks or any(b >= a for a, b in zip(ks, ks[1:])):
        raise ValueError(f"levels: expected strictly decreasing cluster counts, got {list(levels)}")
    if ks[0] > len(x):
        raise ValueError(f"levels: the finest level asks for {ks[0]} clusters but there are {len(x)} vectors")
    sph = metric == "cosine"
    rng = np.random.default_rng(seed)
    assignments, centroids = [], []
    pts = x
    bar = progress_bar(total=len(ks), desc="hierarchical k-means (levels)", disable=not want(progress, len(x)))
    for li, k in enumerate(ks):
        bar.update(1)
        if li > 0 and upper == "ward":
            from scipy.cluster.hierarchy import fcluster, linkage

            lab = fcluster(linkage(pts.astype(np.float64), "ward"), k, "maxclust") - 1
            lab = np.unique(lab, return_inverse=True)[1]
            cent = np.stack([pts[lab == c].mean(0) for c in range(lab.max() + 1)]).astype(np.float32)
            if sph:
                cent = normalize(cent)
            assignments.append(lab.astype(np.int64))
            centroids.append(cent)
            pts = cent
            continue
        cent = _kmeans(pts, k, seed + li, sph)
        for it in range(resample_iters):
            a = _assign(pts, cent, metric)
            sizes = np.bincount(a, minlength=k)
            r = resample_per_cluster or max(1, int(np.median(sizes[sizes > 0])))
            pick = np.concatenate([rng.choice(np.flatnonzero(a == c), min(r, s), replace=False)
                                   for c, s in enumerate(sizes) if s > 0])
            if len(pick) < k:
                break
            cent = _kmeans(pts[pick], k, seed + 1000 * (li + 1) + it, sph)
        assignments.append(_assign(pts, cent, metric))
        centroids.append(cent)
        pts = cent
    bar.close()
    return Hierarchy(assignments, centroids)


def _water_fill(sizes: np.ndarray, target: int) -> np.ndarray:
    """Allot ``min(x, size_j)`` per child with the largest ``x`` whose total is <= target, then hand
    the remainder one by one to the children with room (largest remaining capacity first)."""
    target = int(min(target, sizes.sum()))
    if target <= 0:
        return np.zeros_like(sizes)
    s = np.sort(sizes)
    # find x: sum(min(x, s)) = target
    cum = np.concatenate([[0], np.cumsum(s)])
    n = len(s)
    x = 0.0
    for i in range(n):
        # with x in [s[i-1], s[i]]: total = cum[i] + x * (n - i)
        x = (target - cum[i]) / (n - i)
        if x <= s[i]:
            break
    alloc = np.minimum(sizes, int(np.floor(x)))
    rest = target - alloc.sum()
    if rest > 0:
        room = sizes - alloc
        order = np.argsort(-room, kind="stable")
        for j in order:
            if rest == 0:
                break
            if room[j] > 0:
                alloc[j] += 1
                rest -= 1
    return alloc


def balanced_select(h: Hierarchy, target: int, seed: int = 0, distances: np.ndarray | None = None) -> np.ndarray:
    """Row positions of a subset of size ``target`` balanced down the hierarchy.

    At every node, the node's quota is split over its children by :func:`_water_fill` on their
    sizes (in rows); inside a finest-level cluster the rows are drawn at random (seeded).

    Example:
        >>> import numpy as np
        >>> h = Hierarchy([np.array([0, 0, 0, 0, 1, 2])], [np.zeros((3, 1), np.float32)])
        >>> sorted(np.bincount(h.assignments[0][balanced_select(h, 3)], minlength=3).tolist())  # one per cluster
        [1, 1, 1]
    """
    rng = np.random.default_rng(seed)
    n_rows = len(h.assignments[0])
    target = C.positive_int(target, "target")
    if target > n_rows:
        raise ValueError(f"target: expected at most the pool size {n_rows}, got {target}")
    # row lists per finest cluster, and row counts per node at every level
    leaf = h.assignments[0]
    rows_of_leaf = [np.flatnonzero(leaf == c) for c in range(len(h.centroids[0]))]
    sizes = [np.array([len(r) for r in rows_of_leaf])]
    children = []
    for lvl in range(1, len(h.assignments)):
        m = h.assignments[lvl]
        kids = [np.flatnonzero(m == c) for c in range(len(h.centroids[lvl]))]
        children.append(kids)
        sizes.append(np.array([sizes[-1][kk].sum() for kk in kids]))
    top = len(h.assignments) - 1
    quota = {(top, c): q for c, q in enumerate(_water_fill(sizes[top], target))}
    for lvl in range(top, 0, -1):
        nxt = {}
        for c, kids in enumerate(children[lvl - 1]):
            q = quota.get((lvl, c), 0)
            if q and len(kids):
                for kid, qq in zip(kids, _water_fill(sizes[lvl - 1][kids], q)):
                    nxt[(lvl - 1, int(kid))] = qq
        quota = nxt
    out = []
    for (lvl, c), q in quota.items():
        if q:
            out.append(rng.choice(rows_of_leaf[c], int(q), replace=False))
    sel = np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)
    return sel


def curate(store: EmbeddingStore, target_size: int, levels: tuple[int, ...] | None = None, seed: int = 0,
           dedup_threshold: float | None = None, resample_iters: int = 3, ids: np.ndarray | None = None,
           progress: bool | None = None) -> np.ndarray:
    """Select ``target_size`` ids from the store, balanced over a hierarchical k-means of it.

    ``levels`` defaults to two levels, ``(~2 sqrt(N), ~sqrt(N) / 2)`` clusters; the top level
    should be close to the number of natural modes of the pool. With ``dedup_threshold``
    (cosine), near-duplicates are removed first (one id kept per group). ``ids`` restricts the
    pool to those stored ids (e.g. the survivors of a de-duplication in another embedding).
    ``progress``: a bar per clustering level (default: on from 50,000 rows).

    Example:
        >>> ids = curate(store, target_size=len(store) // 10)      # doctest: +SKIP
    """
    if not isinstance(store, EmbeddingStore):
        raise TypeError(f"store: expected an EmbeddingStore, got {type(store).__name__}")
    all_ids = store.ids
    vec = store.vectors()
    if ids is not None:
        wanted = C.as_ids(ids, "ids")
        rows = store.rows_of(wanted)
        all_ids, vec = all_ids[rows], vec[rows]
    ids = all_ids
    if dedup_threshold is not None:
        keep = np.intersect1d(deduplicate(store, dedup_threshold, seed=seed), ids)
        rows = np.argsort(ids)[np.searchsorted(np.sort(ids), keep)]
        ids, vec = ids[rows], vec[rows]
    n = len(ids)
    target = C.positive_int(target_size, "target_size")
    if target > n:
        raise ValueError(f"target_size: expected at most {n} (the pool{' after de-duplication' if dedup_threshold else ''}), "
                         f"got {target}")
    if levels is None:
        k1 = int(max(2, min(n // 4, 2 * np.sqrt(n))))
        k2 = int(max(1, min(k1 - 1, np.sqrt(n) / 2)))
        levels = (k1, k2) if k2 >= 2 else (k1,)
    h = hierarchical_kmeans(vec, levels, metric="cosine" if store.metric == "cosine" else "l2", seed=seed,
                            resample_iters=resample_iters, progress=progress)
    return np.sort(ids[balanced_select(h, target, seed=seed)])


def deduplicate(store: EmbeddingStore, threshold: float = 0.95, n_clusters: int | None = None,
                seed: int = 0) -> np.ndarray:
    """Ids kept after SemDeDup-style removal: one id (the smallest) per near-duplicate group.

    Example:
        >>> import numpy as np
        >>> store = EmbeddingStore(2, metric="cosine"); _ = store.add(np.array([[1., 0], [1, 1e-3], [0, 1]]))
        >>> deduplicate(store, threshold=0.99).tolist()
        [0, 2]
    """
    from ..difficulty.geometry import near_duplicates

    groups = near_duplicates(store, threshold, n_clusters=n_clusters, seed=seed)
    drop = np.concatenate([g[1:] for g in groups]) if groups else np.zeros(0, np.int64)
    return np.setdiff1d(store.ids, drop)


def cluster_groups(store: EmbeddingStore, n_clusters: int, seed: int = 0, resample_iters: int = 3) -> np.ndarray:
    """Cluster of every dataset id (``groups[id]``, ``-1`` for ids not stored), for
    ``CurriculumSampler(..., balance="cluster", groups=...)``: k-means++ seeded, resampling-refined
    k-means (one level of :func:`hierarchical_kmeans`), so tail clusters get their own groups.

    Example:
        >>> import numpy as np
        >>> store = EmbeddingStore(2, metric="l2"); _ = store.add(np.array([[0., 0], [0, 1], [9, 9], [9, 8]]))
        >>> g = cluster_groups(store, 2); bool(g[0] == g[1] and g[2] == g[3] and g[0] != g[2])
        True
    """
    n_clusters = C.positive_int(n_clusters, "n_clusters")
    h = hierarchical_kmeans(store.vectors(), (n_clusters,), metric="cosine" if store.metric == "cosine" else "l2",
                            seed=seed, resample_iters=resample_iters)
    ids = store.ids
    groups = np.full(int(ids.max()) + 1, -1, np.int64)
    groups[ids] = h.assignments[0]
    return groups


__all__ = ['Hierarchy', 'kmeans_pp_init', 'hierarchical_kmeans', 'balanced_select', 'curate', 'deduplicate',
           'cluster_groups']
