"""The region route of the sharded kNN graph (:meth:`ShardedStore.knn` ``method="region"``, and
``"auto"`` where its recall ceiling allows): rows regrouped by where they lie, not by id.

Rows live on the rank of their id, so every rank's shard spreads over the whole space and the
rings must bring every shard to every other. Here the pool is cut into regions once - k-means of
:data:`REGIONS_PER_RANK` x world centroids (fitted on rank 0 from a sample, broadcast), the
regions split among the ranks by recursive bisection along the principal axis of their centroids,
weighted by their rows (so a rank's regions are neighbours), then regions moved one at a time
between ranks while that lowers a soft maximum of the batches (:func:`refine_owners`) - and each
row is sent, by one all-to-all, to the ranks owning its ``overlap`` nearest regions.
Each rank then builds the graph of its batch with the one-process engine
(:meth:`EmbeddingStore.knn`: exact, blocked or NN-descent, whichever its plan picks), and every
batch row's list goes home, where the lists of a row sent to two ranks are merged. Per rank the
work is its batch - ``(1 + dup) / world`` of the pool - and the bytes one row exchange and one
list exchange, so both shrink with more ranks, unlike the rings'.

A true neighbour pair is found only if both rows reach a common rank: the share of sampled rows'
exact neighbours that do (the *ceiling*) is measured before any row moves, for each overlap, and
the smallest overlap whose ceiling clears the target by :data:`CEILING_MARGIN` runs, with the
batch engine's target raised to ``target / ceiling``. Where none does (neighbourhoods that
k-means regions cut: the Debian text embeddings, 0.949 with 2 regions a row at 4 ranks, 0.967 with
3 at 8), or where it would send more than :data:`MAX_COPIES` copies of a row (isotropic noise: 1.7
at 2 ranks), the route is not taken (but for ``auto`` in place of the NN-descent ring, which does
more work at any copies below ``1 + 1.4 (world // 2)``: the text set at 4 ranks, 0.983 with 3
regions and 1.8 copies).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from ..neighbors import PLAN_SAMPLE, brute_knn, sort_dedupe

if TYPE_CHECKING:  # pragma: no cover
    from .sharded import ShardedStore

REGIONS_PER_RANK = 32   # k-means regions per rank (finer regions: more balanced batches, more boundary)
REGION_SAMPLE = 64      # rows sampled per region for their k-means
OVERLAPS = (2, 3)       # a row goes to the ranks of its this many nearest regions (the smallest that clears)
CEILING_MARGIN = 0.02   # the ceiling must clear the target by this much (the batch engine loses a little)
MAX_COPIES = 1.5        # ... and send at most this many copies of a row on average (else the rings do less work)
MAX_BATCH_TARGET = 0.995
BALANCE_POWER = 16      # the owners' refinement lowers the sum of batch sizes to this power (a soft maximum)
OWNER_MAPS = ("refined", "bisected")  # the regions' ranks both ways; the plan takes the one that clears cheaper
_BITS = 21              # a row's nearest regions packed in one int64 (below 2^21 regions)


@dataclass(frozen=True)
class RegionPlan:
    """Where each of this shard's rows goes: ``ranks[:, :overlap]`` (each row's nearest regions'
    ranks under the ``owners`` map, nearest first; ``overlap`` None: the route is not taken), the
    sampled recall ceiling and the copies per row of every overlap tried with that map, and the
    truth sample reused to measure the graph's recall afterwards. Made by :func:`plan_regions`
    (collective).

    Example:
        >>> plan = RegionPlan(np.zeros((0, 3), np.int64), 2, {2: 0.98, 3: 0.99}, {2: 1.2, 3: 1.4},
        ...                   np.zeros(0, np.int64), np.zeros((0, 10), np.int64), cleared=2)
        >>> round(plan.batch_target(0.95), 4)   # pairs beyond the ceiling are lost: the batches aim higher
        0.9694
    """

    ranks: np.ndarray
    overlap: int | None
    ceilings: dict[int, float]
    copies: dict[int, float]
    sample_ids: np.ndarray
    truth: np.ndarray
    cleared: int | None = None  # the overlap that clears the target with the smallest batches, whatever its copies
    owners: str = OWNER_MAPS[0]  # which of :data:`OWNER_MAPS` gave the ranks

    def batch_target(self, target: float) -> float:
        """The target of each rank's batch graph: pairs beyond the ceiling are lost whatever it finds."""
        return min(MAX_BATCH_TARGET, max(target, target / self.ceilings[self.overlap]))


def bisect_regions(centroids: np.ndarray, counts: np.ndarray, world: int) -> np.ndarray:
    """The rank of every region: recursive bisection of the centroids along their count-weighted
    principal axis, each cut at the count share of the ranks on either side - contiguous groups
    of regions with about equal rows.

    Example:
        >>> c = np.array([[0.], [1], [2], [10], [11], [12]], np.float32)
        >>> bisect_regions(c, np.ones(6), 2).tolist()
        [0, 0, 0, 1, 1, 1]
    """
    owner = np.zeros(len(centroids), np.int64)
    todo = [(np.arange(len(centroids)), 0, world)]
    while todo:
        idx, first, w = todo.pop()
        if w == 1 or len(idx) <= 1:
            owner[idx] = first
            continue
        c, wt = centroids[idx].astype(np.float64), np.maximum(counts[idx].astype(np.float64), 1e-9)
        mu = (c * wt[:, None]).sum(0) / wt.sum()
        axis = np.linalg.svd((c - mu) * np.sqrt(wt[:, None]), full_matrices=False)[2][0]
        order = idx[np.argsort((c - mu) @ axis, kind="stable")]
        left = w // 2
        cum = np.concatenate([[0.0], np.cumsum(np.maximum(counts[order], 1e-9))])
        goal = cum[-1] * left / w
        i = int(np.searchsorted(cum, goal))  # cut at i or i - 1: whichever leaves the left side nearer its share
        cut = i - 1 if i >= len(cum) or goal - cum[i - 1] <= cum[i] - goal else i
        cut = min(max(cut, 1), len(order) - 1)
        todo += [(order[:cut], first, left), (order[cut:], first + left, w - left)]
    return owner


def plan_regions(store: "ShardedStore", k: int, target: float, seed: int = 0, labels: bool = False) -> RegionPlan:
    """Fit the regions, give them to ranks both ways (:data:`OWNER_MAPS`), and measure each map's
    and overlap's ceiling on :data:`PLAN_SAMPLE` rows sampled over all shards and its batches
    over all rows; the plan takes the smallest largest batch that clears (:func:`_choose`). With
    ``labels``, the ceilings are those of each row's nearest rows of another label (the negatives
    table). Collective."""
    vec, metric, world = store.local.vectors(), store.metric, store.world
    n_reg = region_count(len(store), world)
    fitted = store.fit_on_root(REGION_SAMPLE * n_reg, seed, vec, lambda s: fit_regions(s, n_reg, metric, world, seed))
    cent, owners = _split(fitted)
    regions = _nearest_regions(vec, cent, metric)
    packed = _pack(regions)
    m = min(PLAN_SAMPLE, len(store))
    lab = store.local.labels if labels else np.zeros(len(vec), np.int64)
    q, q_ids, q_packed, q_lab = store._sample(m, seed + 17, [vec, store.local.ids, packed, lab], None)
    nb_packed, truth = store.exact_neighbours(q, q_ids, k, extra=packed, q_labels=q_lab if labels else None)
    near = regions.shape[1]
    q_reg, nb_reg = _unpack(q_packed, near), _unpack(np.maximum(nb_packed, 0), near)
    ceilings = [_ceilings(o[q_reg], o[nb_reg], truth) for o in owners]
    loads = store.comm.all_reduce(_loads(owners, regions, world).astype(np.float64))
    pick, overlap, cleared = _choose(ceilings, loads, len(store), target)
    copies = {ov: float(c / max(len(store), 1)) for ov, c in zip(OVERLAPS, loads[pick].sum(-1))}
    return RegionPlan(owners[pick][regions], overlap, ceilings[pick], copies, q_ids, truth, cleared, OWNER_MAPS[pick])


def region_count(n: int, world: int) -> int:
    """Regions for ``n`` rows on ``world`` ranks: :data:`REGIONS_PER_RANK` a rank, 16 rows a region at least.

    Example:
        >>> region_count(1_000_000, 4), region_count(1_000, 4)
        (128, 62)
    """
    return int(min(REGIONS_PER_RANK * world, max(1, n // 16)))


def fit_regions(sample: np.ndarray, n_reg: int, metric: str, world: int, seed: int = 0) -> np.ndarray:
    """k-means of ``n_reg`` regions on ``sample`` and each region's rank under both
    :data:`OWNER_MAPS`: :func:`bisect_regions` on the sample rows listing the region first or
    second (a rank's batch holds both), and that improved by :func:`refine_owners`. The centroids
    with the two ranks as the last columns (one array to broadcast)."""
    km = faiss.Kmeans(sample.shape[1], n_reg, niter=10, seed=seed, spherical=metric == "cosine",
                      min_points_per_centroid=1, max_points_per_centroid=REGION_SAMPLE, verbose=False)
    km.train(np.ascontiguousarray(sample, np.float32))
    cent = np.ascontiguousarray(km.centroids, np.float32)
    near = brute_knn(sample, cent, min(2, len(cent)), metric)[1]
    bisected = bisect_regions(cent, np.bincount(near.ravel(), minlength=len(cent)), world)
    refined = refine_owners(bisected, near[:, 0], near[:, 1], world) if near.shape[1] == 2 else bisected
    return np.concatenate([cent, np.stack([refined, bisected], 1).astype(np.float32)], 1)


def batch_sizes(owner: np.ndarray, first: np.ndarray, second: np.ndarray, world: int) -> np.ndarray:
    """Rows each rank's batch holds when every row goes to the ranks of its two nearest regions
    (``first``, ``second``; once where one rank owns both).

    Example:
        >>> batch_sizes(np.array([0, 0, 1]), np.array([0, 0, 2]), np.array([1, 2, 1]), 2).tolist()
        [3, 2]
    """
    return _rank_loads(np.asarray(owner)[np.stack([first, second], 1)], world)


def refine_owners(owner: np.ndarray, first: np.ndarray, second: np.ndarray, world: int,
                  max_moves: int | None = None) -> np.ndarray:
    """The bisection's owners improved by moving one region at a time to another rank, the move
    that lowers ``sum((batch / mean) ** BALANCE_POWER)`` most, until none does - a soft maximum of
    the batches (:func:`batch_sizes` of the sample rows' two nearest regions), so the largest
    batch shrinks and fewer rows are cut between two ranks. Bisection alone leaves the largest
    batch ~1.2x the mean (the principal axis orders the regions, not their neighbourhoods); on the
    distributed bench's 1M pool the largest batch falls 0.381 -> 0.343 of N at 4 ranks, 0.213 ->
    0.162 at 8, 0.107 -> 0.086 at 16.

    Example:
        >>> first, second = np.array([0, 0, 1, 1, 2, 2, 3]), np.array([1, 1, 2, 2, 3, 3, 2])  # a chain 0-1-2-3
        >>> batch_sizes(np.array([0, 0, 0, 1]), first, second, 2).tolist()
        [7, 3]
        >>> owner = refine_owners(np.array([0, 0, 0, 1]), first, second, 2)
        >>> owner.tolist(), batch_sizes(owner, first, second, 2).tolist()
        ([0, 0, 1, 1], [4, 5])
    """
    from scipy import sparse

    n_reg = len(owner)
    owner = np.asarray(owner, np.int64).copy()
    ones = np.ones(2 * len(first))
    pairs = sparse.csr_matrix((ones, (np.r_[first, second], np.r_[second, first])), shape=(n_reg, n_reg))
    pairs.sum_duplicates()  # rows listing regions g and h, either order (sparse: 256 ranks hold 8,192 regions)
    total = np.asarray(pairs.sum(1)).ravel()
    size = batch_sizes(owner, first, second, world).astype(np.float64)
    scale = max(size.mean(), 1.0)
    cost = lambda v: (v / scale) ** BALANCE_POWER  # noqa: E731
    at = np.arange(n_reg)
    held = np.zeros((n_reg, world))                  # (region, rank): its rows whose other region that rank owns
    np.add.at(held, (np.repeat(at, np.diff(pairs.indptr)), owner[pairs.indices]), pairs.data)
    for _ in range(max_moves if max_moves is not None else 4 * n_reg):
        from_r = size[owner] - total + held[at, owner]  # the owner's batch without the region
        to_s = size[None, :] + total[:, None] - held  # rank s's batch with it
        gain = cost(from_r)[:, None] - cost(size[owner])[:, None] + cost(to_s) - cost(size)[None, :]
        gain[at, owner] = np.inf
        g, s = np.unravel_index(int(np.argmin(gain)), gain.shape)
        if not gain[g, s] < -1e-12 * world:
            break
        size[owner[g]], size[s] = from_r[g], to_s[g, s]
        span = slice(pairs.indptr[g], pairs.indptr[g + 1])
        near, count = pairs.indices[span], pairs.data[span]
        held[near, owner[g]] -= count     # symmetric: region g's row lists the regions sharing rows with it
        held[near, s] += count
        owner[g] = s
    return owner


def region_outlook(vec: np.ndarray, k: int, metric: str, world: int, target: float = 0.95,
                   seed: int = 0) -> dict[str, Any]:
    """What the route would do on ``world`` ranks, computed in one process on all of ``vec``: the
    owner map it takes, each overlap's ceiling, copies per row and largest batch (in shards of
    ``N / world`` rows), and the overlap ``knn(auto)`` would take (None: a ring instead). For
    projections past the ranks at hand.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(4000, 2)).astype(np.float32)
        >>> out = region_outlook(x, 5, "l2", 4)
        >>> out["overlap"], out["ceilings"][2] > 0.97, 1.0 < out["copies"][2] < 1.5
        (2, True, True)
    """
    from ..neighbors.plan import sample_truth

    rng = np.random.default_rng(seed)
    n_reg = region_count(len(vec), world)
    fitted = fit_regions(vec[np.sort(rng.choice(len(vec), min(len(vec), REGION_SAMPLE * n_reg), replace=False))],
                         n_reg, metric, world, seed)
    cent, owners = _split(fitted)
    regions = _nearest_regions(vec, cent, metric)
    sample = rng.choice(len(vec), min(PLAN_SAMPLE, len(vec)), replace=False)
    truth = sample_truth(vec, sample, k, metric)
    ceilings = [_ceilings(o[regions[sample]], o[regions[np.maximum(truth, 0)]], truth) for o in owners]
    loads = _loads(owners, regions, world)
    pick, overlap, cleared = _choose(ceilings, loads, len(vec), target)
    return {"world": world, "owners": OWNER_MAPS[pick], "ceilings": ceilings[pick],
            "copies": {ov: float(c / len(vec)) for ov, c in zip(OVERLAPS, loads[pick].sum(-1))},
            "largest": {ov: float(c * world / len(vec)) for ov, c in zip(OVERLAPS, loads[pick].max(-1))},
            "cleared": cleared, "overlap": overlap}


def _split(fitted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fit_regions`' array as ``(centroids, owners)``, one row of ``owners`` per map."""
    maps = len(OWNER_MAPS)
    return np.ascontiguousarray(fitted[:, :-maps]), np.ascontiguousarray(fitted[:, -maps:].T.astype(np.int64))


def _nearest_regions(vec: np.ndarray, cent: np.ndarray, metric: str) -> np.ndarray:
    """Each row's :data:`OVERLAPS`-many nearest regions, nearest first (the last repeated where
    there are fewer regions)."""
    near = max(OVERLAPS)
    if not len(vec):
        return np.zeros((0, near), np.int64)
    regions = brute_knn(vec, cent, min(near, len(cent)), metric)[1]
    return np.pad(regions, ((0, 0), (0, near - regions.shape[1])), mode="edge")


def _rank_loads(ranks: np.ndarray, world: int) -> np.ndarray:
    """Rows each rank receives when every row goes once to each distinct rank of its row of ``ranks``."""
    s = np.sort(ranks, axis=1)
    first = np.ones(s.shape, bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    return np.bincount(s[first], minlength=world)


def _loads(owners: np.ndarray, regions: np.ndarray, world: int) -> np.ndarray:
    """:func:`_rank_loads` of these rows for every owner map and overlap: ``(maps, overlaps, world)``."""
    return np.stack([[_rank_loads(o[regions[:, :ov]], world) for ov in OVERLAPS] for o in owners])


def _choose(ceilings: list[dict[int, float]], loads: np.ndarray, n: int,
            target: float) -> tuple[int, int | None, int | None]:
    """``(map, overlap, cleared)``: of the (map, overlap) pairs whose ceiling clears ``target`` by
    :data:`CEILING_MARGIN`, the one with the smallest largest batch - ``overlap`` None where it
    sends more than :data:`MAX_COPIES` copies of a row (``cleared`` still names it), both None
    where none clears (the map then: the highest ceiling at the largest overlap)."""
    largest, copies = loads.max(-1), loads.sum(-1) / max(n, 1)
    ok = [(copies[m, j] > MAX_COPIES, largest[m, j], m, ov) for m in range(len(ceilings))
          for j, ov in enumerate(OVERLAPS) if ceilings[m][ov] >= target + CEILING_MARGIN]
    if not ok:
        return max(range(len(ceilings)), key=lambda m: ceilings[m][max(OVERLAPS)]), None, None
    over, _, m, ov = min(ok)  # within MAX_COPIES first, then the smallest largest batch
    return m, (None if over else ov), ov


def _ceilings(q_ranks: np.ndarray, nb_ranks: np.ndarray, truth: np.ndarray) -> dict[int, float]:
    """Per overlap: the share of the sampled rows' true neighbours (``truth`` >= 0) that reach a
    rank their row reaches."""
    out = {}
    for ov in OVERLAPS:
        meet = (q_ranks[:, None, :ov, None] == nb_ranks[:, :, None, :ov]).any((2, 3))
        out[ov] = float(meet[truth >= 0].mean()) if (truth >= 0).any() else 1.0
    return out


def region_graph(store: "ShardedStore", plan: RegionPlan, k: int, exclude_self: bool, target: float,
                 progress: bool | None, device: Any = None,
                 labels: bool = False) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Run the route ``plan`` chose: rows to their regions' ranks, each batch's graph by the
    one-process engine (exact on ``device`` where one is given; with ``labels``, the batch's
    negatives table by :func:`~curriculum.neighbors.negatives.negatives_table`), the lists home
    and merged. ``(distances, ids, report)``. Collective."""
    comm, world = store.comm, store.world
    vec, ids = store.local.vectors(), store.local.ids
    go = plan.ranks[:, :plan.overlap]
    to = [np.flatnonzero((go == r).any(1)) for r in range(world)]
    bv = np.concatenate(comm.exchange([vec[t] for t in to]))
    bi = np.concatenate(comm.exchange([ids[t] for t in to]))
    bl = np.concatenate(comm.exchange([store.local.labels[t] for t in to])) if labels else None
    start = time.perf_counter()
    if len(bi) > 1:
        run = batch_table if labels else _batch_graph
        d, nb, report = run(store, bv, bi, bl, min(k, len(bi) - 1), exclude_self, plan.batch_target(target),
                            progress, device)
        d, nb = np.pad(d.astype(np.float32), ((0, 0), (0, k - d.shape[1])), constant_values=np.inf), \
            np.pad(nb, ((0, 0), (0, k - nb.shape[1])), constant_values=-1)
    else:
        d, nb, report = np.full((len(bi), k), np.inf, np.float32), np.full((len(bi), k), -1, np.int64), {}
    batch_s = time.perf_counter() - start
    home = store.owner(bi)
    back = [np.flatnonzero(home == r) for r in range(world)]
    got_i = np.concatenate(comm.exchange([bi[b] for b in back]))
    got_d = np.concatenate(comm.exchange([d[b] for b in back]))
    got_nb = np.concatenate(comm.exchange([nb[b] for b in back]))
    best_d, best_i = _merged(store.local.rows_of(got_i), got_d, got_nb, len(ids), k, plan.overlap)
    rows, secs = np.stack(comm.all_gather(np.array([len(bi), batch_s], np.float64))).T
    return best_d, best_i, {"batch_engine": report.get("method", "exact"), "overlap": plan.overlap,
                            "batch_rows_max": int(rows.max()), "batch_rows_min": int(rows.min()),
                            "batch_seconds_max": float(secs.max()), "batch_seconds_min": float(secs.min()),
                            "copies_per_row": float(rows.sum() / max(len(store), 1))}


def _batch_graph(store: "ShardedStore", vec: np.ndarray, ids: np.ndarray, labels: None, k: int, exclude_self: bool,
                 target: float, progress: bool | None, device: Any) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A region batch's kNN graph by the one-process engine (:meth:`EmbeddingStore.knn`), as ids."""
    from .core import EmbeddingStore

    batch = EmbeddingStore(store.dim, metric=store.metric, exact_threshold=store.exact_threshold)
    batch.add(vec, ids)
    d, nb = batch.knn(k, exclude_self=exclude_self, progress=progress, target_recall=target, device=device)
    return d, nb, dict(batch.last_knn_report)


def batch_table(store: "ShardedStore", vec: np.ndarray, ids: np.ndarray, labels: np.ndarray, k: int,
                exclude_self: bool, target: float, progress: bool | None,
                device: Any = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A region batch's (or a world of one's) negatives table - each row's ``k`` nearest rows of
    another label by :func:`~curriculum.neighbors.negatives.negatives_table` - as distances and
    ids, and the table's report (``exclude_self`` and ``device``: the batch graph's signature).

    Example:
        >>> from curriculum.store import ShardedStore
        >>> s = ShardedStore(1, metric="l2"); x = np.array([[0.], [1], [1.5], [4]], np.float32)
        >>> d, i, info = batch_table(s, x, np.array([10, 11, 12, 13]), np.array([0, 0, 1, 1]), 1, True, 0.95, False)
        >>> i.ravel().tolist(), d.ravel().tolist()
        ([12, 12, 11, 11], [1.5, 0.5, 0.5, 3.0])
    """
    from ..neighbors import pair_distances
    from ..neighbors.negatives import negatives_table

    x = np.ascontiguousarray(vec, np.float32)  # a shard's rows are stored prepared
    rows, info = negatives_table(x, labels, k, store.metric, target=target, progress=bool(progress))
    d = np.full(rows.shape, np.inf, np.float32)
    for s in range(0, len(rows), 4096):  # (rows, k, dim) gathered a few thousand rows at a time
        r = rows[s:s + 4096]
        d[s:s + 4096] = np.where(r >= 0, pair_distances(x[s:s + 4096], x[np.maximum(r, 0)], store.metric), np.inf)
    return d, np.where(rows >= 0, ids[np.maximum(rows, 0)], -1), {**info,
                                                                   "method": f"negatives table ({info['method']})"}


def _merged(rows: np.ndarray, d: np.ndarray, nb: np.ndarray, n: int, k: int,
            overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Each home row's ``k`` nearest over the lists its batches sent (a neighbour found by two
    batches counted once)."""
    cand_d = np.full((n, overlap * k), np.inf, np.float32)
    cand_i = np.full((n, overlap * k), -1, np.int64)
    order = np.argsort(rows, kind="stable")
    first = np.searchsorted(rows[order], rows[order], side="left")
    slot = np.empty(len(rows), np.int64)
    slot[order] = np.arange(len(rows)) - first  # the how-many-th list of its row
    cols = slot[:, None] * k + np.arange(k)[None, :]
    cand_d[rows[:, None], cols], cand_i[rows[:, None], cols] = d, nb
    best_d, best_i = sort_dedupe(cand_d, cand_i)
    return best_d[:, :k], best_i[:, :k]


def _pack(ranks: np.ndarray) -> np.ndarray:
    out = np.zeros(len(ranks), np.int64)
    for j in range(ranks.shape[1]):
        out |= ranks[:, j].astype(np.int64) << (_BITS * j)
    return out


def _unpack(packed: np.ndarray, width: int) -> np.ndarray:
    mask = (1 << _BITS) - 1
    return np.stack([(packed >> (_BITS * j)) & mask for j in range(width)], -1)


__all__ = ["REGIONS_PER_RANK", "REGION_SAMPLE", "OVERLAPS", "CEILING_MARGIN", "MAX_COPIES", "BALANCE_POWER",
           "OWNER_MAPS", "RegionPlan", "bisect_regions", "batch_sizes", "refine_owners", "plan_regions", "region_count",
           "fit_regions", "region_outlook", "region_graph", "batch_table"]
