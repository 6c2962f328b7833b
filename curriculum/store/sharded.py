"""The embedding store sharded by id over a torch.distributed process group.

Past one machine (or one process's memory) the rows are split by id: the row with id ``i`` lives
on rank ``i % world``, in that rank's own :class:`EmbeddingStore` (its faiss index included).
Everything is carried by torch.distributed collectives (gloo on CPU, NCCL on GPU) through
:class:`curriculum._util.dist.Comm`:

- ``add`` / ``update`` / ``remove``: each rank passes any rows; they are routed to their owners by
  one all-to-all. Arguments are validated on every rank and the decision is agreed before
  anything changes, so a bad argument on one rank raises on all of them with nothing changed.
- ``search``: the queries of every rank are gathered, every shard searches them, the per-shard
  top-k go back to the asking rank by all-to-all and are merged (faiss ``IndexShards`` semantics).
- ``knn``: the all-points graph - rows regrouped once by k-means region, each rank graphing its
  batch (:mod:`curriculum.store.regions`), where a sampled check says the regions hold the
  neighbourhoods; else by a ring: each rank's rows meet their own shard through the store's
  engine, then pass around the ring and meet every other shard; the running top-k travels with
  them and comes home after ``world`` steps.
- ``kmeans``: a k-means++ seeding on a sample every rank draws identically (hash of the ids), then
  Lloyd steps that assign locally and all-reduce sums and counts.
- ``save`` / ``load``: one store file per shard and a JSON manifest written last and atomically;
  ``load`` reopens on the same or a different world size.

Every method except the local reads (``ids``, ``labels``, ``vectors``, ``local``) is collective:
all ranks call it, in the same order, as with torch.distributed itself.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import replace
from typing import Any

import numpy as np

from .._util import checks as C
from .._util.dist import Comm, more_threads
from .._util.io import atomic_write_bytes
from ..neighbors import PLAN_SAMPLE, blocked_knn, brute_knn, device_topk, merge_knn, normalize, nprobe_for, probe_ranks
from ..neighbors.device import checked_device, on_device
from ..neighbors.kernels import exact_topk
from ..neighbors.blocked import assign_blocks, block_label_range, block_plan_parts, purity_of_range
from .core import EmbeddingStore
from .graph import (AUTO_PLAN_MIN_ROWS, DESCENT_MIN_ROWS, DESCENT_PAIRS_PER_LIST_SLOT, DESCENT_PAIRS_PER_ROW,
                    KMeansResult, graph_with_self)
from .regions import RegionPlan, batch_table, plan_regions, region_graph
from .rows import MISSING

MANIFEST = "manifest.json"
FORMAT = "curriculum-sharded-store"
FORMAT_VERSION = 1
SAMPLE_PER_CLUSTER = 256  # k-means is seeded on this many sampled rows per centroid (faiss's default)
MERGE_COST = 0.7  # NN-descent merging two shards' graphs, over a cold NN-descent of both (measured: 0.71)
RING_BLOCK = 65_536       # visiting rows are searched in a shard's index this many at a time
LABEL_PLAN_BLOCK = 256   # rows of a block of the negatives table's global plan, over all shards: a row's
# other-label neighbours lie past its own-label blocks, and coarse blocks multiply the pairs (250k x 128,
# labels following 100 modes, 4 ranks: 32.5 s at 256 rows, 43.6 s at 512, 77 s at 256 per shard)


def id_priority(ids: np.ndarray, seed: int = 0) -> np.ndarray:
    """A pseudo-random, shard-independent priority per id (splitmix64 of ``id`` and ``seed``, as
    int64 >= 0): a bijection of the ids, so priorities never tie. Sampling "the m smallest
    priorities" picks the same rows however they are sharded.

    Example:
        >>> p = id_priority(np.arange(5)); bool((p >= 0).all()), len(set(p.tolist()))
        (True, 5)
    """
    with np.errstate(over="ignore"):
        z = np.asarray(ids, np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(1)).astype(np.int64)


def merge_topk(d: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest of each row's candidates (``inf`` / ``-1`` padding last; ties by id).

    Example:
        >>> merge_topk(np.array([[3., 1, np.inf, 2]]), np.array([[7, 5, -1, 9]]), 2)[1].tolist()
        [[5, 9]]
    """
    from ..neighbors._select_kernels import first_k_by_distance_then_id

    d, ids = np.ascontiguousarray(d), np.ascontiguousarray(ids, np.int64)
    k = min(int(k), d.shape[1])
    out_d, out_i = np.empty((len(d), k), d.dtype), np.empty((len(d), k), np.int64)
    if d.size and k:
        first_k_by_distance_then_id(d, ids, k, out_d, out_i)  # a compiled sort a row (lexsort: 20x the time)
    return out_d, out_i


class ShardedStore:
    """An :class:`EmbeddingStore` sharded by id over a torch.distributed process group.

    Args:
        dim, metric, index, **store_kwargs: as :class:`EmbeddingStore` (each rank's shard is one).
        group: the process group (default: the default group; without one, a world of one).

    ``len(store)`` is the global row count; ``ids`` / ``labels`` / ``vectors()`` are this rank's
    shard. Scores from :mod:`curriculum.difficulty` (``knn_distance``, ``label_disagreement``,
    ``label_entropy``, ``prototype_distance``) accept a sharded store and return this shard's rows;
    :meth:`gather` turns them into the global scores a sampler reads.

    Example:
        >>> import numpy as np
        >>> store = ShardedStore(2, metric="l2")          # under torchrun: one shard per rank
        >>> store.add(np.array([[0., 0], [1, 0], [5, 5]]), labels=[0, 0, 1]).tolist()
        [0, 1, 2]
        >>> store.search(np.array([[0.9, 0]]), k=2)[1].tolist()
        [[1, 0]]
    """

    def __init__(self, dim: int, metric: str = "cosine", index: str = "auto", *, group: Any = None,
                 **store_kwargs: Any) -> None:
        self.local = EmbeddingStore(dim, metric, index, **store_kwargs)
        self.comm = Comm(group)
        self._size, self._next_id, self._missing, self._version = 0, 0, 0, 0
        self._knn_cache: tuple | None = None
        self.last_knn_report: dict[str, Any] = {}

    # ------------------------------------------------------------------ facts and local reads
    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self.local.dim

    @property
    def metric(self) -> str:
        """The metric every shard uses."""
        return self.local.metric

    @property
    def index_spec(self) -> str:
        """Each shard's index spec."""
        return self.local.index_spec

    @property
    def exact_threshold(self) -> int:
        """Each shard's ``exact_threshold``."""
        return self.local.exact_threshold

    @property
    def rank(self) -> int:
        """This process's rank in the group."""
        return self.comm.rank

    @property
    def world(self) -> int:
        """Number of shards (ranks)."""
        return self.comm.world

    @property
    def ids(self) -> np.ndarray:
        """Ids of this rank's shard."""
        return self.local.ids

    @property
    def labels(self) -> np.ndarray:
        """Labels of this rank's shard (``-1``: none)."""
        return self.local.labels

    @property
    def has_labels(self) -> bool:
        """Whether every row of every shard has a label."""
        return self._size > 0 and self._missing == 0

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return (f"ShardedStore(dim={self.dim}, metric={self.metric!r}, rows={self._size}, rank={self.rank}/"
                f"{self.world}, local rows={len(self.local)})")

    def vectors(self, ids: Any = None) -> np.ndarray:
        """Vectors of this shard's rows (``ids`` must live here; see :meth:`owner`)."""
        return self.local.vectors(ids)

    def build(self, progress: bool | None = None) -> None:
        """Build this shard's faiss index now rather than at the first search (each rank its own;
        not a collective)."""
        self.local.build(progress=progress)

    def owner(self, ids: Any) -> np.ndarray:
        """Rank holding each id (``id % world``)."""
        return C.as_ids(ids, "ids", unique=False) % self.world

    @property
    def bytes_sent(self) -> int:
        """Bytes this rank has sent through collectives so far."""
        return self.comm.bytes_sent

    def _sync(self) -> None:
        """Global facts after a collective write (every rank computes the same)."""
        n, miss = len(self.local), int((self.local.labels < 0).sum())
        self._size, self._missing = (int(v) for v in self.comm.all_reduce(np.array([n, miss], np.int64)))
        top = int(self.local.ids.max()) + 1 if n else 0
        self._next_id = max(self._next_id, int(self.comm.all_reduce(np.array([top], np.int64), "max")[0]))
        self._version += 1

    def _route(self, ids: np.ndarray, *arrays: np.ndarray) -> list[np.ndarray]:
        """Send each row (and its entries in ``arrays``) to the rank that owns its id."""
        order, cuts = self._by_owner(ids)
        return [np.concatenate(self.comm.exchange(np.split(a[order], cuts))) for a in (ids, *arrays)]

    def _by_owner(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The order that groups ``ids`` by owner rank, and where each rank's group starts."""
        dest = ids % self.world
        order = np.argsort(dest, kind="stable")
        return order, np.cumsum(np.bincount(dest, minlength=self.world))[:-1]

    def checked(self, fn: Any) -> Any:
        """Run ``fn`` (a local check: argument validation) on every rank and agree: every rank
        raises if any rank's check failed, so no rank goes on into a collective the others left.
        Returns ``fn()``. Collective.

        Example:
            >>> store = ShardedStore(2, metric="l2")          # no process group: a world of one
            >>> store.checked(lambda: 3)
            3
        """
        out, err = None, None
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - any local failure must stop every rank alike
            err = exc
        self.comm.agree(err)
        return out

    # ------------------------------------------------------------------ writes (collective)
    def add(self, vectors: Any, ids: Any = None, labels: Any = None, step: int | None = None) -> np.ndarray:
        """Add this rank's rows (any number, also none); returns their ids. ``ids`` default to
        ``max id + 1 ..`` in rank order (all ranks pass ids, or none does). Collective."""
        def check() -> tuple:
            v = C.as_vectors(vectors, "vectors", self.dim)
            self.local._prep(v)  # the metric's checks (a zero vector under cosine), result unused
            n = v.shape[0]
            lab = C.as_labels(labels, "labels", n) if labels is not None else np.full(n, MISSING, np.int64)
            st = None if step is None else C.positive_int(step, "step", 0)
            return v, lab, st, None if ids is None else C.as_ids(ids, "ids", n=n)
        v, lab, st, given = self.checked(check)
        auto, labelled = (int(c) for c in self.comm.all_reduce(np.array([given is None, labels is not None], np.int64)))
        self.checked(lambda: (_same_on_all(auto, self.world, "ids", "given on some ranks and not on others"),
                               _same_on_all(labelled, self.world, "labels", "given on some ranks and not on others")))
        if given is None:
            counts = np.concatenate(self.comm.all_gather(np.array([len(v)], np.int64)))
            start = self._next_id + int(counts[:self.rank].sum())
            given = np.arange(start, start + len(v), dtype=np.int64)
        got_ids, got_v, got_lab = self._route(given, v, lab)
        self.checked(lambda: self._check_new(got_ids))
        self.local.add(got_v, got_ids, got_lab if labelled else None, st)
        self._sync()
        return given

    def _check_new(self, ids: np.ndarray) -> None:
        u, c = np.unique(ids, return_counts=True)
        clash = np.concatenate([u[c > 1], ids[self.local.contains(ids)]])
        if len(clash):
            raise ValueError(f"ids: expected ids not yet in the store (nor given twice), got {clash[:5].tolist()}")

    def _check_present(self, ids: np.ndarray) -> None:
        u, c = np.unique(ids, return_counts=True)
        if (c > 1).any():
            raise ValueError(f"ids: expected each id once over all ranks, got {u[c > 1][:5].tolist()} more than once")
        missing = ids[~self.local.contains(ids)]
        if len(missing):
            raise KeyError(f"ids: ids not in the store: {missing[:5].tolist()}")

    def update(self, ids: Any, vectors: Any, step: int | None = None, labels: Any = None) -> None:
        """Replace the vectors (and optionally labels) of existing ids, routed to their owners. Collective."""
        def check() -> tuple:
            i = C.as_ids(ids, "ids")
            v = C.as_vectors(vectors, "vectors", self.dim)
            if len(v) != len(i):
                raise ValueError(f"vectors: expected {len(i)} rows (one per id), got {len(v)}")
            self.local._prep(v)
            lab = C.as_labels(labels, "labels", len(i)) if labels is not None else np.full(len(i), MISSING)
            return i, v, lab, None if step is None else C.positive_int(step, "step", 0)
        i, v, lab, st = self.checked(check)
        with_labels = int(self.comm.all_reduce(np.array([labels is not None], np.int64))[0])
        self.checked(lambda: _same_on_all(with_labels, self.world, "labels", "given on some ranks and not on others"))
        got_ids, got_v, got_lab = self._route(i, v, lab)
        self.checked(lambda: self._check_present(got_ids))
        if len(got_ids):
            self.local.update(got_ids, got_v, st, got_lab if with_labels else None)
        self._sync()

    def remove(self, ids: Any) -> None:
        """Remove rows by id (any rank may name any id). Collective."""
        i = self.checked(lambda: C.as_ids(ids, "ids"))
        (got,) = self._route(i)
        self.checked(lambda: self._check_present(got))
        if len(got):
            self.local.remove(got)
        self._sync()

    # ------------------------------------------------------------------ reads (collective)
    def search(self, queries: Any, k: int, exclude_ids: Any = None,
               exclude_labels: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest ids over all shards to each of this rank's queries (see
        :meth:`EmbeddingStore.search` for the arguments; ``exclude_ids`` 1-D or ``(n, m)``). Every
        shard searches every rank's queries; the per-shard top-k are merged. Collective."""
        def check() -> tuple:
            kk = C.positive_int(k, "k")
            q = C.as_vectors(queries, "queries", self.dim)
            self.local._prep(q, "queries")
            labs = None if exclude_labels is None else C.as_labels(exclude_labels, "exclude_labels", len(q))
            return kk, q, _per_query(exclude_ids, len(q)), labs
        k, q, excl, labs = self.checked(check)
        return self.fan_out(q, labs, excl, lambda all_q, all_labs, all_excl: self.local.search(
            all_q, k, exclude_ids=all_excl if all_excl.shape[1] else None, exclude_labels=all_labs), k)

    def rescore(self, queries: Any, candidate_ids: Any, k: int, exclude_labels: Any = None,
                exclude_ids: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest of each query's ``candidate_ids`` (``(n, m)`` ids on any shard, ``-1``
        pads) at their *current* vectors and labels (see :meth:`EmbeddingStore.rescore`): every
        shard scores the candidates it holds, the per-shard top-k are merged. Collective.

        Example:
            >>> s = ShardedStore(1, metric="l2"); _ = s.add(np.array([[0.], [2.], [1.]]))
            >>> s.rescore(np.array([[0.]]), np.array([[1, 2]]), k=1)[1].tolist()
            [[2]]
        """
        def check() -> tuple:
            kk = C.positive_int(k, "k")
            q = C.as_vectors(queries, "queries", self.dim)
            cand = C.to_numpy(candidate_ids, "candidate_ids")
            if cand.ndim != 2 or cand.shape[0] != len(q) or (cand.size and not np.issubdtype(cand.dtype, np.integer)):
                raise ValueError(f"candidate_ids: expected an integer array of shape ({len(q)}, m), got "
                                 f"{cand.shape} {cand.dtype}")
            labs = None if exclude_labels is None else C.as_labels(exclude_labels, "exclude_labels", len(q))
            return kk, q, cand.astype(np.int64), labs, _per_query(exclude_ids, len(q))
        k, q, cand, labs, excl = self.checked(check)
        width = int(self.comm.all_reduce(np.array([cand.shape[1]]), "max")[0])
        # one padded matrix travels: the candidates (padded to the widest rank's), then the exclusions
        both = np.concatenate([np.pad(cand, ((0, 0), (0, width - cand.shape[1])), constant_values=-1), excl], 1)

        def local(all_q: np.ndarray, all_labs: np.ndarray | None, all_both: np.ndarray) -> tuple:
            c, e = all_both[:, :width], all_both[:, width:]
            if len(self.local) == 0 or width == 0:
                return np.full((len(all_q), k), np.inf, np.float32), np.full((len(all_q), k), -1, np.int64)
            return self.local.rescore(all_q, c, k, exclude_labels=all_labs, exclude_ids=e if e.shape[1] else None)
        return self.fan_out(q, labs, both, local, k)

    def fan_out(self, q: np.ndarray, labels: np.ndarray | None, per_query: np.ndarray, local: Any,
                k: int) -> tuple[np.ndarray, np.ndarray]:
        """Every rank's queries ``q`` (with their ``labels``, or None on every rank, and a
        ``per_query`` id matrix, -1 padded to the widest rank's) answered on every shard by
        ``local(queries, labels, ids) -> (distances, ids)`` (the ``k`` nearest it holds); each rank
        gets back its own queries' per-shard answers, merged into the ``k`` nearest (ties by id).
        The pattern of :meth:`search` and :meth:`rescore`, for other per-shard searches.
        Collective.

        Example:
            >>> s = ShardedStore(1, metric="l2"); _ = s.add(np.array([[0.], [2.], [1.]]))
            >>> s.fan_out(np.array([[0.]], np.float32), None, np.zeros((1, 0), np.int64),
            ...           lambda aq, al, ai: s.local.search(aq, 2), 2)[1].tolist()
            [[0, 2]]
        """
        parts = self.comm.all_gather(q)
        all_q = np.concatenate(parts)
        all_ids = _pad_cat(self.comm.all_gather(per_query))
        flags = self.comm.all_reduce(np.array([labels is not None], np.int64))
        self.checked(lambda: _same_on_all(int(flags[0]), self.world, "exclude_labels", "given on some ranks only"))
        all_labs = np.concatenate(self.comm.all_gather(labels)) if labels is not None else None
        d, i = local(all_q, all_labs, all_ids)
        cuts = np.cumsum([len(p) for p in parts])[:-1]
        back_d = self.comm.exchange(np.split(d, cuts))
        back_i = self.comm.exchange(np.split(i, cuts))
        return merge_topk(np.concatenate(back_d, 1), np.concatenate(back_i, 1), k)

    def labels_of(self, ids: Any) -> np.ndarray:
        """Labels of any stored ids (looked up on their owners; ``-1``: no label). Collective."""
        return self._lookup(ids, lambda rows: self.local.labels[rows])

    def vectors_of(self, ids: Any) -> np.ndarray:
        """Vectors of any stored ids, ``(*ids.shape, dim)`` (looked up on their owners). Collective.

        Example:
            >>> store = ShardedStore(2, metric="l2"); _ = store.add(np.array([[1., 2], [3, 4]]), ids=[7, 9])
            >>> store.vectors_of([9]).tolist()
            [[3.0, 4.0]]
        """
        return self._lookup(ids, lambda rows: self.local.vectors(self.local.ids[rows]), (self.dim,), np.float32)

    def steps_of(self, ids: Any) -> np.ndarray:
        """The training step each stored id's vector was computed at (``-1`` unknown). Collective."""
        return self._lookup(ids, lambda rows: self.local.steps[rows])

    def values_of(self, ids: Any, column: Any, tail: tuple = (), dtype: Any = np.int64) -> np.ndarray:
        """``column(shard_ids)`` - values held with the rows, such as a table built shard-wise,
        one ``tail``-shaped entry per id - for any stored ``ids``, each computed on the rank that
        owns the id; ``(*ids.shape, *tail)``. Collective.

        Example:
            >>> s = ShardedStore(1, metric="l2"); _ = s.add(np.zeros((3, 1)), ids=[4, 5, 6])
            >>> s.values_of([[6, 4]], lambda ids: ids * 10).tolist()
            [[60, 40]]
        """
        return self._lookup(ids, lambda rows: column(self.local.ids[rows]), tuple(tail), dtype)

    def _lookup(self, ids: Any, column: Any, tail: tuple = (), dtype: Any = np.int64) -> np.ndarray:
        """``column(rows)`` of any stored ids, asked of their owners by one exchange each way."""
        shape = np.shape(C.to_numpy(ids, "ids"))
        flat = self.checked(lambda: C.as_ids(np.ravel(C.to_numpy(ids, "ids")), "ids", unique=False))
        order, cuts = self._by_owner(flat)
        asked = self.comm.exchange(np.split(flat[order], cuts))
        rows = self.checked(lambda: [self.local.rows_of(a) for a in asked])
        answers = self.comm.exchange([np.asarray(column(r), dtype).reshape(len(r), *tail) for r in rows])
        out = np.empty((len(flat), *tail), dtype)
        out[order] = np.concatenate(answers)
        return out.reshape(*shape, *tail)

    def gather(self, scores: Any) -> Any:
        """A :class:`~curriculum.Difficulty` of this shard's rows -> the global one on every rank
        (ids and scores gathered: ``16 N`` bytes). Collective."""
        from ..difficulty.base import Difficulty

        if not isinstance(scores, Difficulty):
            raise TypeError(f"scores: expected a Difficulty, got {type(scores).__name__}")
        ids = np.concatenate(self.comm.all_gather(scores.ids))
        vals = np.concatenate(self.comm.all_gather(np.asarray(scores.scores, np.float64)))
        return Difficulty(vals, ids, scores.name)

    # ------------------------------------------------------------------ graph (collective)
    def knn(self, k: int, exclude_self: bool = True, method: str = "auto", progress: bool | None = None,
            exclude_same_label: bool = False, target_recall: float = 0.95, device: Any = None,
            **knn_kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """The all-points kNN graph of this shard's rows over all shards: ``(distances, ids)``,
        each ``(n_local, k)``, row ``i`` for ``ids[i]``.

        ``method="region"`` - and ``"auto"`` first, wherever its sampled ceiling clears
        ``target_recall`` (:mod:`curriculum.store.regions`) - regroups the rows by k-means region
        for the graph: each row goes, by one all-to-all, to the ranks owning its 2 (or 3) nearest
        regions, each rank builds its batch's graph with :meth:`EmbeddingStore.knn`'s engine, and
        the lists come home (``copies_per_row`` and ``region_ceiling`` in the report; a rank's
        work and bytes are ``copies / world`` of the pool's, shrinking with more ranks). Where the
        ceiling falls short (neighbourhoods that ignore regions; many ranks), the rings run.

        A ring: each shard's rows meet their own shard, then travel round the ring carrying their
        running top-k and meet every other shard, and come home after ``world`` steps. How a
        shard is met: ``method="auto"`` / ``"blocked"`` - the blocked engine on one *global*
        block plan (blocks of ~256 rows per shard, fitted once on rank 0 from a sample and
        broadcast; every row keeps its block as it travels), so a row is scored only against the
        rows of its ``nprobe`` nearest blocks on each other shard - the blocked engine's work, split
        over the ranks (its own shard through :meth:`EmbeddingStore.knn`'s engine) - with
        ``nprobe`` the smallest whose recall, measured on 512
        sampled rows against their exact neighbours over all shards, clears ``target_recall``
        (``"auto"`` scores every pair where one process would: under 5,000 rows or ``index="flat"``);
        ``method="descent"`` - and ``"auto"`` where that plan needs as many pairs per row as one
        process's ``knn`` would leave to NN-descent (embeddings whose neighbourhoods k-means blocks
        do not follow) - NN-descent (:meth:`_merge_ring`): each shard's own graph by its store's
        engine, then every pair of shards merged in one NN-descent warm-started from their two
        graphs, with the recall measured afterwards on 512 sampled rows (``recall_estimate``);
        ``"exact"`` scores every pair (equal to the one-process exact graph); ``"index"`` searches
        each shard's faiss index. On one rank, :meth:`EmbeddingStore.knn` runs (any engine,
        ``knn_kwargs`` go to it). ``exclude_same_label=True`` gives the negatives table: the
        ``k`` nearest rows of another label - by the region route where its sampled ceiling of
        the rows' other-label neighbours clears ``target_recall`` (``"auto"``; each rank's batch
        table by :func:`~curriculum.neighbors.negatives.negatives_table`), else (and with
        ``"blocked"``) by the blocked ring on a global plan fitted for other-label neighbours (blocks
        of :data:`LABEL_PLAN_BLOCK` rows; a block probes the nearest blocks holding another label on
        any shard; rows left short are answered exactly, ``completed_exactly``); ``"exact"`` (and
        ``"auto"`` where one process scores every pair) every other-label pair; ``"index"`` each
        shard's label-filtered index search. ``device`` (a torch device,
        e.g. each rank's ``"cuda"``) scores the graph there by matrix products and top-k: the
        region route's batches exact on the device (its recall is then the ceiling's), else - and with ``"exact"`` - the exact ring, each
        visiting shard scored against this one on the device (``method`` "auto", "exact" or
        "region"). ``last_knn_report`` says what ran. Bytes sent per rank: ``world x``
        its rows ``x (4 dim + 12 k + 24)`` (NN-descent: ``world / 2 x (4 dim + 28 k + 8)`` - the rows
        travel half the ring with their own graph and lists, the lists alone the rest; the region
        route: ``copies x (4 dim + 12 k + 16)``). Collective.
        """
        k = self.checked(lambda: _knn_args(k, method, exclude_same_label, self, device))
        if not exclude_self and not exclude_same_label:  # the others' graph, each row merged in
            return graph_with_self(self.local.ids, self.local.vectors(), k, len(self), self.metric,
                                   lambda kk: self.knn(kk, True, method, progress, False, target_recall, device,
                                                       **knn_kwargs))
        key = (self._version, bool(exclude_self), method, bool(exclude_same_label), target_recall, str(device),
               tuple(sorted(knn_kwargs.items())))
        if self._knn_cache is not None and self._knn_cache[0] == key and self._knn_cache[1] >= k:
            return self._knn_cache[2][:, :k].copy(), self._knn_cache[3][:, :k].copy()
        if self.world == 1 and method != "exact" and not exclude_same_label and exclude_self:
            d, i = self.local.knn(k, method="auto" if method == "region" else method, progress=progress,
                                  target_recall=target_recall, device=device, **knn_kwargs)
            self.last_knn_report = dict(self.local.last_knn_report)
            self._knn_cache = (key, k, d, i)
            return d.copy(), i.copy()
        if self.world == 1 and method == "auto" and exclude_same_label and not self._exact_graph():
            loc = self.local  # the one-process table (EmbeddingStore's miner builds the same)
            d, i, rep = batch_table(self, loc.vectors(), loc.ids, loc.labels, k, exclude_self, target_recall, progress)
            self.last_knn_report = {**rep, "method": f"one shard: {rep['method']}"}
            self._knn_cache = (key, k, d, i)
            return d.copy(), i.copy()
        regions = self._region_route(k, method, exclude_same_label, target_recall, device)
        if regions is not None and regions.overlap is not None:
            return self._region_knn(key, regions, k, exclude_self, target_recall, progress, device,
                                    exclude_same_label)
        visit, blk = self._visitor(k, method, exclude_same_label, target_recall, device)
        if visit is None and method == "auto" and _regions_over_ring(regions, self.world):
            out = self._region_knn(key, replace(regions, overlap=regions.cleared), k, exclude_self, target_recall,
                                   progress)
            self.last_knn_report["instead_of"] = "descent (shard pairs merged)"  # it does less work than the ring
            return out
        if regions is not None:
            self.last_knn_report.update(region_ceilings=regions.ceilings, region_copies=regions.copies)
        if visit is None:  # NN-descent: shard pairs merged from their own graphs
            best_d, best_i = self._merge_ring(k, exclude_self, target_recall, progress)
            self._knn_cache = (key, k, best_d, best_i)
            return best_d.copy(), best_i.copy()
        vec, ids, labs = self.local.vectors(), self.local.ids, self.local.labels
        if (self.last_knn_report["method"].startswith("blocked") and exclude_self and not exclude_same_label
                and len(ids) > k + 1):
            best_d, best_i = self.local.knn(k, progress=progress, target_recall=target_recall)  # its own engine
            best_d = best_d.astype(np.float32)
            self.last_knn_report["own_shard"] = self.local.last_knn_report.get("method", "exact")
        else:
            best_d, best_i = visit(vec, ids if exclude_self else np.full(len(ids), -1, np.int64), labs, blk, True)
        for _ in range(self.world - 1):
            vec, ids, labs, blk, best_d, best_i = (self.comm.shift(a) for a in (vec, ids, labs, blk, best_d, best_i))
            d, i = visit(vec, ids, labs, blk, False, best_d[:, k - 1])  # only what beats the k-th found so far
            best_d, best_i = merge_topk(np.concatenate([best_d, d], 1), np.concatenate([best_i, i], 1), k)
        if self.world > 1:
            best_d, best_i = self.comm.shift(best_d), self.comm.shift(best_i)
        if exclude_same_label and self.last_knn_report["method"].startswith("blocked"):
            best_d, best_i = self._complete_short(best_d, best_i, k)
        self._knn_cache = (key, k, best_d, best_i)
        return best_d.copy(), best_i.copy()

    def _region_knn(self, key: tuple, plan: RegionPlan, k: int, exclude_self: bool, target: float,
                    progress: bool | None, device: Any = None,
                    labels: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The region route (:mod:`curriculum.store.regions`) with ``plan``'s overlap (with
        ``labels``, each batch's negatives table), its recall measured on the plan's sampled
        truth. Collective."""
        best_d, best_i, rep = region_graph(self, plan, k, exclude_self, target, progress, device, labels)
        self.last_knn_report = {"method": "region (rows regrouped by k-means region)",
                                "region_ceiling": plan.ceilings[plan.overlap], "region_owners": plan.owners, **rep}
        if exclude_self:
            self.last_knn_report["recall_estimate"] = self._sampled_recall(best_i, k, truth=(plan.sample_ids, plan.truth))
        self._knn_cache = (key, k, best_d, best_i)
        return best_d.copy(), best_i.copy()

    def _region_route(self, k: int, method: str, same_label: bool, target: float,
                      device: Any = None) -> RegionPlan | None:
        """The region plan where ``method`` asks for it (its largest overlap even below the
        target), or where ``"auto"`` weighs it (an approximate graph or negatives table of 5,000
        rows or more - on a ``device``, where the region route's exact batches beat the exact ring,
        any graph of that size): its ``overlap`` is None when no overlap's ceiling clears ``target``. Collective."""
        if method == "region":
            plan = plan_regions(self, k, target)
            return plan if plan.overlap is not None else replace(plan, overlap=max(plan.ceilings))
        exact = self._exact_graph() and device is None
        if method != "auto" or exact or len(self) < AUTO_PLAN_MIN_ROWS:
            return None
        return plan_regions(self, k, target, labels=same_label)

    def _visitor(self, k: int, method: str, same_label: bool, target: float,
                 device: Any = None) -> tuple[Any, np.ndarray]:
        """How rows from any shard are searched in this one - ``visit(vec, ids, labels, blocks,
        own, bound)`` -> the top-k over this shard, never a row's own id, in blocks of
        :data:`RING_BLOCK` rows (the blocked engines keep only what beats ``bound``, the rows'
        ``k``-th distance found so far on the ring: at 250k x 128 on 4 ranks the labelled ring's
        top-k selection, 60% of a visit, then sees a few candidates a row) - and this shard's
        rows' blocks of the global plan (zeros when there is none); ``visit`` is ``None`` where
        the NN-descent ring (:meth:`_merge_ring`) meets the shards instead."""
        base, base_ids, metric = self.local.vectors(), self.local.ids, self.metric
        blk = np.zeros(len(base), np.int64)
        if method == "index":
            self.last_knn_report = {"method": "index"}

            def one(v: np.ndarray, i: np.ndarray, lab: np.ndarray, b: np.ndarray, own: bool, bound: Any) -> tuple:
                return self.local.search(v, k, exclude_ids=i[:, None], exclude_labels=lab if same_label else None)
        elif same_label:
            one, blk = self._label_visitor(k, method, target)
        elif device is not None:  # the exact ring, scored on the device
            self.last_knn_report = {"method": "exact", "device": str(device)}
            on_dev = on_device(base, metric, device)

            def one(v: np.ndarray, i: np.ndarray, lab: np.ndarray, b: np.ndarray, own: bool, bound: Any) -> tuple:
                return _drop_own(*device_topk(v, on_dev, k + 1, metric, device), base_ids, i, k)
        elif method == "exact" or (method == "auto" and self._exact_graph()):
            self.last_knn_report = {"method": "exact"}

            def one(v: np.ndarray, i: np.ndarray, lab: np.ndarray, b: np.ndarray, own: bool, bound: Any) -> tuple:
                return _drop_own(*brute_knn(v, base, k + 1, metric), base_ids, i, k)
        elif method == "descent":
            self.last_knn_report = {"method": "descent (shard pairs merged)"}
            return None, blk
        else:
            cent, blk, nprobe, est, _ = self._global_plan(k, target)
            per_row = nprobe * len(self) / max(len(cent), 1)  # pairs a row would meet
            if method == "auto" and len(self) >= DESCENT_MIN_ROWS and per_row >= descent_ring_pairs(k, self.world):
                self.last_knn_report = {"method": "descent (shard pairs merged)", "blocked_nprobe": nprobe,
                                        "blocked_pairs_per_row": per_row}
                return None, blk
            self.last_knn_report = {"method": "blocked (global plan)", "nprobe": nprobe, "recall_estimate": est,
                                    "blocks": len(cent)}

            def one(v: np.ndarray, i: np.ndarray, lab: np.ndarray, b: np.ndarray, own: bool, bound: Any) -> tuple:
                d, r = blocked_knn(v, k + int(own), metric, nprobe=nprobe, base=base, centroids=cent, assign=blk,
                                   query_assign=b, bound=bound)
                return _drop_own(d, r, base_ids, i, k)

        step = RING_BLOCK if method == "index" else None  # the engines: all at once (blocks stay full)

        def visit(v: np.ndarray, i: np.ndarray, lab: np.ndarray, b: np.ndarray, own: bool,
                  bound: np.ndarray | None = None) -> tuple:
            if len(v) == 0 or len(base) == 0:
                return np.full((len(v), k), np.inf, np.float32), np.full((len(v), k), -1, np.int64)
            size = step or len(v)
            parts = [one(v[s:s + size], i[s:s + size], lab[s:s + size], b[s:s + size], own,
                         None if bound is None else bound[s:s + size]) for s in range(0, len(v), size)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return visit, blk

    def _label_visitor(self, k: int, method: str, target: float) -> tuple[Any, np.ndarray]:
        """How rows from any shard meet this one for the negatives table - ``one(vec, ids, labels,
        blocks, own)`` -> their ``k`` nearest rows of another label here - and this shard's rows'
        blocks: ``"exact"`` (and ``"auto"`` where one process would score every pair) every pair
        of another label; else the blocked engine on the global plan fitted for other-label
        neighbours (each visiting block probes the nearest blocks holding other labels anywhere)."""
        base, base_ids, base_labels, metric = self.local.vectors(), self.local.ids, self.local.labels, self.metric
        if method == "exact" or (method == "auto" and self._exact_graph()):
            self.last_knn_report = {"method": "exact (other labels)"}

            def one(v: np.ndarray, i: np.ndarray, lab: np.ndarray, b: np.ndarray, own: bool, bound: Any) -> tuple:
                return _drop_own(*exact_topk(v, base, k, metric, lab, base_labels), base_ids, i, k)
            return one, np.zeros(len(base), np.int64)
        cent, blk, nprobe, est, pure = self._global_plan(k, target, labels=True)
        self.last_knn_report = {"method": "blocked (global plan, other labels)", "nprobe": nprobe,
                                "recall_estimate": est, "blocks": len(cent)}

        def one(v: np.ndarray, i: np.ndarray, lab: np.ndarray, b: np.ndarray, own: bool, bound: Any) -> tuple:
            d, r = blocked_knn(v, k, metric, nprobe=nprobe, base=base, centroids=cent, assign=blk, query_assign=b,
                               labels=lab, base_labels=base_labels, pure=pure, bound=bound)
            return _drop_own(d, r, base_ids, i, k)
        return one, blk

    def _complete_short(self, best_d: np.ndarray, best_i: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The negatives table's rows whose probes held fewer than ``k`` rows of another label,
        answered by an exact search of every shard (``completed_exactly`` in the report counts
        them over all shards). Collective."""
        short = np.flatnonzero((best_i < 0).any(1))
        loc = self.local
        parts = [np.concatenate(self.comm.all_gather(a[short])) for a in (loc.vectors(), loc.ids, loc.labels)]
        self.last_knn_report["completed_exactly"] = len(parts[0])
        if not len(parts[0]):
            return best_d, best_i
        d, i = self.exact_neighbours(*parts[:2], k, q_labels=parts[2])
        mine = np.isin(parts[1], loc.ids[short])
        best_d, best_i = best_d.copy(), best_i.copy()
        best_d[short], best_i[short] = d[mine].astype(np.float32), i[mine]
        return best_d, best_i

    def _merge_ring(self, k: int, exclude_self: bool, target: float,
                    progress: bool | None) -> tuple[np.ndarray, np.ndarray]:
        """The NN-descent ring (``method="descent"``, and ``"auto"`` where the blocked plan would
        score NN-descent's share of pairs): each shard's own graph by its store's engine
        (:meth:`EmbeddingStore.knn`, NN-descent on such data); then, for ``world // 2`` steps, each
        shard's rows travel one rank on with their own graph and meet the host's rows in one
        NN-descent warm-started from both graphs (:func:`~curriculum.neighbors.merge_knn`), which
        gives both sides their neighbours across the pair - every pair of shards meets once (in an
        even world the last step's pairs meet on the lower rank only). The travellers' finds go
        home with the lists alone. Recall is measured afterwards on :data:`PLAN_SAMPLE` sampled rows
        against their exact neighbours over all shards (``recall_estimate``). Collective."""
        loc, base, base_ids = self.local, self.local.vectors(), self.local.ids
        if len(loc) > k + 1:
            home_d, home_i = loc.knn(k, exclude_self=exclude_self, progress=progress, target_recall=target)
            self.last_knn_report["own_shard"] = loc.last_knn_report.get("method", "exact")
        else:  # a shard of a few rows: all its pairs
            home_d, home_i = _drop_own(*brute_knn(base, base, k + 1, self.metric), base_ids,
                                       base_ids if exclude_self else np.full(len(base), -1, np.int64), k)
        home_d = home_d.astype(np.float32)
        own = np.full(home_i.shape, -1, np.int32)
        if home_i.size:
            own[home_i >= 0] = loc.rows_of(home_i[home_i >= 0])
        vec, ids, graph = base, base_ids, own
        away_d, away_i = np.full(home_d.shape, np.inf, np.float32), np.full(home_i.shape, -1, np.int64)
        half = self.world // 2
        for step in range(1, half + 1):
            vec, ids, graph, away_d, away_i = (self.comm.shift(a) for a in (vec, ids, graph, away_d, away_i))
            twice = self.world % 2 == 0 and step == half and self.rank >= half  # met on the lower rank
            if len(vec) and len(base) and not twice:
                d, i = self._meet(base, own, vec, graph, ids, k)
                nb = len(base)
                home_d, home_i = merge_topk(np.concatenate([home_d, d[:nb]], 1), np.concatenate([home_i, i[:nb]], 1), k)
                away_d, away_i = merge_topk(np.concatenate([away_d, d[nb:]], 1), np.concatenate([away_i, i[nb:]], 1), k)
        for _ in range(self.world - half):  # the travellers' lists go on round to their home rank
            away_d, away_i = self.comm.shift(away_d), self.comm.shift(away_i)
        best_d, best_i = merge_topk(np.concatenate([home_d, away_d], 1), np.concatenate([home_i, away_i], 1), k)
        if exclude_self:
            self.last_knn_report["recall_estimate"] = self._sampled_recall(best_i, k)
        return best_d, best_i

    def _meet(self, base: np.ndarray, own: np.ndarray, vec: np.ndarray, graph: np.ndarray, ids: np.ndarray,
              k: int) -> tuple[np.ndarray, np.ndarray]:
        """Host rows then visiting rows: each one's neighbours *in the other shard* among the
        pair's ``k`` nearest (ids, ``-1`` / ``inf`` elsewhere)."""
        nb = len(base)
        d, rows = merge_knn(base, own, vec, graph, min(k, nb + len(vec) - 1), self.metric)
        other = np.where(np.arange(len(rows))[:, None] < nb, rows >= nb, (rows < nb) & (rows >= 0))
        union = np.concatenate([self.local.ids, ids])
        return np.where(other, d, np.inf).astype(np.float32), np.where(other, union[np.maximum(rows, 0)], -1)

    def _sampled_recall(self, got: np.ndarray, k: int, seed: int = 17,
                        truth: tuple[np.ndarray, np.ndarray] | None = None) -> float:
        """Recall@k of this shard's graph rows ``got`` (ids, row per stored row, own id left out)
        on :data:`PLAN_SAMPLE` rows sampled over all shards, against their exact neighbours
        (``truth``: the sampled ids and their exact neighbours' ids, already known). Collective."""
        if truth is None:
            m = min(PLAN_SAMPLE, len(self))
            q, q_ids = self._sample(m, seed, [self.local.vectors(), self.local.ids], None)
            truth = (q_ids, self.exact_neighbours(q, q_ids, k)[1])
        q_ids, truth = truth[0], truth[1][:, :k]
        mine = np.flatnonzero(np.isin(q_ids, self.local.ids))
        rows = self.local.rows_of(q_ids[mine]) if len(mine) else np.zeros(0, np.int64)
        hits = sum(len(np.intersect1d(got[r][got[r] >= 0], t[t >= 0])) for r, t in zip(rows, truth[mine]))
        tot = self.comm.all_reduce(np.array([hits, int((truth[mine] >= 0).sum())], np.float64))
        return float(tot[0] / max(tot[1], 1.0))

    def exact_neighbours(self, q: np.ndarray, q_ids: np.ndarray, k: int, extra: np.ndarray | None = None,
                         q_labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``k`` nearest ids over all shards of the queries ``q`` (the same on every rank,
        e.g. from :meth:`sample`), each query's own id ``q_ids`` left out; ``-1`` pads. With
        ``extra`` (one value per row of this shard) its values for the neighbours are returned in
        place of the distances; with ``q_labels``, only rows of another label count (the hard
        negatives). Collective.

        Example:
            >>> s = ShardedStore(1, metric="l2"); _ = s.add(np.array([[0.], [1], [5]]))
            >>> s.exact_neighbours(np.array([[0.]], np.float32), np.array([0]), 2)[1].tolist()
            [[1, 2]]
        """
        vec = self.local.vectors()
        if len(vec):
            d, r = exact_topk(np.ascontiguousarray(q, np.float32), vec, k + 1, self.metric,  # few queries: ~2.5x faiss
                              q_labels, None if q_labels is None else self.local.labels)
        else:
            d, r = np.full((len(q), k + 1), np.inf, np.float32), np.full((len(q), k + 1), -1, np.int64)
        got = np.where(r >= 0, self.local.ids[np.maximum(r, 0)], -1)
        own = got == q_ids[:, None]
        d, got = np.where(own, np.inf, d), np.where(own, -1, got)
        val = got if extra is None else np.where(got >= 0, extra[np.maximum(r, 0)] if len(extra) else -1, -1)
        all_d, all_i, all_v = (np.concatenate(self.comm.all_gather(a), 1) for a in (d, got, val))
        order = np.lexsort((np.where(all_i < 0, np.iinfo(np.int64).max, all_i), all_d), axis=-1)[:, :k]
        ids = np.take_along_axis(all_i, order, 1)
        out = np.take_along_axis(all_d, order, 1) if extra is None else np.take_along_axis(all_v, order, 1)
        return out, ids

    def _exact_graph(self) -> bool:
        """``method="auto"`` scores every pair where one process would: under 5,000 rows in all
        (and within ``exact_threshold``), or with ``index="flat"``."""
        small = len(self) <= self.exact_threshold and len(self) < AUTO_PLAN_MIN_ROWS
        return self.index_spec == "flat" or small

    def _global_plan(self, k: int, target: float, seed: int = 0,
                     labels: bool = False) -> tuple[np.ndarray, np.ndarray, int, float, np.ndarray | None]:
        """Block centroids of the whole pool (``len / (256 world)`` blocks, so that each holds ~256
        rows on every shard and a visit scores full blocks; fitted on rank 0 from 32 sampled rows
        per block, broadcast with a two-level plan's coarse centroids, through which every rank
        assigns its rows as the plan does), this shard's rows' blocks, and the smallest nprobe
        whose recall on :data:`PLAN_SAMPLE` sampled rows clears ``target``. With ``labels``: of
        the rows' other-label neighbours, probing the nearest blocks that hold other labels on any
        shard (the blocks' purity over all shards, the last item; None without), with blocks of
        :data:`LABEL_PLAN_BLOCK` rows over all shards. Collective."""
        vec, metric = self.local.vectors(), self.metric
        n_blocks = max(1, len(self) // (LABEL_PLAN_BLOCK if labels else 256 * self.world))
        coarse: dict[str, np.ndarray] = {}

        def fit(sample: np.ndarray) -> np.ndarray:  # on rank 0; a two-level plan's coarse centroids kept
            cent, _, top = block_plan_parts(sample, n_blocks, metric, seed, rows=np.zeros(0, np.int64))
            coarse["top"] = np.zeros((0, vec.shape[1]), np.float32) if top is None else top
            return cent
        cent = self.fit_on_root(32 * n_blocks, seed, vec, fit)
        top = self.comm.broadcast(coarse.get("top"), np.float32)  # every rank assigns as the plan does
        blk = (assign_blocks(vec, cent, metric, coarse=top if len(top) else None) if len(vec)
               else np.zeros(0, np.int64))
        pure = None
        if labels:  # a block is of one label only if it is on every shard
            lo, hi = block_label_range(self.local.labels, blk, len(cent))
            pure = purity_of_range(self.comm.all_reduce(lo, "min"), self.comm.all_reduce(hi, "max"))
        m = min(PLAN_SAMPLE, len(self))
        q, q_ids, q_blk, q_lab = self._sample(m, seed + 17, [vec, self.local.ids, blk, self.local.labels], None)
        nb, _ = self.exact_neighbours(q, q_ids, k, extra=blk, q_labels=q_lab if labels else None)  # -1: none
        assign = np.concatenate([q_blk, np.maximum(nb.ravel(), 0)])
        neighbours = np.where(nb.ravel() >= 0, m + np.arange(nb.size), -1).reshape(nb.shape)
        ranks = probe_ranks(cent, assign, np.arange(m), neighbours, metric, pure=pure)
        nprobe, est = nprobe_for(ranks, target, 1, len(cent))
        return cent, blk, nprobe, est, pure

    def kmeans(self, n_clusters: int, seed: int = 0, niter: int = 20, nredo: int = 1,
               spherical: bool | None = None, progress: bool | None = None) -> KMeansResult:
        """k-means over all shards: k-means++ seeding (on rank 0, broadcast) on a sample drawn the
        same at any world size (:func:`id_priority`, ``256`` rows per centroid), then ``niter`` Lloyd steps over
        every row that assign locally and all-reduce sums and counts. ``assignments`` and
        ``distances`` are this shard's rows'; ``nredo`` is accepted for the one-process signature
        (one run). Collective.

        Example:
            >>> import numpy as np
            >>> s = ShardedStore(2, metric="l2"); _ = s.add(np.array([[0., 0], [0, 1], [9, 9], [9, 8]]))
            >>> km = s.kmeans(2)
            >>> bool(km.assignments[0] == km.assignments[1] != km.assignments[2])
            True
        """
        from ..neighbors import kmeans as KM

        k = self.checked(lambda: _kmeans_args(n_clusters, niter, nredo, len(self)))
        sph = self.metric == "cosine" if spherical is None else bool(spherical)
        x = self.local.vectors()
        x = normalize(x) if sph and self.metric != "cosine" else x
        init = self.fit_on_root(k * SAMPLE_PER_CLUSTER, seed, x, lambda s: KM.kmeans_pp_init(s, k, seed=seed))
        cent = KM.kmeans(x, k, spherical=sph, seed=seed, niter=niter, init=init, points_per_centroid=0,
                         reduce=self.comm.all_reduce, tol=0.0)
        d, a = brute_knn(x, cent, 1, "cosine" if sph else self.metric)
        return KMeansResult(cent, a[:, 0].astype(np.int64), d[:, 0])

    def sample(self, m: int, seed: int = 0, rows: np.ndarray | None = None, root: int | None = None,
               mask: np.ndarray | None = None) -> np.ndarray | None:
        """The ``m`` rows of smallest :func:`id_priority` over all shards, in priority order (the
        same rows and order at any world size), gathered on every rank - or only on rank ``root``
        (the others get None). ``rows``: this shard's rows to draw from (default its vectors);
        ``mask`` (one bool per row of this shard): draw only among those. Collective."""
        got = self._sample(m, seed, [self.local.vectors() if rows is None else rows], root, mask)
        return None if got is None else got[0]

    def _sample(self, m: int, seed: int, arrays: list[np.ndarray], root: int | None,
                mask: np.ndarray | None = None) -> list[np.ndarray] | None:
        """:meth:`sample` of several per-row arrays at once (one priority cut for all)."""
        pri = id_priority(self.local.ids, seed)
        cand = np.arange(len(pri)) if mask is None else np.flatnonzero(mask)
        mine = cand[np.argsort(pri[cand])[:m]]
        top = np.sort(np.concatenate(self.comm.all_gather(pri[mine])))[:m]
        take = mine[pri[mine] <= (top[-1] if len(top) else -1)]
        parts = [pri[take]] + [np.ascontiguousarray(a[take]) for a in arrays]
        if root is None:
            got = [np.concatenate(self.comm.all_gather(p)) for p in parts]
        else:
            gathered = [self.comm.gather(p, root) for p in parts]
            if gathered[0] is None:
                return None
            got = [np.concatenate(g) for g in gathered]
        order = np.argsort(got[0])
        return [g[order] for g in got[1:]]

    def fit_on_root(self, m: int, seed: int, rows: np.ndarray, fit: Any, mask: np.ndarray | None = None) -> np.ndarray:
        """``fit(sample)`` computed once, on rank 0, from :meth:`sample` ``(m, seed, rows, mask=mask)``,
        and broadcast (float32) to every rank: the sample travels to one rank, the fit runs once -
        with the threads of every rank on rank 0's host, which wait meanwhile (:func:`more_threads`).
        Collective."""
        sample = self.sample(m, seed, rows=rows, root=0, mask=mask)
        local = self.comm.local_world()

        def on_root() -> np.ndarray | None:
            if sample is None:
                return None
            with more_threads(local):
                return fit(sample)
        return self.comm.broadcast(self.checked(on_root), np.float32)

    # ------------------------------------------------------------------ persistence (collective)
    def save(self, path: str | os.PathLike) -> None:
        """Write every shard to folder ``path`` (one store file per rank) and then, on rank 0, a
        manifest naming them, atomically. Until the manifest is replaced, a load reads the previous
        save: a rank that dies or fails midway leaves it intact. Older shard files are removed
        after the new manifest is in place. Collective.

        Example:
            >>> store.save("pool.sharded")                        # doctest: +SKIP
            >>> store = ShardedStore.load("pool.sharded")         # on any number of ranks  # doctest: +SKIP
        """
        path = os.fspath(path)
        old = _read_manifest(path) if os.path.exists(os.path.join(path, MANIFEST)) else None
        gen = 0 if old is None else int(old["generation"]) + 1
        name = f"shard-g{gen:06d}-r{self.rank:05d}-of{self.world:05d}.store"

        def write_shard() -> None:
            os.makedirs(path, exist_ok=True)
            self.local.save(os.path.join(path, name))
        self.checked(write_shard)
        names = [f"shard-g{gen:06d}-r{r:05d}-of{self.world:05d}.store" for r in range(self.world)]
        self.checked(lambda: self._write_manifest(path, gen, names) if self.rank == 0 else None)
        if self.rank == 0:
            for f in glob.glob(os.path.join(path, "shard-g*.store")):
                if os.path.basename(f) not in names:
                    os.unlink(f)

    def _write_manifest(self, path: str, gen: int, names: list[str]) -> None:
        s = self.local
        body = {"format": FORMAT, "version": FORMAT_VERSION, "generation": gen, "world": self.world,
                "shards": names, "rows": self._size, "next_id": self._next_id, "dim": s.dim, "metric": s.metric,
                "index": s.index_spec, "exact_threshold": s.exact_threshold,
                "rebuild_threshold": s.rebuild_threshold, "index_params": s.index_params}
        atomic_write_bytes(os.path.join(path, MANIFEST), json.dumps(body, indent=1).encode())

    @classmethod
    def load(cls, path: str | os.PathLike, group: Any = None) -> "ShardedStore":
        """Reopen a :meth:`save` on any number of ranks: on the same world size each rank reads
        its own shard (index included); otherwise each reads every shard file and keeps the rows
        it owns. Collective."""
        path = os.fspath(path)
        comm = Comm(group)
        man = _read_manifest(path)
        store = cls(man["dim"], man["metric"], man["index"], group=group, exact_threshold=man["exact_threshold"],
                    rebuild_threshold=man["rebuild_threshold"], index_params=man.get("index_params"))
        files = [os.path.join(path, f) for f in man["shards"]]
        if man["world"] == comm.world:
            store.local = EmbeddingStore.load(files[comm.rank])
        else:
            for f in files:
                _adopt(store.local, EmbeddingStore.load(f), comm.rank, comm.world)
        store._next_id = int(man["next_id"])
        store._sync()
        if len(store) != int(man["rows"]):
            raise ValueError(f"path: {path!r}: the manifest counts {man['rows']} rows, the shards hold {len(store)}")
        return store


def descent_ring_pairs(k: int, world: int) -> float:
    """Pairs per row the blocked ring must need before ``knn(method="auto")`` runs the NN-descent
    ring instead: one process's threshold (the same trade as :meth:`EmbeddingStore.knn`) times the
    NN-descent ring's work over one process's - its own shard, then ``world // 2`` merged pairs
    of twice its rows at :data:`MERGE_COST` - which, unlike the blocked ring's, does not shrink
    with more ranks: past ~30 ranks the blocked ring wins again on the bench's pool.

    Example:
        >>> descent_ring_pairs(10, 4) < descent_ring_pairs(10, 64)
        True
    """
    one = max(DESCENT_PAIRS_PER_ROW, DESCENT_PAIRS_PER_LIST_SLOT * (k + 8) ** 2)
    return one * (1 + MERGE_COST * 2 * (world // 2))


def _regions_over_ring(plan: RegionPlan | None, world: int) -> bool:
    """Where the NN-descent ring would run: the region route instead when its ceiling clears the
    target at any copies that cost less than the ring's work - ``copies / world`` of the rows a
    rank against the ring's ``(1 + 2 MERGE_COST (world // 2)) / world``."""
    if plan is None or plan.cleared is None:
        return False
    return plan.copies[plan.cleared] < 1 + MERGE_COST * 2 * (world // 2)


def _drop_own(d: np.ndarray, rows: np.ndarray, base_ids: np.ndarray, own: np.ndarray,
              k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of this shard as ids, each query's own id dropped, ``k`` kept."""
    got = np.where(rows >= 0, base_ids[np.maximum(rows, 0)], -1)
    mine = got == own[:, None]
    return merge_topk(np.where(mine, np.inf, d).astype(np.float32), np.where(mine, -1, got), k)


def _adopt(dest: EmbeddingStore, src: EmbeddingStore, rank: int, world: int) -> None:
    """Copy the rows of ``src`` owned by ``rank`` into ``dest`` (labels and steps kept)."""
    snap = src.snapshot()
    mine = np.flatnonzero(snap.ids % world == rank)
    groups = np.stack([snap.steps[mine], snap.labels[mine] >= 0], 1)
    for st, labelled in np.unique(groups, axis=0):
        sel = mine[(groups[:, 0] == st) & (groups[:, 1] == labelled)]
        dest.add(snap.vec[sel], snap.ids[sel], snap.labels[sel] if labelled else None, None if st < 0 else int(st))


def _read_manifest(path: str) -> dict[str, Any]:
    f = os.path.join(path, MANIFEST)
    try:
        with open(f, "rb") as fh:
            man = json.loads(fh.read().decode())
    except FileNotFoundError:
        raise FileNotFoundError(f"path: expected a sharded store folder with {MANIFEST}, found none in {path!r}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"path: {f!r} is not a valid manifest ({exc})") from None
    if man.get("format") != FORMAT or man.get("version") != FORMAT_VERSION:
        raise ValueError(f"path: {f!r} is not a {FORMAT} manifest of version {FORMAT_VERSION}")
    return man


def _same_on_all(count: int, world: int, name: str, what: str) -> None:
    if count not in (0, world):
        raise ValueError(f"{name}: expected on every rank or on none, got {what} ({count} of {world})")


def _per_query(exclude_ids: Any, n: int) -> np.ndarray:
    """``exclude_ids`` as an ``(n, m)`` matrix (a 1-D list applies to every query; -1 pads)."""
    if exclude_ids is None:
        return np.zeros((n, 0), np.int64)
    e = C.to_numpy(exclude_ids, "exclude_ids")
    if e.size and not np.issubdtype(e.dtype, np.integer):
        raise ValueError(f"exclude_ids: expected integer ids, got dtype {e.dtype}")
    if e.ndim == 1:
        return np.tile(e.astype(np.int64), (n, 1))
    if e.ndim != 2 or e.shape[0] != n:
        raise ValueError(f"exclude_ids: expected a 1-D array or shape ({n}, m), got {e.shape}")
    return e.astype(np.int64)


def _pad_cat(parts: list[np.ndarray]) -> np.ndarray:
    width = max((p.shape[1] for p in parts), default=0)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=-1) for p in parts])


def _knn_args(k: Any, method: str, same_label: bool, store: ShardedStore, device: Any = None) -> int:
    k = C.positive_int(k, "k")
    C.choice(method, "method", ("auto", "exact", "index", "blocked", "descent", "region"))
    if device is not None:
        checked_device(device)
        if method not in ("auto", "exact", "region") or same_label:
            raise ValueError(f"device: scores the exact ring or the region route's batches, so method must be 'auto', "
                             f"'exact' or 'region' without exclude_same_label; got method={method!r}"
                             f"{', exclude_same_label=True' if same_label else ''}")
    if k > len(store) - 1:
        raise ValueError(f"k: expected at most {len(store) - 1} (store size minus self), got {k}")
    if same_label and method in ("region", "descent"):
        raise ValueError(f"method: {method!r} builds the all-points graph; the negatives table "
                         "(exclude_same_label=True) runs with 'auto', 'blocked', 'exact' or 'index'")
    if same_label and not store.has_labels:
        raise ValueError("exclude_same_label: needs a label on every stored row")
    return k


def _kmeans_args(n_clusters: Any, niter: Any, nredo: Any, n: int) -> int:
    k = C.positive_int(n_clusters, "n_clusters")
    C.positive_int(niter, "niter"), C.positive_int(nredo, "nredo")
    if k > n:
        raise ValueError(f"n_clusters: expected at most the store size {n}, got {k}")
    return k

__all__ = ["ShardedStore", "id_priority", "merge_topk", "descent_ring_pairs", "MANIFEST", "FORMAT", "FORMAT_VERSION",
           "LABEL_PLAN_BLOCK",
           "RING_BLOCK", "MERGE_COST"]
