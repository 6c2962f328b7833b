"""The NN-descent all-points kNN engine, for embeddings whose neighbourhoods k-means blocks do not
follow (real text and image embeddings of high intrinsic dimension).

A forest of random-projection trees gives every row a first list (all pairs inside each leaf);
NN-descent rounds then score, for every row, pairs among its sampled neighbours and reverse
neighbours ("a neighbour of my neighbour is likely my neighbour") until almost no list changes.
Above 128 dimensions the search runs on a PCA projection keeping 97% of the variance, at most
half the dimensions (the L2
geometry, which for L2-normalised rows orders pairs as cosine does; the trees split on its
:data:`FOREST_DIM` leading axes) over a longer list, and each row's list is scored again on the
full vectors at the end - the final ``k`` are exact distances.
The kernels are compiled with numba (:mod:`._descent_kernels`) and use every core; the result is
deterministic for a seed, whatever the thread count.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .._util import checks as C
from .._util.progress import progress_bar
from .metric import get_metric
from .plan import list_recall

REDUCE_FROM_DIM = 129   # from this dimension the descent runs on a PCA projection
REDUCE_VARIANCE = 0.97  # ... keeping this share of the variance (at most half the dimensions)
PCA_SAMPLE = 20_000     # rows the projection is fitted on
FOREST_DIM = 64         # the trees of a reduced search split on this many leading principal axes
SYNC_SEGMENTS = 2048    # the trees' levels down to this many segments are split for all trees in one pass
WARM_TREES = 2          # trees of a warm-started search (merging two graphs of 250k rows: 0.50x the time of
                        # none, at recall 0.960 instead of 0.951; a cold search of the union: 0.961)


def _kernels() -> Any:
    import numba  # noqa: F401  (a clear ImportError if the dependency is missing)

    from . import _descent_kernels
    return _descent_kernels


def pca_projection(x: np.ndarray, variance: float = REDUCE_VARIANCE, seed: int = 0,
                   max_dim: int | None = None) -> np.ndarray:
    """Rows of ``x`` centred and projected on the fewest principal axes (fitted on up to
    :data:`PCA_SAMPLE` sampled rows) that keep ``variance`` of the total, at most ``max_dim``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = (rng.normal(size=(500, 3)) @ rng.normal(size=(3, 40))).astype(np.float32)  # rank 3
        >>> pca_projection(x, 0.99).shape
        (500, 3)
    """
    rng = np.random.default_rng(seed)
    sample = x[rng.choice(len(x), min(PCA_SAMPLE, len(x)), replace=False)]
    mean, basis = pca_basis(sample, variance, max_dim)
    return project(x, mean, basis)


def pca_basis(sample: np.ndarray, variance: float = REDUCE_VARIANCE,
              max_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and principal axes ``(dim, kept)`` of ``sample`` keeping ``variance`` (at most
    ``max_dim`` axes); :func:`project` applies them (fit once, apply on every shard).

    Example:
        >>> import numpy as np
        >>> mean, basis = pca_basis(np.random.default_rng(0).normal(size=(100, 5)), 0.5)
        >>> mean.shape, basis.shape[0]
        ((5,), 5)
    """
    import torch

    st = torch.from_numpy(np.ascontiguousarray(sample, np.float32))
    mean = st.mean(0)
    centred = st - mean
    w, v = torch.linalg.eigh((centred.T @ centred).double())
    w, v = w.flip(0).numpy(), v.flip(1).float()
    keep = int(np.searchsorted(np.cumsum(w) / max(float(w.sum()), 1e-30), variance) + 1)
    keep = max(1, min(keep, max_dim or st.shape[1], st.shape[1]))
    return mean.numpy(), np.ascontiguousarray(v[:, :keep].numpy())


def project(x: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``(x - mean) @ basis`` as contiguous float32 (see :func:`pca_basis`).

    Example:
        >>> import numpy as np
        >>> project(np.ones((2, 3), np.float32), np.zeros(3, np.float32), np.eye(3, 2, dtype=np.float32)).shape
        (2, 2)
    """
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    return np.ascontiguousarray(((xt - torch.from_numpy(mean)) @ torch.from_numpy(basis)).numpy(), np.float32)


def descent_knn(x: np.ndarray, k: int, metric: str, n_neighbors: int | None = None, n_trees: int | None = None,
                leaf_size: int | None = None, max_iters: int = 12, delta: float = 0.005, seed: int = 0,
                exclude_self: bool = True, reduce: bool | None = None, max_candidates: int | None = None,
                progress: bool = False, return_stats: bool = False, init: np.ndarray | None = None,
                truth: tuple[np.ndarray, np.ndarray] | None = None, target_recall: float | None = None) -> Any:
    """The ``k`` nearest rows of every row of ``x`` by NN-descent (approximate; see the module).

    ``n_neighbors`` is the length of the working lists (default ``max(k + 4, 1.4k)``, and
    ``max(k + 8, 1.8k)`` when the search runs reduced); ``n_trees`` / ``leaf_size`` shape the
    initial forest; rounds stop after ``max_iters`` or when fewer than ``delta * N * n_neighbors``
    list entries changed; ``max_candidates`` (default ``n_neighbors``) new and as many old
    candidates are sampled per row and round. ``reduce`` (default: from :data:`REDUCE_FROM_DIM` dimensions, not under
    ``ip``) searches a PCA projection and rescores the lists on the full rows. ``init`` (one row per
    row of ``x``: rows of ``x`` known to be near it, ``-1`` pads) warm-starts the lists: its
    entries go in first, flagged as already joined with each other, so the rounds only join them
    with what the forest (then 2 trees by default) and random rows add - how :func:`merge_knn`
    joins two graphs. ``truth`` (sampled rows and their exact ``k`` distances,
    :attr:`~curriculum.neighbors.RecallPlan.truth`) with ``target_recall``: the rounds also stop
    as soon as the lists' recall on those rows clears the target by two standard errors (checked
    after each round; how ``knn(method="auto")`` runs a second search). Returns ``(distances, rows)`` in the
    module's convention, and with ``return_stats`` a third item ``{"pairs_scored", "iterations",
    "dim"}``.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
        >>> d, rows = descent_knn(x, 5, "l2")
        >>> rows.shape, bool((rows != np.arange(2000)[:, None]).all())
        ((2000, 5), True)
    """
    x = C.as_vectors(x, "x")
    n, dim = x.shape
    k = C.positive_int(k, "k")
    if n < 2 or k > n - int(bool(exclude_self)):
        raise ValueError(f"k: expected at most {n - int(bool(exclude_self))} (rows of x"
                         f"{' minus self' if exclude_self else ''}), got {k}")
    for value, name in ((n_neighbors, "n_neighbors"), (n_trees, "n_trees"), (leaf_size, "leaf_size"),
                        (max_candidates, "max_candidates")):
        if value is not None:
            C.positive_int(value, name, minimum=2 if name != "n_trees" else 1)
    max_iters = C.positive_int(max_iters, "max_iters", minimum=0)
    delta = C.finite_float(delta, "delta", 0.0, 1.0)
    init = None if init is None else _graph_arg(init, n, "init")
    met = get_metric(metric)
    x = met.prepare(x, "x")
    kern = _kernels()
    kf = min(k, n - 1)  # neighbours other than the row itself (itself is merged in after)
    if reduce is None:
        reduce = dim >= REDUCE_FROM_DIM and met.name != "ip"
    work = pca_projection(x, seed=seed, max_dim=dim // 2) if reduce else x
    kind = 0 if (met.name == "ip" or (met.name == "cosine" and not reduce)) else 1
    # k = 10 with 14: lists of 12 took ~0.8x the time on Fashion-MNIST CNN features (20.0 vs 21.4 s at
    # 1M, recall 0.990 vs 0.994) but fell short of 0.95 on the bench's 1M 100-mode pool (0.92), where
    # knn(auto)'s second run then cost more than the saving (48 s in all vs 33 s with 14)
    default = max(kf + 8, int(1.8 * kf)) if reduce else max(kf + 4, int(1.4 * kf))
    K = min(n - 1, max(kf, n_neighbors or default))
    # on a projection the trees split on its leading axes only: a third of the cost at 192-d, and two
    # more trees of them gave 0.9575 instead of 0.9568 recall in 92% of the time (Debian text, 100k)
    trees = n_trees or (WARM_TREES if init is not None else
                        max(3, min(12, int(round(2 * math.log10(max(n, 10))))) + 2 * bool(reduce)))
    leaf = leaf_size or max(60, min(256, 5 * K))
    lists = (np.full((n, K), np.inf, np.float32), np.full((n, K), -1, np.int32), np.zeros((n, K), np.uint8))
    stats = {"pairs_scored": 0, "iterations": 0, "dim": int(work.shape[1]), "n_neighbors": K}
    with progress_bar(total=max_iters + 1, desc=f"NN-descent k={k}", disable=not progress) as bar:
        split_on = np.ascontiguousarray(work[:, :FOREST_DIM]) if reduce else work
        angular = kind == 0 and met.name == "cosine"
        perms, bounds, counts = kern.rp_forest(split_on, trees, leaf, seed, angular, SYNC_SEGMENTS)
        del split_on
        order, perms = _leaf_order(perms)
        work = work[order]
        if init is not None:  # known neighbours first, in the search's row order
            inv = np.empty_like(order)
            inv[order] = np.arange(n)
            known = init[order]
            kern.seed_lists(work, kind, np.where(known >= 0, inv[np.maximum(known, 0)], -1).astype(np.int32), *lists)
        for t in range(trees):
            stats["pairs_scored"] += int(kern.join_leaves(work, kind, perms[t], bounds[t], counts[t], *lists))
        del perms, bounds
        kern.fill_random(work, kind, seed, *lists)
        bar.update(1)
        check = _target_check(x, met.name, order, lists[1], truth, target_recall, exclude_self)
        _descend(kern, work, kind, lists, max_candidates or min(K, 60), seed, max_iters, delta, stats, bar, check)
    out_d, out_i = _finish(kern, x, met, kind, reduce, *_renumbered(lists[0], lists[1], order), kf)
    if not exclude_self:  # the row itself, merged in at its distance (first, except under ip)
        own = met.pair_distances(x, x).astype(np.float32)[:, None]
        out_d = np.concatenate([own, out_d], 1)
        out_i = np.concatenate([np.arange(n)[:, None], out_i], 1)
        order = np.argsort(out_d, axis=1, kind="stable")[:, :k]
        out_d, out_i = np.take_along_axis(out_d, order, 1), np.take_along_axis(out_i, order, 1)
    return (out_d, out_i, stats) if return_stats else (out_d, out_i)


def merge_knn(a: np.ndarray, a_graph: np.ndarray, b: np.ndarray, b_graph: np.ndarray, k: int, metric: str,
              **descent_kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """The kNN graph of the rows of ``a`` and ``b`` together, from each one's own graph
    (``a_graph``: rows of ``a``, ``b_graph``: rows of ``b``, ``-1`` pads): NN-descent warm-started
    with both (``descent_knn(init=...)``), so its rounds mostly find the pairs across the two.
    Rows are numbered ``a`` first, then ``b``. Used by :meth:`~curriculum.ShardedStore.knn` to meet
    two shards; on 2 x 250k rows of 16-dimensional modes in 128-d it took 0.7x a cold NN-descent
    of the union, at the same recall (0.960). ``descent_kwargs`` go to :func:`descent_knn`.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> a, b = rng.normal(size=(1500, 6)).astype(np.float32), rng.normal(size=(1000, 6)).astype(np.float32)
        >>> d, rows = merge_knn(a, descent_knn(a, 5, "l2")[1], b, descent_knn(b, 5, "l2")[1], 5, "l2")
        >>> rows.shape, bool((rows >= 1500).any(1).mean() > 0.5)   # most rows have neighbours in b
        ((2500, 5), True)
    """
    a, b, k = C.as_vectors(a, "a"), C.as_vectors(b, "b"), C.positive_int(k, "k")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"b: expected {a.shape[1]} columns (as a), got {b.shape[1]}")
    ga, gb = _graph_arg(a_graph, len(a), "a_graph"), _graph_arg(b_graph, len(b), "b_graph")
    width = max(ga.shape[1], gb.shape[1])
    init = np.full((len(a) + len(b), width), -1, np.int32)
    init[:len(a), :ga.shape[1]] = ga
    init[len(a):, :gb.shape[1]] = np.where(gb >= 0, gb + len(a), -1)
    if a.shape[1] < REDUCE_FROM_DIM:  # no second chance here: the longer list (recall 0.958 on the bench's ring)
        descent_kwargs.setdefault("n_neighbors", max(k + 4, int(1.4 * k)))
    return descent_knn(np.concatenate([a, b]), k, metric, init=init, **descent_kwargs)


def _graph_arg(g: Any, n: int, name: str) -> np.ndarray:
    g = np.asarray(g)
    if g.ndim != 2 or len(g) != n or not np.issubdtype(g.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer array of {n} rows (row numbers, -1 for none), "
                         f"got shape {g.shape} and dtype {g.dtype}")
    if g.size and (g.min() < -1 or g.max() >= n):
        raise ValueError(f"{name}: expected row numbers in [-1, {n}), got values in [{g.min()}, {g.max()}]")
    return np.ascontiguousarray(g, np.int32)


def _leaf_order(perms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first tree's row order (the rows of a leaf, and of nearby leaves, side by side) and the
    forest renumbered in it. The search runs on rows stored in that order, so a node's candidates -
    rows near it - mostly sit near each other in memory: at 1M x 128 the local joins ran 1.9x
    faster (3.3 instead of 6.3 s), the whole search 1.18x; no change at 100k (all in cache)."""
    order = perms[0].astype(np.int64)
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    return order, inv[perms].astype(np.int32)


def _renumbered(dist: np.ndarray, idx: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lists of the search's row order (:func:`_leaf_order`) back in the input's rows and numbering."""
    back_d, back_i = np.empty_like(dist), np.empty_like(idx)
    back_d[order] = dist
    back_i[order] = np.where(idx >= 0, order[np.maximum(idx, 0)], -1)
    return back_d, back_i


def _target_check(x: np.ndarray, metric: str, order: np.ndarray, idx: np.ndarray, truth: Any,
                  target: float | None, exclude_self: bool) -> Callable[[], bool] | None:
    """Whether the lists ``idx`` (the search's row order, :func:`_leaf_order`) already clear
    ``target`` on the sampled rows of ``truth`` by two standard errors, as a function to call
    between rounds (None without a target)."""
    if truth is None or target is None:
        return None
    sample, true_d = np.asarray(truth[0], np.int64), np.asarray(truth[1])
    inside = not len(sample) or 0 <= sample.min() <= sample.max() < len(x)
    if true_d.ndim != 2 or len(sample) != len(true_d) or not inside:
        raise ValueError(f"truth: expected (sampled rows of x, their exact distances: one row each), got "
                         f"{len(sample)} rows and distances of shape {true_d.shape}")
    target = C.finite_float(target, "target_recall", 0.0, 1.0, low_open=True)
    goal = min(1.0, target + 2.0 * math.sqrt(target * (1.0 - target) / max(true_d.size, 1)))
    inv = np.empty_like(order)
    inv[order] = np.arange(len(order))
    at = inv[sample]

    def check() -> bool:
        lists = np.where(idx[at] >= 0, order[np.maximum(idx[at], 0)], -1)
        if not exclude_self:  # the truth counts the row itself; the lists never hold it
            lists = np.concatenate([sample[:, None], lists], 1)
        return list_recall(x, sample, lists, true_d, metric) >= goal
    return check


def _descend(kern: Any, work: np.ndarray, kind: int, lists: tuple[np.ndarray, ...], n_cand: int, seed: int,
             max_iters: int, delta: float, stats: dict[str, int], bar: Any,
             check: Callable[[], bool] | None = None) -> None:
    """NN-descent rounds on ``lists`` (distances, rows, new-flags) until fewer than
    ``delta * N * K`` entries change, ``max_iters`` rounds ran or ``check()`` says the target is
    reached (``stats["stopped_at_target"]``)."""
    n, K = lists[1].shape
    threads = _threads()
    for it in range(max_iters):
        new_i, old_i = kern.build_candidates(lists[1], lists[2], n_cand, seed, it, threads)
        changed, scored = kern.local_join(work, kind, new_i, old_i, *lists, 4096, threads)
        stats["pairs_scored"] += int(scored)
        stats["iterations"] = it + 1
        bar.update(1)
        if changed <= delta * n * K:
            break
        if check is not None and check():
            stats["stopped_at_target"] = True
            break


def _threads() -> int:
    import numba

    return int(numba.get_num_threads())


def _finish(kern: Any, x: np.ndarray, met: Any, kind: int, reduce: bool, dist: np.ndarray, idx: np.ndarray,
            k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each list as distances in the module's convention (rescored on ``x``
    when the search ran reduced)."""
    if reduce:
        raw, rows = kern.rescore(x, 0 if met.name != "l2" else 1, idx, k)
    else:
        kern.sort_heaps(dist, idx)
        raw, rows = dist[:, :k].copy(), idx[:, :k].astype(np.int64)
    rows = np.where(np.isfinite(raw), rows, -1)
    if met.name == "l2":
        out = np.sqrt(np.maximum(raw, 0.0))
    elif met.name == "cosine":
        out = 1.0 + raw  # raw = -cos
    else:
        out = raw
    return np.ascontiguousarray(out, np.float32), rows


__all__ = ["REDUCE_FROM_DIM", "REDUCE_VARIANCE", "PCA_SAMPLE", "FOREST_DIM", "pca_projection", "descent_knn",
           "merge_knn"]
