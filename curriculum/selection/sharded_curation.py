"""Curation of a :class:`~curriculum.store.ShardedStore`: the one-process algorithm of
:func:`curriculum.selection.curation.curate`, with every pass over the rows done where they live.

- clustering space: per-row normalisation; above 128 dims a PCA basis fitted on the gathered sample;
- leaves: fitted once, on rank 0, on a sample drawn the same at any world size
  (:meth:`ShardedStore.fit_on_root`, ``64`` rows per leaf), the centroids broadcast; every row
  assigned locally; leaf sizes all-reduced, the rows between leaves (``leaf_links``) gathered;
- upper levels: computed from the leaf centroids and sizes, identical on every rank;
- balanced selection: the quotas per leaf from the all-reduced sizes; inside a leaf the rows of
  smallest priority are taken (``pick_priority``: the id's, or the distance to the leaf's
  centroid with the id's breaking ties, a leaf's outliers - by the all-reduced integer sums of
  its quantised distances - last; with ``within="unique"``, the default, the distance to the
  nearest of the candidate rows of the row's nearest leaves, gathered from every shard, and each
  leaf's share of its mode weighted by all-reduced integer sums) - the quota-th smallest priority
  of each leaf found by a bisection whose counts are all-reduced (64 rounds of one vector of leaf
  counts).

Bytes moved: the sample (``64 x leaves x dims`` floats, at most 131k rows) to rank 0 once, the
centroids back, about 70 all-reduces of ``leaves`` integers and one gather of the leaf links (at
most a few triples per leaf pair that shares rows), and for ``within="unique"`` (the default) a
gather of each leaf's candidate rows: their priorities first, then the at most 384 rows per leaf
that are among its 384 smallest over all ranks (:mod:`~curriculum.selection.leaf_neighbors`);
never the other rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._util import checks as C
from .._util.arrays import sorted_unique
from ..neighbors import normalize, pca_basis, project
from ..store import ShardedStore
from .curation import (MIN_MODE_ROWS, REDUCE_TO, SAMPLE_PER_LEAF, WITHIN, Hierarchy, _junk_leaves, checked_levels,
                       deduplicate, fit_leaves, leaf_count, leaf_links, leaf_quotas, nearest_leaves,
                       pick_priority, unique_plan, upper_levels, ward_levels)
from .leaf_neighbors import leaf_nearest

TOP = np.iinfo(np.int64).max


def curate_sharded(store: ShardedStore, target_size: int, seed: int = 0, resample_iters: int = 3,
                   drop_stray: bool = True, progress: bool | None = None, ids: np.ndarray | None = None,
                   dedup_threshold: float | None = None, reference: np.ndarray | None = None,
                   levels: tuple[int, ...] | None = None, within: str = "unique") -> np.ndarray:
    """This shard's ids of a ``target_size`` subset balanced over the hierarchy of all shards
    (see :func:`curriculum.curate`; every rank calls it). ``ids``: the pool is the union of the
    ids every rank passes (a rank may pass its part, or all of them); ``dedup_threshold``:
    near-duplicates removed first (:func:`~curriculum.selection.curation.deduplicate` over the
    shards); ``reference``: trusted in-distribution ids (the union over the ranks), leaves they
    do not cover left out (:func:`~curriculum.selection.curation.out_of_reference` from the
    all-reduced counts); ``levels``: given cluster counts, finest first (the leaves fitted as
    the automatic ones are, Ward groups of their centroids above); ``within``: how a leaf's rows
    are picked (:func:`~curriculum.selection.curation.pick_priority`, computed per row, so the
    same ids as one process; ``"unique"``'s nearest neighbours among the same candidate rows as
    one process's). Collective.

    Example:
        >>> import numpy as np
        >>> from curriculum.store import ShardedStore
        >>> store = ShardedStore(2, metric="l2")
        >>> rng = np.random.default_rng(0)
        >>> _ = store.add(np.concatenate([rng.normal(size=(900, 2)), rng.normal(size=(100, 2)) + 30]))
        >>> picked = curate_sharded(store, 100)
        >>> len(picked), int((picked >= 900).sum())      # the small mode gets half
        (100, 50)
    """
    comm = store.comm
    store.checked(lambda: C.choice(within, "within", WITHIN))
    _same_everywhere(comm, WITHIN.index(within), "within", within)  # the choices run different collectives
    options = {"ids": ids, "dedup_threshold": dedup_threshold, "reference": reference, "levels": levels}
    given = comm.all_reduce(np.array([v is not None for v in options.values()], np.int64))
    for name, count in zip(options, given.tolist()):
        if count not in (0, comm.world):  # every rank decides alike: no rank is left in a collective
            raise ValueError(f"{name}: expected on every rank or on none, got it on {count} of {comm.world}")
    mask = _pool_mask(store, ids, dedup_threshold, seed)
    n = int(comm.all_reduce(np.array([mask.sum()]))[0])
    target = store.checked(lambda: _target(target_size, n, dedup_threshold is not None))
    ks = store.checked(lambda: None if levels is None else checked_levels(levels, n))
    if ks is not None:  # the same levels everywhere, or every rank fits its own hierarchy
        _same_everywhere(comm, hash(tuple(ks)) & 0x7FFF_FFFF_FFFF_FFFF, "levels", ks)
    full, k = _space(store, seed, mask), leaf_count(n) if ks is None else ks[0]
    cent = store.fit_on_root(k * SAMPLE_PER_LEAF, seed, full,
                             lambda sample: fit_leaves(sample, k, resample_iters, seed, sample=sample), mask=mask)
    k = len(cent)  # split_joined may add leaves
    x, pool_ids = full[mask], store.ids[mask]
    nearest = nearest_leaves(x, cent) if len(x) else np.zeros((0, min(3, k)), np.int64)
    leaf = nearest[:, 0].copy()
    sizes = comm.all_reduce(np.bincount(leaf, minlength=k))
    if ks is None:
        maps, cents = upper_levels(cent, sizes, _summed_links(comm, leaf_links(nearest, sizes)))
    else:
        maps, cents = ward_levels(cent, ks[1:])
    keep = sizes[leaf] >= (MIN_MODE_ROWS if drop_stray else 0)
    if reference is not None:
        held = comm.all_reduce(np.bincount(leaf[_members(store, reference, "reference", pool_ids)], minlength=k))
        keep &= ~_junk_leaves(cent, sizes, held)[leaf]
    kept = comm.all_reduce(np.bincount(leaf[keep], minlength=k))
    if target > int(kept.sum()):
        raise ValueError(f"target_size: expected at most {int(kept.sum())} (the rows left after dropping "
                         f"{n - int(kept.sum())} stray or out-of-reference rows), got {target}")
    if within == "unique":  # every rank's candidates gathered, each rank's rows measured where they are
        nearest = leaf_nearest(x, pool_ids, leaf, cent, seed, n, comm.all_gather, progress)
        pri, weights = unique_plan(pool_ids, x, leaf, cent, nearest, keep, seed, comm.all_reduce)
    else:
        pri, weights = pick_priority(pool_ids, x, leaf, cent, within, seed, comm.all_reduce), None
    quota = leaf_quotas(Hierarchy([leaf] + maps, cents), kept, target, weights)
    return np.sort(pool_ids[_pick(comm, leaf, keep, pri, quota, kept)])


def _same_everywhere(comm: Any, key: int, name: str, value: object) -> None:
    """Raise on every rank unless every rank passed the same ``value`` (``key``: an integer >= 0
    standing for it). Collective."""
    both = comm.all_reduce(np.array([key, -key], np.int64), "max")
    if both[0] != -both[1]:
        raise ValueError(f"{name}: expected the same {name} on every rank, got {value!r} here and others elsewhere")


def _summed_links(comm: object, links: Any) -> Any:
    """The leaf links (:func:`~curriculum.selection.curation.leaf_links`) summed over the
    ranks: each rank's non-zero entries gathered as (row, column, count) triples."""
    from scipy.sparse import coo_matrix

    mine = links.tocoo()
    triples = np.concatenate(comm.all_gather(np.column_stack([mine.row, mine.col, mine.data]).astype(np.int64)))
    return coo_matrix((triples[:, 2], (triples[:, 0], triples[:, 1])), shape=links.shape).tocsr()


def _pool_mask(store: ShardedStore, ids: np.ndarray | None, dedup_threshold: float | None, seed: int) -> np.ndarray:
    """Which of this shard's rows are in the pool: all, those in the union of every rank's
    ``ids`` (all must be stored), less the near-duplicates. Collective."""
    mask = np.ones(len(store.ids), bool)
    if ids is not None:
        mask = _members(store, ids, "ids", store.ids)
    if dedup_threshold is not None:
        thr = store.checked(lambda: C.finite_float(dedup_threshold, "dedup_threshold", -1.0, 1.0))
        pool = None if ids is None else sorted_unique(np.concatenate(store.comm.all_gather(store.ids[mask])))
        mask &= np.isin(store.ids, deduplicate(store, thr, seed=seed, ids=pool))
    return mask


def _members(store: ShardedStore, ids: np.ndarray, name: str, among: np.ndarray) -> np.ndarray:
    """Which of this shard's ``among`` ids are in the union of the ``name`` ids every rank passes
    (a boolean mask); every id of the union must be among them on some rank. Collective."""
    mine = store.checked(lambda: C.as_ids(ids, name, unique=False))
    union = sorted_unique(np.concatenate(store.comm.all_gather(mine)))
    mask = np.isin(among, union)
    missing = len(union) - int(store.comm.all_reduce(np.array([mask.sum()]))[0])
    if missing:
        raise ValueError(f"{name}: expected ids of the pool, got {missing} that are not in it")
    return mask


def _target(target_size: object, n: int, deduped: bool = False) -> int:
    t = C.positive_int(target_size, "target_size")
    if t > n:
        raise ValueError(f"target_size: expected at most {n} (the pool{' after de-duplication' if deduped else ''}), "
                         f"got {t}")
    return t


def _space(store: ShardedStore, seed: int, mask: np.ndarray | None = None) -> np.ndarray:
    """This shard's rows as k-means sees them (see :func:`curation.clustering_space`); above
    :data:`REDUCE_TO` dims the PCA basis is fitted on a sample of the ``mask`` rows."""
    x = store.vectors()
    if store.metric == "cosine":
        x = normalize(x)
    if store.dim > REDUCE_TO:
        from ..neighbors.descent import PCA_SAMPLE

        def fit(sample: np.ndarray) -> np.ndarray:
            mean, basis = pca_basis(sample, 0.97, max_dim=REDUCE_TO)
            return np.column_stack([basis, mean])  # one array to broadcast: the axes, then the mean
        both = store.fit_on_root(PCA_SAMPLE, seed, x, fit, mask=mask)
        x = project(x, np.ascontiguousarray(both[:, -1]), np.ascontiguousarray(both[:, :-1]))
    return np.ascontiguousarray(x, np.float32)


def _pick(comm: object, leaf: np.ndarray, keep: np.ndarray, pri: np.ndarray, quota: np.ndarray,
          kept: np.ndarray) -> np.ndarray:
    """Local rows among the ``quota[l]`` kept rows of smallest priority of each leaf ``l`` over all
    shards: per leaf, the smallest threshold whose all-reduced count of priorities <= it reaches
    the quota (bisection; priorities never tie, so the count hits the quota exactly)."""
    rows = np.flatnonzero(keep)
    rows = rows[np.lexsort((pri[rows], leaf[rows]))]
    sorted_pri = pri[rows]
    bounds = np.searchsorted(leaf[rows], np.arange(len(quota) + 1))
    lo = np.zeros(len(quota), np.int64)
    hi = np.where(quota >= kept, TOP, np.where(quota > 0, TOP, -1))
    lo = np.where(quota > 0, lo, -1)
    active = np.flatnonzero((quota > 0) & (quota < kept))
    while len(active) and (lo[active] < hi[active]).any():
        mid = lo + (hi - lo) // 2
        cnt = np.zeros(len(quota), np.int64)
        for leaf_id in active:
            s, e = bounds[leaf_id], bounds[leaf_id + 1]
            cnt[leaf_id] = np.searchsorted(sorted_pri[s:e], mid[leaf_id], side="right")
        cnt = comm.all_reduce(cnt)
        reached = cnt >= quota
        hi[active] = np.where(reached[active], mid[active], hi[active])
        lo[active] = np.where(reached[active], lo[active], mid[active] + 1)
    take = sorted_pri <= hi[leaf[rows]]
    return rows[take]

__all__ = ["curate_sharded"]
