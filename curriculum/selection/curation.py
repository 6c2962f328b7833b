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
from typing import Any, Callable

import numpy as np

from .._util import checks as C
from .._util.arrays import label_groups, sorted_unique
from .._util.progress import progress_bar, want
from ..neighbors import brute_knn, nearest_rows, normalize, pca_projection
from ..neighbors import kmeans as KM
from ..neighbors.kmeans import kmeans_pp_init
from ..store import EmbeddingStore, ShardedStore
from ..store.sharded import id_priority
from .leaf_neighbors import leaf_nearest


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


MODE_GAP = 1.2        # a single-linkage merge this much higher than the one before it separates modes
LEVEL_FACTOR = 4      # clusters per level grow by this factor from the modes down to the leaves
MAX_LEAVES = 2048     # finest-level clusters at most (k-means cost and the linkage's k^2 memory)
REDUCE_TO = 128       # rows of more dimensions are clustered on a PCA projection (97% of the variance)
SAMPLE_PER_LEAF = 64  # the finest level is fitted on this many sampled rows per cluster
SPLIT_GAP = 3.0       # a leaf whose 2-means halves lie this many rms radii apart is two leaves (split_joined)
FALLBACK_TOP = 0.5    # without clear modes the top level has n_leaves ** FALLBACK_TOP Ward clusters
WARD_GAP = 1.3        # ... when Ward's merges jump this much somewhere (else: one group over the leaves)
REFERENCE_ALPHA = 1e-2     # a region this unlikely to hold so few reference rows is out of distribution
REFERENCE_EXPECTED = 5.0   # ... judged over the nearest leaves expected to hold this many reference rows
MIN_MODE_ROWS = 3     # a leaf with fewer rows is a stray point, not (part of) a mode
PICK_SEED = 1_000_003  # rows inside a leaf are picked by id_priority(ids, seed + PICK_SEED)
WITHIN = ("random", "far", "near", "unique")  # how the rows inside a leaf are picked (curate's ``within``)
TRIM_SD = 2.0         # "far", "unique": a row farther from its leaf's centroid than the leaf's mean + 2 sd comes last
UNIQUE_POWER = 8      # "unique": a leaf's weight is the mean of its rows' nearest-neighbour distances ** 8
UNIQUE_LEVELS = 1 << 32  # ... each row's term quantised to this many steps of the largest (exact integer sums)
TRIM_LEVELS = 4095    # ... judged on distances quantised to this many steps of the largest (exact sums)
PICK_CHUNK = 65_536   # rows whose distances to their leaf's centroid are computed at once


def clustering_space(vectors: np.ndarray, metric: str, seed: int = 0) -> np.ndarray:
    """Rows as k-means sees them: unit rows for cosine (l2 on the sphere is cosine), and above
    :data:`REDUCE_TO` dimensions a PCA projection keeping 97% of the variance (at most
    ``REDUCE_TO`` dims). l2 on these rows stands in for the store's metric.

    Example:
        >>> import numpy as np
        >>> clustering_space(np.ones((10, 300), np.float32), "cosine").shape[1] <= 128
        True
    """
    x = np.ascontiguousarray(vectors, np.float32)
    if metric == "cosine":
        x = normalize(x)
    if x.shape[1] > REDUCE_TO:
        x = pca_projection(x, 0.97, seed=seed, max_dim=REDUCE_TO)
    return x


def leaf_count(n: int) -> int:
    """Default number of finest-level clusters for ``n`` rows: ``n / 24``, at least ``2 sqrt(n)``,
    at most ``n / 8`` and :data:`MAX_LEAVES`. A trade-off measured on the bench pools: with 500
    modes in 54k rows ``n / 32`` left too few leaves per mode (max/min 4.0), while ``n / 16``
    diluted real rare classes (Fashion-MNIST-LT pixel-PCA: the rarest class's share 1.1%
    against 3.1% at ``n / 32`` and 2.0% at ``n / 24``).

    Example:
        >>> leaf_count(24_000), leaf_count(1_000_000), leaf_count(100)
        (1000, 2048, 12)
    """
    return int(max(2, min(MAX_LEAVES, n // 8, max(2 * np.sqrt(n), n / 24))))


def fit_leaves(x: np.ndarray, k: int, resample_iters: int = 3, seed: int = 0,
               sample: np.ndarray | None = None) -> np.ndarray:
    """The finest level's centroids: seeded k-means on a sample of :data:`SAMPLE_PER_LEAF` rows
    per cluster (drawn from ``x``, or ``sample`` when given), refined by ``resample_iters``
    resampling steps (Vo et al.), and a leaf that holds two groups far apart split in two
    (:func:`split_joined`: ``k`` or a few more centroids). Only the final assignment (by the
    caller) touches every row.

    Example:
        >>> import numpy as np
        >>> fit_leaves(np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32), 10).shape
        (10, 3)
    """
    if sample is None:
        rng = np.random.default_rng(seed)
        sample = x if len(x) <= k * SAMPLE_PER_LEAF else x[np.sort(rng.choice(len(x), k * SAMPLE_PER_LEAF, replace=False))]
    cent = KM.kmeans(sample, k, seed=seed, niter=10)
    return split_joined(sample, KM.resample_refine(sample, cent, resample_iters, seed=seed))


def split_joined(x: np.ndarray, cent: np.ndarray, gap: float = SPLIT_GAP,
                 min_rows: int = MIN_MODE_ROWS) -> np.ndarray:
    """``cent`` with every cluster of ``x`` that holds two groups far apart split in two: its rows'
    2-means halves (each of ``min_rows`` rows or more) whose centres lie more than ``gap`` times
    the halves' rms radius apart. k-means leaves no centroid in some small, distant modes (500
    planted modes in 384-d: 0-3 per fit, each merged into a neighbour's leaf, whose farthest rows
    - all of one side - were then taken, and the other mode got none: max/min 6.0 and 12.0 in 2
    of 16 runs); there the joined leaves stood at 3.3-4.2, the others below 1.2. On real sets the
    ratio of single leaves stayed below 1.8 (Fashion-MNIST-LT CNN) and 2.9 (Debian text, 25k);
    on the 121k Debian rows 7-9 of 2,048 leaves split, with the same subsets' balance. Below 8
    dimensions a leaf of under 20 rows drawn from one Gaussian can pass the test too (its halves
    reached 4.3 radii in 2-d; from 8 dimensions at most 2.2, from 20 rows 2.7): one leaf more
    there. Returns the centroids, the new ones appended.

    Example:
        >>> import numpy as np
        >>> x = np.concatenate([np.zeros((20, 4)), np.full((10, 4), 50.0)]).astype(np.float32)
        >>> x += np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
        >>> sorted(abs(split_joined(x, x.mean(0, keepdims=True)).round(0)[:, 0]).tolist())   # one leaf, two modes
        [0.0, 50.0]
    """
    from ._curation_kernels import two_groups

    gap = C.finite_float(gap, "gap", 0.0, None, low_open=True)
    min_rows = C.positive_int(min_rows, "min_rows")
    labels, _ = KM.assign(x, cent)
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=len(cent)))])
    ratio, a, b = two_groups(np.ascontiguousarray(x, np.float32), order, starts, int(min_rows))
    split = ratio > gap
    out = np.array(cent, np.float32, copy=True)
    out[split] = a[split]
    return np.concatenate([out, b[split].astype(np.float32)])


def mode_cut(centroids: np.ndarray, sizes: np.ndarray | None = None,
             min_gap: float = MODE_GAP, links: Any = None) -> np.ndarray | None:
    """Modes among the leaf centroids, or ``None`` when there is no clear mode structure.

    Single linkage merges the centroids by distance; inside a mode merges stay at the leaf
    spacing, and joining two modes costs a jump. The cut below the largest jump (relative to the
    merge before it; at least ``min_gap``) gives the modes - their number is found, not given.
    Leaves of fewer than :data:`MIN_MODE_ROWS` rows (``sizes``: rows per leaf) are stray points,
    not modes: they stay out of the linkage (where they would bridge modes or pose as modes) and
    join the mode of their nearest leaf.

    ``links`` (a sparse leaves x leaves matrix of rows whose two nearest leaves are the pair,
    :func:`leaf_links`) splits what distance alone cannot: where a dense mode of few, wide
    leaves touches a sparse one of many small leaves, its leaf spacing matches the gap between
    them and single linkage sees no jump; but no row lies between two modes' leaves, so a mode
    whose leaves fall into parts that no row links is split into them. Without a jump, the
    linked parts are the modes when none of them holds half the leaves.

    Example:
        >>> import numpy as np
        >>> c = np.concatenate([np.random.default_rng(0).normal(size=(20, 2)) + m for m in (0, 50, 100)])
        >>> np.bincount(mode_cut(c.astype(np.float32))).tolist()
        [20, 20, 20]
    """
    from scipy.sparse.csgraph import connected_components

    centroids = np.asarray(centroids, np.float32)
    core = np.ones(len(centroids), bool) if sizes is None else np.asarray(sizes) >= MIN_MODE_ROWS
    if int(core.sum()) < 4:
        return None
    modes = _distance_modes(centroids[core], min_gap)
    if links is not None:
        parts = connected_components(links.tocsr()[core][:, core], directed=False)[1]
        if modes is not None:
            modes = np.unique(modes * (parts.max() + 1) + parts, return_inverse=True)[1]
        elif parts.max() > 0 and 2 * np.bincount(parts).max() <= len(parts):
            modes = parts
    if modes is None:
        return None
    out = np.empty(len(centroids), np.int64)
    out[core] = modes
    if not core.all():
        out[~core] = out[core][KM.assign(centroids[~core], centroids[core])[0]]
    return out


def _distance_modes(centroids: np.ndarray, min_gap: float) -> np.ndarray | None:
    """Modes of the (core) centroids cut below single linkage's largest jump, or ``None``."""
    from scipy.cluster.hierarchy import fcluster, linkage

    z = linkage(centroids.astype(np.float64), "single")
    counts, gaps = _merge_gaps(z)
    best = int(np.argmax(gaps))
    if gaps[best] < min_gap:
        return None
    return np.unique(fcluster(z, counts[best], "maxclust"), return_inverse=True)[1].astype(np.int64)


def nearest_leaves(x: np.ndarray, cent: np.ndarray) -> np.ndarray:
    """Each row's 3 nearest leaf centroids (l2, nearest first: the first is its leaf), for
    :func:`leaf_links`; one search, ~20% dearer than the assignment alone.

    Example:
        >>> import numpy as np
        >>> nearest_leaves(np.array([[0.], [2.9]], np.float32), np.array([[0.], [1.], [3.], [9.]], np.float32)).tolist()
        [[0, 1, 2], [2, 1, 0]]
    """
    return nearest_rows(x, cent, "l2", k=min(3, len(cent)))[1]


def leaf_links(nearest: np.ndarray, sizes: np.ndarray) -> Any:
    """Rows between leaves: a symmetric sparse matrix whose ``(i, j)`` entry counts the rows
    whose two nearest leaves of at least :data:`MIN_MODE_ROWS` rows are ``i`` and ``j``
    (``nearest``: each row's nearest leaves, nearest first, 3 columns; ``sizes``: rows per
    leaf). Leaves inside a mode share the rows along their borders; two modes, however close
    their leaves' centroids, share none (or a few where they touch). The reduction a sharded
    run sums over the ranks.

    Example:
        >>> import numpy as np
        >>> nearest = np.array([[0, 1, 2], [1, 0, 2], [2, 3, 0], [3, 2, 1]])
        >>> leaf_links(nearest, np.array([5, 5, 5, 5])).toarray().tolist()
        [[0, 2, 0, 0], [2, 0, 0, 0], [0, 0, 0, 2], [0, 0, 2, 0]]
    """
    from scipy.sparse import coo_matrix

    k = len(sizes)
    core = np.asarray(sizes) >= MIN_MODE_ROWS
    nearest = np.asarray(nearest, np.int64)
    ok = core[nearest]
    first = np.argmax(ok, axis=1)  # the first core leaf of each row ...
    ok[np.arange(len(ok)), first] = False
    second = np.argmax(ok, axis=1)  # ... and the next one
    both = ok.any(axis=1) & core[nearest[np.arange(len(ok)), first]]
    rows = np.flatnonzero(both)
    a, b = nearest[rows, first[rows]], nearest[rows, second[rows]]
    m = coo_matrix((np.ones(len(rows), np.int64), (a, b)), shape=(k, k)).tocsr()
    return (m + m.T).tocsr()


def _ward_levels(centroids: np.ndarray, top: np.ndarray, factor: int = LEVEL_FACTOR) -> list[np.ndarray]:
    """Nested labels of the leaf centroids between the top level and the leaves: inside each top
    cluster, cuts of its Ward dendrogram at ``factor`` times more clusters per level (clusters
    spread over the top clusters in proportion to their leaf counts). Coarsest last."""
    from scipy.cluster.hierarchy import fcluster, linkage

    n_top, k = int(top.max()) + 1, len(centroids)
    counts, levels = [], []
    c = n_top * factor
    while c <= k / factor:
        counts.append(c)
        c *= factor
    trees = {t: linkage(np.asarray(centroids[top == t], np.float64), "ward") for t in range(n_top)
             if (top == t).sum() > 2}
    for c in counts:
        lab = np.empty(k, np.int64)
        offset = 0
        for t in range(n_top):
            rows = np.flatnonzero(top == t)
            want_t = max(1, min(len(rows), round(c * len(rows) / k)))
            sub = np.zeros(len(rows), np.int64) if len(rows) < 2 else (
                np.arange(len(rows)) if t not in trees else fcluster(trees[t], want_t, "maxclust") - 1)
            sub = np.unique(sub, return_inverse=True)[1]
            lab[rows] = offset + sub
            offset += int(sub.max()) + 1
        levels.append(lab)
    return levels


def _maps(leaf_labels: list[np.ndarray]) -> list[np.ndarray]:
    """Nested labels of the leaves (finest first) as Hierarchy maps: cluster at level l -> parent."""
    maps = []
    for fine, coarse in zip(leaf_labels, leaf_labels[1:]):
        m = np.zeros(int(fine.max()) + 1, np.int64)
        m[fine] = coarse
        maps.append(m)
    return maps


def _centroids_of(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    sums, counts = KM.reduce_sums(x, labels, k)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


def auto_hierarchy(vectors: np.ndarray, metric: str = "cosine", n_leaves: int | None = None,
                   resample_iters: int = 3, seed: int = 0, progress: bool | None = None) -> Hierarchy:
    """A hierarchy whose levels are found in the data, not given.

    Leaves: resampling-refined k-means (:func:`fit_leaves`, ``n_leaves`` default
    :func:`leaf_count`). Top: the modes that single linkage separates by a clear jump, split
    where no row lies between their leaves (:func:`mode_cut` with :func:`leaf_links`); without
    one, the leaves themselves grouped by Ward into about ``sqrt(n_leaves)`` clusters. Between
    them, nested Ward cuts ``LEVEL_FACTOR`` apart. Balanced sampling over this hierarchy then
    gives every mode the same share, however many there are.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = np.concatenate([rng.normal(size=(n, 8)) + 20 * m for m, n in enumerate((2000, 200, 20))])
        >>> h = auto_hierarchy(x.astype(np.float32), "l2")
        >>> len(h.centroids[-1])  # three modes found
        3
    """
    return _auto_hierarchy(clustering_space(vectors, metric, seed), n_leaves, resample_iters, seed, progress)


def _auto_hierarchy(x: np.ndarray, n_leaves: int | None, resample_iters: int, seed: int,
                    progress: bool | None, ids: np.ndarray | None = None, above: Any = None) -> Hierarchy:
    """:func:`auto_hierarchy` on rows already in clustering space. With ``ids`` the leaves are
    fitted on the rows of smallest :func:`~curriculum.store.sharded.id_priority` (the sample a
    sharded store draws, so both give the same hierarchy). ``above(leaf centroids, leaf sizes,
    leaf links) -> (maps, centroids)`` makes the levels above the leaves (default
    :func:`upper_levels`)."""
    bar = progress_bar(total=2, desc="curation: leaves, modes", disable=not want(progress, len(x)))
    k = C.positive_int(n_leaves, "n_leaves") if n_leaves is not None else leaf_count(len(x))
    if k > len(x):
        raise ValueError(f"n_leaves: expected at most the number of vectors ({len(x)}), got {k}")
    sample = None if ids is None else x[np.argsort(id_priority(ids, seed))[:k * SAMPLE_PER_LEAF]]
    cent = fit_leaves(x, k, resample_iters, seed, sample)  # k or more (split_joined)
    nearest = nearest_leaves(x, cent)
    rows = nearest[:, 0].copy()
    sizes = np.bincount(rows, minlength=len(cent))
    bar.update(1)
    maps, cents = (above or upper_levels)(cent, sizes, leaf_links(nearest, sizes))
    bar.update(1)
    bar.close()
    return Hierarchy([rows] + maps, cents)


def ward_gap(ward: np.ndarray) -> float:
    """The largest ratio of a Ward merge height to the one before it, over the cuts into 2 to
    ``leaves / 2`` clusters (``ward``: a scipy linkage matrix): how clearly the leaves group at
    some scale (1 for a continuum).

    Example:
        >>> import numpy as np
        >>> from scipy.cluster.hierarchy import linkage
        >>> rng = np.random.default_rng(0)
        >>> blobs = np.concatenate([rng.normal(size=(20, 2)) + m for m in (0, 30)])
        >>> ward_gap(linkage(blobs, "ward")) > 3, ward_gap(linkage(rng.random((40, 2)), "ward")) < 2
        (True, True)
    """
    return float(_merge_gaps(ward)[1].max()) if len(ward) >= 3 else 1.0


def _merge_gaps(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the cuts of linkage ``z`` into 2 to ``leaves / 2`` clusters: the cluster counts, and
    the merge height undone by each cut over the merge before it."""
    k = len(z) + 1
    heights = z[:, 2]
    counts = np.arange(2, k // 2 + 1)  # clusters left after the cut
    before = np.maximum(heights[k - counts - 1], 1e-12 * max(float(heights[-1]), 1e-30))
    return counts, heights[k - counts] / before


def upper_levels(cent: np.ndarray, sizes: np.ndarray,
                 links: Any = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The levels above the leaves (``cent``, with ``sizes`` rows each): the modes on top
    (:func:`mode_cut`, with the rows between the leaves in ``links`` - :func:`leaf_links` -
    where given; else, where Ward's merges show a clear jump - :func:`ward_gap` at least
    :data:`WARD_GAP` - Ward into about ``sqrt(leaves)`` clusters) and nested Ward cuts between;
    returns the Hierarchy maps and the centroids of every level, leaves first. Leaves with no
    grouping at any scale (a continuum, such as sentence embeddings of a software archive) get
    one group over all of them: balancing then only caps the dense leaves - equal shares for
    arbitrary parts of a continuum would re-weight whole regions by their density. Measured on
    ``curriculum bench --sections curation``: the Debian text set (Ward gap 1.14) took its
    rarest sections at 0.65x random with the Ward groups, ~1x with the leaves only; the
    Fashion-MNIST-LT sets (gaps 1.40-1.53) keep their Ward groups (rarest classes 4-14x random).

    Example:
        >>> import numpy as np
        >>> c = np.concatenate([np.random.default_rng(0).normal(size=(20, 2)) + m for m in (0, 50, 100)])
        >>> maps, cents = upper_levels(c.astype(np.float32), np.full(60, 10))
        >>> len(cents[-1])
        3
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    k = len(cent)
    top = mode_cut(cent, sizes, links=links)
    if top is None and k >= 4:
        ward = linkage(cent.astype(np.float64), "ward")
        if ward_gap(ward) < WARD_GAP:  # a continuum: no partition of it is truer than another
            return [np.zeros(k, np.int64)], [cent, cent.mean(0, keepdims=True)]
        top = fcluster(ward, max(2, round(k ** FALLBACK_TOP)), "maxclust") - 1
        top = np.unique(top, return_inverse=True)[1].astype(np.int64)
    elif top is None:
        return [np.zeros(k, np.int64)], [cent, cent.mean(0, keepdims=True)]
    labels = [np.arange(k)] + _ward_levels(cent, top) + [top]
    labels = [lab for i, lab in enumerate(labels) if i == 0 or lab.max() < labels[i - 1].max()]
    maps = _maps(labels)
    cents = [cent]
    for m in maps:
        cents.append(_centroids_of(cents[-1], m, int(m.max()) + 1))
    return maps, cents


def hierarchical_kmeans(vectors: np.ndarray, levels: tuple[int, ...], metric: str = "cosine", seed: int = 0,
                        resample_iters: int = 3, resample_per_cluster: int | None = None,
                        upper: str = "ward", progress: bool | None = None) -> Hierarchy:
    """Hierarchical clustering with given level sizes and resampling refinement (Vo et al. 2024).

    ``levels`` lists the number of clusters from the finest level to the coarsest (decreasing).
    The finest level is seeded k-means refined by ``resample_iters`` resampling steps (the
    ``resample_per_cluster`` rows closest to each centroid, default half the mean cluster size).
    Upper levels cluster the previous level's centroids: by Ward agglomeration (``upper="ward"``)
    or by the same refined k-means (``upper="kmeans"``, Vo et al.'s choice). When the number of
    modes is unknown (the usual case) use :func:`auto_hierarchy`, which finds the levels.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
        >>> h = hierarchical_kmeans(x, levels=(20, 4), metric="l2")
        >>> [len(c) for c in h.centroids], h.assignments[0].shape
        ([20, 4], (200,))
    """
    upper = C.choice(upper, "upper", ("ward", "kmeans"))
    return _hierarchical_kmeans(clustering_space(vectors, metric, seed), levels, seed, resample_iters,
                                resample_per_cluster, upper, progress)


def checked_levels(levels: object, n: int) -> list[int]:
    """``levels`` as a list of strictly decreasing positive cluster counts, the first at most
    ``n`` (the rows to cluster); a clear ``ValueError`` otherwise.

    Example:
        >>> checked_levels((64, 16), 1000)
        [64, 16]
    """
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
        raise TypeError(f"levels: expected a sequence of cluster counts, got {type(levels).__name__}")
    ks = [C.positive_int(k, "levels") for k in levels]
    if not ks or any(b >= a for a, b in zip(ks, ks[1:])):
        raise ValueError(f"levels: expected strictly decreasing cluster counts, got {list(levels)}")
    if ks[0] > n:
        raise ValueError(f"levels: the finest level asks for {ks[0]} clusters but there are {n} vectors")
    return ks


def ward_levels(cent: np.ndarray, ks: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Given levels above the leaves: the leaf centroids ``cent`` grouped by Ward into ``ks[0]``
    clusters, those clusters' centroids into ``ks[1]``, and so on; returns the Hierarchy maps and
    the centroids of every level, leaves first (as :func:`upper_levels`).

    Example:
        >>> import numpy as np
        >>> c = np.concatenate([np.random.default_rng(0).normal(size=(10, 2)) + m for m in (0, 50, 100)])
        >>> maps, cents = ward_levels(c.astype(np.float32), [3])
        >>> [len(x) for x in cents], sorted(np.bincount(maps[0]).tolist())
        ([30, 3], [10, 10, 10])
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    maps, cents = [], [cent]
    for k in ks:
        lab = fcluster(linkage(cents[-1].astype(np.float64), "ward"), k, "maxclust") - 1
        lab = np.unique(lab, return_inverse=True)[1].astype(np.int64)
        maps.append(lab)
        cents.append(_centroids_of(cents[-1], lab, int(lab.max()) + 1))
    return maps, cents


def _hierarchical_kmeans(x: np.ndarray, levels: tuple[int, ...], seed: int, resample_iters: int,
                         resample_per_cluster: int | None, upper: str, progress: bool | None) -> Hierarchy:
    ks = checked_levels(levels, len(x))
    assignments, centroids = [], []
    pts = x
    bar = progress_bar(total=len(ks), desc="hierarchical k-means (levels)", disable=not want(progress, len(x)))
    for li, k in enumerate(ks[:1] if upper == "ward" else ks):
        bar.update(1)
        cent = KM.kmeans(pts, k, seed=seed + li)
        cent = KM.resample_refine(pts, cent, resample_iters, seed=seed + 1000 * (li + 1),
                                  per_cluster=resample_per_cluster)
        lab = KM.assign(pts, cent)[0]
        assignments.append(lab)
        centroids.append(_centroids_of(pts, lab, int(lab.max()) + 1))
        pts = centroids[-1]
    if upper == "ward":
        maps, cents = ward_levels(centroids[0], ks[1:])
        assignments, centroids = assignments + maps, centroids + cents[1:]
        bar.update(len(ks) - 1)
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


def balanced_select(h: Hierarchy, target: int, seed: int = 0, keep: np.ndarray | None = None,
                    priority: np.ndarray | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """Row positions of a subset of size ``target`` balanced down the hierarchy.

    At every node, the node's quota is split over its children by :func:`_water_fill` on their
    sizes (in rows) - see :func:`leaf_quotas`; inside a finest-level cluster the rows are drawn
    at random (seeded), or with ``priority`` (one integer per row) those of smallest priority.
    ``keep`` (a boolean mask over the rows) leaves the other rows out, as if they were not in the pool.
    ``weights`` (one per leaf): each top cluster's quota split over its leaves by weight (see
    :func:`leaf_quotas`).

    Example:
        >>> import numpy as np
        >>> h = Hierarchy([np.array([0, 0, 0, 0, 1, 2])], [np.zeros((3, 1), np.float32)])
        >>> sorted(np.bincount(h.assignments[0][balanced_select(h, 3)], minlength=3).tolist())  # one per cluster
        [1, 1, 1]
    """
    rng = np.random.default_rng(seed)
    n_rows = len(h.assignments[0])
    keep = np.ones(n_rows, bool) if keep is None else np.asarray(keep, bool)
    if keep.shape != (n_rows,):
        raise ValueError(f"keep: expected a boolean mask of {n_rows} rows, got shape {keep.shape}")
    target = C.positive_int(target, "target")
    if target > int(keep.sum()):
        raise ValueError(f"target: expected at most the pool size {int(keep.sum())}, got {target}")
    rows_of_leaf = [r[keep[r]] for r in label_groups(h.assignments[0], len(h.centroids[0]))]
    quota = leaf_quotas(h, np.array([len(r) for r in rows_of_leaf]), target, weights)
    if priority is None:
        out = [rng.choice(rows_of_leaf[c], int(q), replace=False) for c, q in enumerate(quota) if q]
    else:
        out = [r[np.argsort(priority[r])[:int(q)]] for r, q in zip(rows_of_leaf, quota) if q]
    return np.sort(np.concatenate(out)) if out else np.zeros(0, np.int64)


def leaf_quotas(h: Hierarchy, leaf_sizes: np.ndarray, target: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Rows to take from each finest-level cluster (of ``leaf_sizes`` rows): the target split over
    the top clusters by :func:`_water_fill`, each node's quota over its children the same way.
    With ``weights`` (one per leaf, >= 0; e.g. :func:`unique_weights`) each top cluster's quota
    goes to its leaves in proportion to their weights instead (:func:`weighted_fill`): the
    modes stay balanced, inside a mode the leaves that span more of it get more.

    Example:
        >>> import numpy as np
        >>> h = Hierarchy([np.array([0, 1, 2]), np.array([0, 0, 1])], [np.zeros((3, 1)), np.zeros((2, 1))])
        >>> leaf_quotas(h, np.array([10, 10, 1]), 6).tolist()   # the lone leaf's cluster gives what it has
        [3, 2, 1]
        >>> leaf_quotas(h, np.array([10, 10, 1]), 6, weights=np.array([4., 1., 1.])).tolist()
        [4, 1, 1]
    """
    sizes = [np.asarray(leaf_sizes, np.int64)]
    children = []
    for lvl in range(1, len(h.assignments)):
        kids = label_groups(h.assignments[lvl], len(h.centroids[lvl]))
        children.append(kids)
        sizes.append(np.array([sizes[-1][kk].sum() for kk in kids]))
    quota = _water_fill(sizes[-1], target)
    if weights is not None:
        return _weighted_leaves(h, sizes[0], quota, np.asarray(weights, np.float64))
    for lvl in range(len(h.assignments) - 1, 0, -1):
        nxt = np.zeros(len(sizes[lvl - 1]), np.int64)
        for c, kids in enumerate(children[lvl - 1]):
            if quota[c] and len(kids):
                nxt[kids] = _water_fill(sizes[lvl - 1][kids], int(quota[c]))
        quota = nxt
    return quota


def _weighted_leaves(h: Hierarchy, sizes: np.ndarray, top_quota: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each top cluster's quota over its leaves by :func:`weighted_fill`."""
    if weights.shape != sizes.shape or not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"weights: expected {len(sizes)} finite values >= 0, got shape {weights.shape}")
    top = np.arange(len(sizes))
    for m in h.assignments[1:]:
        top = m[top]
    quota = np.zeros(len(sizes), np.int64)
    for c, leaves in enumerate(label_groups(top, len(top_quota))):
        if top_quota[c]:
            quota[leaves] = weighted_fill(sizes[leaves], weights[leaves], int(top_quota[c]))
    return quota


def weighted_fill(sizes: np.ndarray, weights: np.ndarray, target: int) -> np.ndarray:
    """``target`` rows split over groups of ``sizes`` rows in proportion to ``weights``, none
    given more than it holds: ``min(size, floor(lam * weight))`` with the largest ``lam`` whose
    total fits, the rest one each to the groups with room and the largest remainders (then the
    lowest index). Groups of weight 0 get rows only when the others are full (by
    :func:`_water_fill`). Deterministic: the same inputs give the same split on every rank.

    Example:
        >>> import numpy as np
        >>> weighted_fill(np.array([10, 10, 2]), np.array([1., 1., 8.]), 10).tolist()   # the heavy group is full
        [4, 4, 2]
    """
    sizes, w = np.asarray(sizes, np.int64), np.asarray(weights, np.float64)
    target = int(min(target, sizes.sum()))
    pos = (w > 0) & (sizes > 0)
    if target <= 0 or not pos.any():
        return _water_fill(sizes, target)
    if target >= sizes[pos].sum():  # the weighted groups whole, the rest evenly
        rest = np.where(pos, 0, sizes)
        return np.where(pos, sizes, _water_fill(rest, target - int(sizes[pos].sum())))
    lo, hi = 0.0, float((sizes[pos] / w[pos]).max())  # at hi every weighted group is full
    for _ in range(200):  # bisection to float64 resolution
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if np.minimum(sizes, np.floor(mid * w)).sum() <= target else (lo, mid)
    alloc = np.minimum(sizes, np.floor(lo * w)).astype(np.int64)
    frac = np.where(alloc < sizes, lo * w - alloc, -1.0)
    order = np.lexsort((np.arange(len(w)), -frac))
    alloc[order[:target - int(alloc.sum())]] += 1
    return alloc


def pick_priority(ids: np.ndarray, x: np.ndarray, leaf: np.ndarray, centroids: np.ndarray, within: str,
                  seed: int, all_reduce: Callable[[np.ndarray, str], np.ndarray] | None = None,
                  nearest: np.ndarray | None = None) -> np.ndarray:
    """The order in which :func:`balanced_select` takes the rows of a leaf (smallest first, int64,
    never tied): ``"random"`` - :func:`~curriculum.store.sharded.id_priority` (seeded); ``"far"`` -
    farthest from the leaf's centroid first (the least prototypical rows, Sorscher et al. 2022's
    "hard" end of self-supervised prototype pruning), except the leaf's outliers
    (:func:`leaf_outliers`), which come last, in random order; ``"near"`` - nearest first (the
    most prototypical); ``"unique"`` - the rows farthest from their nearest neighbour first
    (``nearest``: each row's distance to it; rows with a near twin last), the leaf's outliers
    after them, as for ``"far"``. Distances are per row (``x``: rows in clustering space, ``leaf``: each
    row's leaf), so every shard computes the same keys (``all_reduce(array, op)`` sums the
    outlier test's per-leaf statistics over the shards); they are compared to 11 mantissa bits
    (0.05%), the id priority's top 42 bits ordering closer ones (a tie needs both to match: for a
    leaf of 1,000 identical rows, a chance of ~1e-7).

    Example:
        >>> import numpy as np
        >>> x = np.array([[0.], [3.], [1.]], np.float32)
        >>> np.argsort(pick_priority(np.arange(3), x, np.zeros(3, np.int64), np.zeros((1, 1), np.float32), "far", 0)).tolist()
        [1, 2, 0]
    """
    within = C.choice(within, "within", WITHIN)
    pri = id_priority(ids, seed + PICK_SEED)
    if within == "random":
        return pri
    d = centroid_distances(x, leaf, centroids)
    if within == "near":
        return (_bits(d) << np.int64(42)) | (pri >> np.int64(21))
    return _largest_first(pri, d if within == "far" else _checked_nearest(nearest, len(x)),
                          leaf_outliers(d, leaf, len(centroids), all_reduce))


def unique_plan(ids: np.ndarray, x: np.ndarray, leaf: np.ndarray, centroids: np.ndarray, nearest: np.ndarray,
                keep: np.ndarray, seed: int,
                all_reduce: Callable[[np.ndarray, str], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``within="unique"``'s row priorities (:func:`pick_priority`) and leaf weights
    (:func:`unique_weights` over the ``keep`` rows that are not their leaf's outliers), from one
    pass of centroid distances and one outlier test. ``all_reduce`` as for :func:`pick_priority`.

    Example:
        >>> import numpy as np
        >>> x, leaf = np.array([[0.], [1.], [1.1]], np.float32), np.zeros(3, np.int64)
        >>> pri, w = unique_plan(np.arange(3), x, leaf, np.ones((1, 1), np.float32), np.array([1., .1, .1]), np.ones(3, bool), 0)
        >>> int(np.argmin(pri)), w.round(3).tolist()       # row 0 stands alone: first
        (0, [0.333])
    """
    nearest = _checked_nearest(nearest, len(x))
    d = centroid_distances(x, leaf, centroids)
    out = leaf_outliers(d, leaf, len(centroids), all_reduce)
    pri = _largest_first(id_priority(ids, seed + PICK_SEED), nearest, out)
    return pri, unique_weights(nearest, leaf, np.asarray(keep, bool) & ~out, len(centroids), all_reduce)


def _largest_first(pri: np.ndarray, values: np.ndarray, outliers: np.ndarray) -> np.ndarray:
    """Priorities taking the largest ``values`` first and the ``outliers`` after every other row,
    ``pri`` (the id's) ordering ties."""
    key = (np.int64(1) << np.int64(20)) - 1 - _bits(values)
    key[outliers] = np.int64(1) << np.int64(20)
    return (key << np.int64(42)) | (pri >> np.int64(21))


def _bits(d: np.ndarray) -> np.ndarray:
    """Non-negative float32 distances as int64 keys that order as the values: the exponent and
    11 bits of the mantissa (20 bits; values within 0.05% of each other tie)."""
    return np.ascontiguousarray(d, np.float32).view(np.int32).astype(np.int64) >> np.int64(11)


def _checked_nearest(nearest: np.ndarray | None, n: int) -> np.ndarray:
    if nearest is None:
        raise ValueError('nearest: expected each row\'s nearest-neighbour distance with within="unique", got None')
    d = np.asarray(nearest, np.float32)
    if d.shape != (n,) or not np.isfinite(d).all() or (d < 0).any():
        raise ValueError(f"nearest: expected {n} finite distances >= 0, got shape {d.shape}")
    return d


def centroid_distances(x: np.ndarray, leaf: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each row's l2 distance to its leaf's centroid (float32), computed row by row - the same
    bits for a row wherever it is computed.

    Example:
        >>> import numpy as np
        >>> centroid_distances(np.array([[3., 4.]]), np.array([0]), np.zeros((1, 2))).tolist()
        [5.0]
    """
    x, centroids = np.asarray(x, np.float32), np.asarray(centroids, np.float32)
    d = np.empty(len(x), np.float32)
    for s in range(0, len(x), PICK_CHUNK):  # in chunks: two copies of all rows were 1 GB at 1M x 128
        diff = x[s:s + PICK_CHUNK] - centroids[leaf[s:s + PICK_CHUNK]]
        d[s:s + PICK_CHUNK] = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    return d


def unique_weights(nearest: np.ndarray, leaf: np.ndarray, use: np.ndarray, k: int,
                   all_reduce: Callable[[np.ndarray, str], np.ndarray] | None = None) -> np.ndarray:
    """Per leaf (``k`` of them), how much of the pool it spans per row: the mean over its ``use``
    rows (a boolean mask) of ``nearest ** UNIQUE_POWER`` (``nearest``: each row's distance to
    its nearest neighbour), relative to the largest row's. In ``d`` intrinsic dimensions a row
    stands for a volume ~``nearest ** d`` of the support: a leaf of near twins spans little, one
    of rows that stand alone spans much. Exact integer sums of terms quantised to
    :data:`UNIQUE_LEVELS` steps, so ``all_reduce(array, op)`` gives every shard the one-process
    weights. A leaf without such rows weighs 0.

    Example:
        >>> import numpy as np
        >>> unique_weights(np.array([1., 1., 2., 0.]), np.array([0, 0, 1, 1]), np.ones(4, bool), 2).tolist()
        [0.00390625, 0.5]
    """
    reduce = all_reduce or (lambda a, op: a)
    d = np.asarray(nearest, np.float64)[use]
    top = float(reduce(np.array([d.max() if len(d) else 0.0], np.float64), "max")[0])
    q = np.floor((d / top) ** UNIQUE_POWER * UNIQUE_LEVELS).astype(np.int64) if top > 0 else np.zeros(len(d), np.int64)
    sums = np.zeros((2, k), np.int64)
    np.add.at(sums[0], leaf[use], 1)
    np.add.at(sums[1], leaf[use], q)
    n, total = reduce(sums, "sum")
    return np.where(n > 0, total / np.maximum(n, 1) / UNIQUE_LEVELS, 0.0)


def leaf_outliers(d: np.ndarray, leaf: np.ndarray, k: int,
                  all_reduce: Callable[[np.ndarray, str], np.ndarray] | None = None) -> np.ndarray:
    """Rows farther from their leaf's centroid (``d``) than the leaf's mean distance plus
    :data:`TRIM_SD` standard deviations (a boolean mask). Rows that sit apart from every cluster
    - scattered junk - are the farthest rows of whatever leaf they fall in; ``"far"`` would take
    them first. On Fashion-MNIST-LT's CNN features with 2% of noisy rows planted, ``"far"``
    without this test took 189 of them into a 1,518-row subset, random picks 28, with it 8-15.
    The statistics are exact integer sums of the distances quantised to :data:`TRIM_LEVELS`
    steps of the largest, so ``all_reduce(array, op)`` (``"sum"`` / ``"max"`` over the shards)
    gives every shard the one-process answer.

    Example:
        >>> import numpy as np
        >>> d = np.r_[np.ones(20), 1.1, 9.0].astype(np.float32)
        >>> np.flatnonzero(leaf_outliers(d, np.zeros(22, np.int64), 1)).tolist()
        [21]
    """
    reduce = all_reduce or (lambda a, op: a)
    top = float(reduce(np.array([d.max() if len(d) else 0.0], np.float64), "max")[0])
    q = np.floor(d.astype(np.float64) * (TRIM_LEVELS / top)) if top > 0 else np.zeros(len(d))
    sums = np.stack([np.bincount(leaf, minlength=k), np.bincount(leaf, weights=q, minlength=k),
                     np.bincount(leaf, weights=q * q, minlength=k)]).round().astype(np.int64)  # exact: < 2**53
    n, s1, s2 = reduce(sums, "sum").astype(np.float64)
    mean = s1 / np.maximum(n, 1)
    bound = mean + TRIM_SD * np.sqrt(np.maximum(s2 / np.maximum(n, 1) - mean * mean, 0.0))
    return q > bound[leaf]


def curate(store: EmbeddingStore, target_size: int, levels: tuple[int, ...] | None = None, seed: int = 0,
           dedup_threshold: float | None = None, resample_iters: int = 3, ids: np.ndarray | None = None,
           reference: np.ndarray | None = None, drop_stray: bool = True, progress: bool | None = None,
           within: str = "unique") -> np.ndarray:
    """Select ``target_size`` ids from the store, balanced over a hierarchical clustering of it.

    By default the hierarchy is found in the data (:func:`auto_hierarchy`): resampled k-means
    leaves, the modes that separate by a clear jump in distance or by no rows between them on
    top, nested levels between, so every mode gets the same share whatever their number; modes
    smaller than that share are taken whole. ``levels`` (finest to coarsest cluster counts) fixes
    the levels instead, as in Vo et al.'s pipeline (the top level then should match the number of
    modes): the finest level fitted as the automatic leaves are (so it may hold a few clusters
    more, :func:`split_joined`), the coarser ones Ward groups of its centroids.

    Before balancing (which would over-sample junk that forms its own cluster), rows are left out:
    stray rows (leaves of fewer than :data:`MIN_MODE_ROWS` rows) unless ``drop_stray=False``, and
    with ``reference`` (ids of a random sample of rows known to be in distribution, e.g. a few
    hundred hand-checked), every cluster that holds too few of them (:func:`out_of_reference`). With
    ``dedup_threshold`` (cosine), near-duplicates are removed first (one id kept per group).
    ``ids`` restricts the pool to those stored ids. ``progress``: bars (default: on from 50,000 rows).
    ``within`` picks the rows inside a leaf that gets fewer than all of its rows, and how a mode's
    quota is split over its leaves: ``"unique"`` (the default: the rows farthest from their nearest
    neighbour first - near twins last, the leaf's outliers, beyond its mean distance to the
    centroid plus two standard deviations (:func:`leaf_outliers`), after them - and each mode's
    quota split over its leaves in proportion to :func:`unique_weights`, the mean 8th power of
    their rows' nearest-neighbour distances: the modes keep their balance, inside a mode a leaf
    of near twins gets less than one of rows that stand alone), ``"far"`` (farthest from the
    leaf's centroid first, outliers last; equal shares per leaf, as the other choices),
    ``"random"`` (seeded, as Vo et al.) or ``"near"`` (the most prototypical first); see
    :func:`pick_priority`. ``"unique"``'s nearest neighbours are sought among the rows of each
    row's nearest leaves (:func:`~curriculum.selection.leaf_neighbors.leaf_nearest`: about 384
    rows per row, in clustering space; 1.3-1.8 s on 121k 384-d texts, 3.5-3.9 s on 1M x 128), never a kNN
    graph of the whole pool. On the Debian text set (121k texts, 59 archive sections) it took
    1.8-2.4x random's share of the rarest sections over 5 hierarchy seeds (``"far"``, 3 seeds:
    1.3-1.5x), on its 25k sample 1.3-2.4x (``"far"``: 0.6-1.9x); on planted Gaussian modes the
    same per-mode counts as ``"far"``.

    The leaves are fitted on the rows of smallest :func:`~curriculum.store.sharded.id_priority`
    and the rows inside a leaf picked the same way, so a :class:`~curriculum.store.ShardedStore`
    (every rank calls ``curate``; each gets its own shard's selected ids) selects exactly the ids
    one process selects from the same rows (up to 128 dimensions; above, the PCA projection is
    fitted on that sample instead of the whole pool; the nearest neighbours of ``"unique"`` are
    sought among the same candidate rows, gathered from every shard). On a sharded store ``ids`` and ``reference``
    are the unions of what every rank passes.

    Example:
        >>> ids = curate(store, target_size=len(store) // 10)      # doctest: +SKIP
    """
    if isinstance(store, ShardedStore):
        from .sharded_curation import curate_sharded

        return curate_sharded(store, target_size, seed, resample_iters, drop_stray, progress, ids, dedup_threshold,
                              reference, levels, within)
    C.choice(within, "within", WITHIN)
    ids, vec = _pool(store, ids, dedup_threshold, seed)
    target = C.positive_int(target_size, "target_size")
    if target > len(ids):
        raise ValueError(f"target_size: expected at most {len(ids)} (the pool"
                         f"{' after de-duplication' if dedup_threshold else ''}), got {target}")
    ref_rows = None
    if reference is not None:
        ref = C.as_ids(reference, "reference")
        missing = np.setdiff1d(ref, ids)
        if len(missing):
            raise ValueError(f"reference: expected ids of the pool, got {len(missing)} that are not "
                             f"(first: {missing[:5].tolist()})")
        ref_rows = np.flatnonzero(np.isin(ids, ref))
    x = clustering_space(vec, "cosine" if store.metric == "cosine" else "l2", seed)
    if levels is None:
        h = _auto_hierarchy(x, None, resample_iters, seed, progress, ids=ids)
    else:
        ks = checked_levels(levels, len(x))  # the leaves fitted as the automatic ones, Ward groups above
        h = _auto_hierarchy(x, ks[0], resample_iters, seed, progress, ids,
                            lambda cent, *_: ward_levels(cent, ks[1:]))
    sizes = np.bincount(h.assignments[0], minlength=len(h.centroids[0]))
    keep = sizes[h.assignments[0]] >= (MIN_MODE_ROWS if drop_stray else 0)
    if ref_rows is not None:
        keep &= ~out_of_reference(h, ref_rows)
    if target > int(keep.sum()):
        raise ValueError(f"target_size: expected at most {int(keep.sum())} (the rows left after dropping "
                         f"{int((~keep).sum())} stray or out-of-reference rows), got {target}")
    leaf, cent = h.assignments[0], h.centroids[0]
    if within == "unique":
        pri, weights = unique_plan(ids, x, leaf, cent, leaf_nearest(x, ids, leaf, cent, seed, progress=progress), keep,
                                   seed)
    else:
        pri, weights = pick_priority(ids, x, leaf, cent, within, seed), None
    return np.sort(ids[balanced_select(h, target, seed=seed, keep=keep, priority=pri, weights=weights)])


def _pool(store: EmbeddingStore, ids: np.ndarray | None, dedup_threshold: float | None,
          seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids and vectors of the pool: the store, restricted to ``ids``, de-duplicated."""
    if not isinstance(store, EmbeddingStore):
        raise TypeError(f"store: expected an EmbeddingStore, got {type(store).__name__}")
    pool_ids, vec = store.ids, store.vectors()
    if ids is not None:
        rows = store.rows_of(C.as_ids(ids, "ids"))
        pool_ids, vec = pool_ids[rows], vec[rows]
    if dedup_threshold is not None:
        kept = np.isin(pool_ids, deduplicate(store, dedup_threshold, seed=seed, ids=pool_ids))
        pool_ids, vec = pool_ids[kept], vec[kept]
    return pool_ids, vec


def out_of_reference(h: Hierarchy, reference_rows: np.ndarray, alpha: float = REFERENCE_ALPHA,
                     expected: float = REFERENCE_EXPECTED) -> np.ndarray:
    """Rows out of distribution (a boolean mask): those of leaves whose neighbourhood holds too
    few of the trusted ``reference_rows`` (positions of a random sample of in-distribution rows,
    e.g. hand-checked).

    A density-ratio test: the reference samples the distribution in proportion, so any region of
    ``m`` rows should hold about ``m * len(reference) / len(pool)`` of them. Each leaf's region is
    the leaf and its nearest leaves (by centroid) until it should hold ``expected`` reference
    rows; where the Poisson probability of holding as few as it does is below ``alpha``, the
    reference never covers it: junk. Rare modes of the distribution keep their share (the
    reference samples them too), which a distance threshold would not give them.

    Example:
        >>> import numpy as np
        >>> leaves = np.repeat(np.arange(20), 50)  # rows 0..899 in leaves 0..17, 900..999 in 18, 19
        >>> cent = np.r_[np.zeros(18), 50, 51].astype(np.float32)[:, None]
        >>> h = Hierarchy([leaves], [cent])
        >>> ref = np.random.default_rng(0).choice(900, 60, replace=False)  # none among rows 900..999
        >>> out = out_of_reference(h, ref)
        >>> int(out[:900].sum()), int(out[900:].sum())
        (0, 100)
    """
    leaf, cent = h.assignments[0], h.centroids[0]
    reference_rows = sorted_unique(np.asarray(reference_rows, np.int64))
    size = np.bincount(leaf, minlength=len(cent))
    held = np.bincount(leaf[reference_rows], minlength=len(cent))
    return _junk_leaves(cent, size, held, alpha, expected)[leaf]


def _junk_leaves(cent: np.ndarray, size: np.ndarray, held: np.ndarray, alpha: float = REFERENCE_ALPHA,
                 expected: float = REFERENCE_EXPECTED) -> np.ndarray:
    """:func:`out_of_reference` per leaf, from the leaves' centroids, sizes and reference counts
    (summed over the shards on a sharded store)."""
    from scipy.stats import poisson

    cent = np.ascontiguousarray(cent, np.float32)
    k = len(cent)
    rate = held.sum() / size.sum()
    order = brute_knn(cent, cent, k, "l2")[1]  # every leaf's leaves by distance, itself first
    rows = np.cumsum(size[order], axis=1)
    stop = np.minimum((rows < expected / rate).sum(1), k - 1)  # first prefix expected to hold enough
    got = np.cumsum(held[order], axis=1)[np.arange(k), stop]
    return poisson.cdf(got, rows[np.arange(k), stop] * rate) < alpha


def deduplicate(store: EmbeddingStore, threshold: float = 0.95, n_clusters: int | None = None,
                seed: int = 0, ids: np.ndarray | None = None) -> np.ndarray:
    """Ids kept after SemDeDup-style removal: one id (the smallest) per near-duplicate group of
    the store (:func:`~curriculum.difficulty.near_duplicates`). ``ids`` (a pool of stored ids)
    keeps the smallest of *those* in each group, so a group whose smallest id lies outside the
    pool still leaves one of its pool ids (on a sharded store: the whole pool, every rank's).

    Example:
        >>> import numpy as np
        >>> store = EmbeddingStore(2, metric="cosine"); _ = store.add(np.array([[1., 0], [1, 1e-3], [0, 1], [1, 2e-3]]))
        >>> deduplicate(store, threshold=0.99).tolist(), deduplicate(store, threshold=0.99, ids=[1, 2, 3]).tolist()
        ([0, 2], [1, 2])
    """
    from ..difficulty.geometry import near_duplicates

    pool = store.ids if ids is None else C.as_ids(ids, "ids", unique=False)
    if ids is not None and isinstance(store, EmbeddingStore):
        store.rows_of(pool)  # an id not stored is an error (a sharded store's pool spans the ranks)
    groups = near_duplicates(store, threshold, n_clusters=n_clusters, seed=seed)
    members = np.concatenate(groups) if groups else np.zeros(0, np.int64)  # each group sorted ascending
    group = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    inside = np.isin(members, pool)  # one pass for all groups: the first pool member of each stays
    members, group = members[inside], group[inside]
    first = np.zeros(len(members), bool)
    first[np.unique(group, return_index=True)[1]] = True
    return np.setdiff1d(pool, members[~first])


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


__all__ = ['Hierarchy', 'kmeans_pp_init', 'hierarchical_kmeans', 'checked_levels', 'ward_levels', 'ward_gap',
           'WARD_GAP', 'auto_hierarchy', 'mode_cut', 'nearest_leaves', 'leaf_links', 'clustering_space',
           'leaf_count', 'fit_leaves', 'split_joined', 'balanced_select', 'pick_priority', 'leaf_outliers', 'leaf_quotas',
           'weighted_fill', 'unique_weights', 'unique_plan', 'centroid_distances', 'curate', 'deduplicate', 'cluster_groups']
