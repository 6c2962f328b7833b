"""The recall plan of the blocked engine: inside its probed blocks the blocked search is exact,
so the recall of any ``nprobe`` is known before it runs - the share of each sampled row's true
neighbours lying in the row's ``nprobe`` nearest blocks. One plan serves the all-points graph
(``EmbeddingStore.knn``) and the negatives table (label-filtered)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._util import checks as C
from .blocked import TWO_LEVEL_FROM, assign_blocks, block_plan_parts, block_purity
from .kernels import exact_topk
from .metric import get_metric

PLAN_SAMPLE = 512  # sampled rows whose exact neighbours measure the recall
COARSE_TWO_LEVEL_FROM = 256  # a plan on blocks of more than 256 rows (knn(auto)'s screen) is two-level from this
                             # many blocks (1M rows: one level's k-means of 976 blocks took 2.6 s of its ~4.5 s)


def probe_ranks(centroids: np.ndarray, assign: np.ndarray, sample: np.ndarray, neighbours: np.ndarray,
                metric: str, pure: np.ndarray | None = None) -> np.ndarray:
    """For each sampled row and each of its true neighbours (rows, ``-1`` = none): the neighbour's
    block's position in the probe order of the row's block (0 = probed first), as
    :func:`probe_lists` - or, with ``pure``, :func:`probe_lists_other_label` - orders them. The
    blocked search is exact inside its probes, so recall(nprobe) = share of ranks < nprobe.

    Example:
        >>> import numpy as np
        >>> c = np.array([[0.], [1.], [10.]], np.float32)
        >>> probe_ranks(c, np.array([0, 1, 2]), np.array([0]), np.array([[1, 2]]), "l2").tolist()  # row 0's neighbours' blocks
        [[1, 2]]
    """
    import torch

    n_blocks = len(centroids)
    blocks, inv = np.unique(assign[sample], return_inverse=True)
    cu, ca = torch.from_numpy(centroids[blocks]), torch.from_numpy(centroids)
    # centroids are ranked by L2 unless the metric is ip (as the blocks were assigned)
    dist = get_metric("ip" if metric == "ip" else "l2").score(cu, ca)
    dist[torch.arange(len(blocks)), torch.from_numpy(blocks)] = -torch.inf  # its own block first
    if pure is not None:  # a block of one label never probes blocks holding only that label
        pt = torch.from_numpy(np.asarray(pure, np.int64))
        dist.masked_fill_((pt[blocks][:, None] >= 0) & (pt[None, :] == pt[blocks][:, None]), torch.inf)
    order = torch.argsort(dist, dim=1, stable=True).numpy()
    rank = np.empty_like(order)
    rank[np.arange(len(blocks))[:, None], order] = np.arange(n_blocks)[None, :]
    need = rank[inv[:, None], assign[np.maximum(neighbours, 0)]]
    return np.where(neighbours >= 0, need, -1)


def nprobe_for(ranks: np.ndarray, target: float, floor: int, n_blocks: int) -> tuple[int, float]:
    """The smallest nprobe (>= ``floor``) whose sampled recall clears ``target`` by two standard
    errors - a quantile of the ranks (``-1`` entries ignored) - and its estimated recall.

    Example:
        >>> import numpy as np
        >>> ranks = np.tile(np.array([[0, 0, 1, 1, 2]]), (400, 1))   # every neighbour within the 3 nearest blocks
        >>> nprobe_for(ranks, 0.95, floor=1, n_blocks=10)[0]
        3
    """
    flat = np.sort(ranks[ranks >= 0].ravel())
    if not flat.size:
        return int(min(floor, n_blocks)), 1.0
    goal = min(1.0, target + 2.0 * math.sqrt(target * (1.0 - target) / flat.size))
    p = int(flat[max(int(math.ceil(goal * flat.size)) - 1, 0)]) + 1
    p = int(min(max(p, floor), n_blocks))
    return p, float((flat < p).mean())


def sample_truth(vec: np.ndarray, sample: np.ndarray, k: int, metric: str, exclude_self: bool = True,
                 return_distances: bool = False) -> Any:
    """The exact ``k`` nearest rows of each ``sample`` row (itself left out with ``exclude_self``),
    and with ``return_distances`` their distances first.

    Example:
        >>> x = np.array([[0.], [1.], [3.], [7.]], np.float32)
        >>> sample_truth(x, np.array([0, 3]), 2, "l2").tolist()
        [[1, 2], [2, 1]]
    """
    dist, ex = exact_topk(vec[sample], vec, k + int(exclude_self), metric)
    keep = np.stack([(r != q) if exclude_self else np.ones(len(r), bool) for r, q in zip(ex, sample)])
    rows = np.stack([r[m][:k] for r, m in zip(ex, keep)])
    return (np.stack([d[m][:k] for d, m in zip(dist, keep)]), rows) if return_distances else rows


def sampled_recall(vec: np.ndarray, rows: np.ndarray, k: int, metric: str, exclude_self: bool = True,
                   seed: int = 0, truth: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """The recall@k of a computed graph (``rows``: each row's neighbour rows, ``-1`` = none)
    against the exact neighbours of :data:`PLAN_SAMPLE` sampled rows. A found row at no more than
    the true ``k``-th distance counts (among exact duplicates any choice is right); a sampled row
    with fewer than ``k`` true neighbours (``inf`` distances: few rows of another label) counts
    the ones it has. ``truth`` = ``(sample, true distances)`` already known
    (:attr:`RecallPlan.truth`) skips their search.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(600, 4)).astype(np.float32)
        >>> truth = sample_truth(x, np.arange(600), 3, "l2")
        >>> sampled_recall(x, truth, 3, "l2"), sampled_recall(x, np.full_like(truth, -1), 3, "l2")
        (1.0, 0.0)
    """
    if truth is None:
        sample = np.random.default_rng(seed).choice(len(vec), min(PLAN_SAMPLE, len(vec)), replace=False)
        true_d, _ = sample_truth(vec, sample, k, metric, exclude_self, return_distances=True)
    else:
        sample, true_d = truth
        if len(sample) != len(true_d) or true_d.shape[1] < k:
            raise ValueError(f"truth: expected (sample, distances) with a row of at least {k} distances per "
                             f"sampled row, got {len(sample)} rows and distances of shape {true_d.shape}")
        true_d = true_d[:, :k]
    return list_recall(vec, sample, rows[sample, :k], true_d, metric)


def list_recall(vec: np.ndarray, sample: np.ndarray, lists: np.ndarray, true_d: np.ndarray, metric: str) -> float:
    """The recall@k (``k`` = the columns of ``true_d``, the sampled rows' exact neighbour
    distances) of the ``k`` nearest rows in each sampled row's candidate list (``lists``: one row
    per sampled row, any width, distinct rows, ``-1`` = none) - what a search keeping the ``k``
    best of such lists by exact distance returns. As :func:`sampled_recall` counts.

    Example:
        >>> x = np.array([[0.], [1.], [2.], [9.]], np.float32)
        >>> list_recall(x, np.array([0]), np.array([[3, 2, 1]]), np.array([[1.0, 2.0]]), "l2")
        1.0
    """
    d = get_metric(metric).pair_distances(vec[sample], vec[np.maximum(lists, 0)])
    tol = 1e-5 * np.maximum(np.abs(true_d[:, -1:]), 1.0)
    hit = ((lists >= 0) & (d <= true_d[:, -1:] + tol)).sum(1)
    exist = np.isfinite(true_d).sum(1)  # fewer than k where fewer rows qualify (few of another label)
    return float(np.minimum(hit, exist).sum() / exist.sum()) if exist.sum() else 1.0


@dataclass(frozen=True)
class RecallPlan:
    """The block plan and the smallest ``nprobe`` whose sampled recall clears the target.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(4000, 4)).astype(np.float32)
        >>> plan = plan_recall(x, 10, "l2", target=0.9)
        >>> bool(plan.recall_estimate >= 0.9), plan.assign is None   # only the sampled rows were assigned
        (True, True)
    """

    centroids: np.ndarray
    assign: np.ndarray | None  # each row's block; None when only the sampled rows were assigned
    nprobe: int
    recall_estimate: float
    truth: tuple[np.ndarray, np.ndarray] | None = None  # (sampled rows, their exact k distances); no labels
    coarse: np.ndarray | None = None  # a two-level plan's coarse centroids (to assign the other rows as it did)
    neighbours: np.ndarray | None = None  # with truth: the sampled rows' exact k nearest rows

    def assignments(self, vec: np.ndarray, metric: str) -> np.ndarray:
        """Every row's block: :attr:`assign` where the plan made it, else assigned now as
        :func:`~curriculum.neighbors.blocked.block_plan` would (:func:`~curriculum.neighbors.blocked.assign_blocks`)."""
        return self.assign if self.assign is not None else assign_blocks(vec, self.centroids, metric,
                                                                        coarse=self.coarse)

    def pair_share(self) -> float:
        """Share of all ordered pairs the blocked search scores at this nprobe (blocks of equal
        size on average: the share of the blocks a row probes)."""
        return min(1.0, self.nprobe / max(len(self.centroids), 1))


def plan_recall(vec: np.ndarray, k: int, metric: str, target: float, floor: int = 1, exclude_self: bool = True,
                labels: np.ndarray | None = None, seed: int = 0, block_rows: int = 256,
                reuse: RecallPlan | None = None) -> RecallPlan:
    """Block the rows (:func:`~curriculum.neighbors.blocked.block_plan`, ``N / block_rows``
    blocks), take the exact ``k`` nearest neighbours of :data:`PLAN_SAMPLE` sampled rows (with
    ``labels``: nearest rows of another label, the hard negatives) and read off the smallest
    ``nprobe >= floor`` whose recall clears ``target`` by two standard errors. ``reuse``: a plan
    of the same rows, ``k``, metric, ``exclude_self`` and seed whose sampled truth is taken
    instead of searched again (a coarser plan made first, see
    :func:`curriculum.store.graph.knn_plan`). Blocks of more than 256 rows (that screen) are
    planned in two levels from :data:`COARSE_TWO_LEVEL_FROM` blocks, finer ones from
    :data:`~curriculum.neighbors.blocked.TWO_LEVEL_FROM` (1,024).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(3000, 8)).astype("float32")
        >>> plan = plan_recall(x, 5, "l2", target=0.9)
        >>> 1 <= plan.nprobe <= len(plan.centroids) and plan.recall_estimate >= 0.9
        True
    """
    n = len(vec)
    block_rows = C.positive_int(block_rows, "block_rows")
    sample = np.random.default_rng(seed).choice(n, min(PLAN_SAMPLE, n), replace=False)
    pure, known, partial = None, None, None
    if labels is None:  # only the sampled rows and their neighbours need a block (the engine assigns the rest)
        if reuse is not None and reuse.truth is not None and reuse.neighbours is not None:
            (sample, true_d), truth = reuse.truth, reuse.neighbours
        else:
            true_d, truth = sample_truth(vec, sample, k, metric, exclude_self, return_distances=True)
        known, partial = (sample, true_d), np.union1d(sample, truth[truth >= 0])
    two_level = TWO_LEVEL_FROM if block_rows <= 256 else COARSE_TWO_LEVEL_FROM
    centroids, assign, coarse = block_plan_parts(vec, max(1, n // block_rows), metric, seed, two_level, rows=partial)
    if labels is not None:
        truth = exact_topk(vec[sample], vec, k, metric, labels[sample], labels)[1]
        pure = block_purity(labels, assign, len(centroids))
    ranks = probe_ranks(centroids, assign, sample, truth, metric, pure=pure)
    p, recall = nprobe_for(ranks, target, floor, len(centroids))
    return RecallPlan(centroids, None if (assign < 0).any() else assign, p, recall, known, coarse,
                      None if labels is not None else truth)


__all__ = ['PLAN_SAMPLE', 'COARSE_TWO_LEVEL_FROM', 'probe_ranks', 'nprobe_for', 'sample_truth', 'sampled_recall',
           'list_recall', 'RecallPlan', 'plan_recall']
