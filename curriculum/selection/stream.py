"""Selecting the informative part of a stream, with bounded memory forever.

:class:`StreamSelector` wraps any iterable of samples (an ``IterableDataset``, a generator...).
It fills a bounded window of candidates, scores them, emits the selected share and forgets the
rest. The default score is *novelty*: the distance of a candidate's embedding to its nearest
neighbour in a sliding-window store of recently emitted embeddings (oldest evicted first), so
near-repeats of what training just saw are skipped. The selected share follows a pacing
schedule of the window count (``keep = keep_min + (keep_max - keep_min) * c(t)``, or a fixed
``keep``), by top-k or by sampling proportional to the score. With the novelty score, top-k is
farthest-point greedy: each pick also counts as "seen" for the rest of its window, so a burst
of near-repeats yields one representative, not all of them.

Under DataLoader workers each worker reads its own shard of the stream (blocks of ``window``
consecutive items go round-robin to the workers), and under torch.distributed each rank its own
shard as well.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import faiss
import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .._util import checks as C
from .._util.dist import dist_info
from .._util.linalg import matmul
from ..neighbors import METRICS, get_metric
from ..pacing import Pacing, as_pacing
from ..store.index import add_rows, train_quantizer
from .stream_device import TorchWindowStore, as_device


EXACT_UNTIL = 8_192   # the window is searched exactly up to this many embeddings, then through IVF lists
REBUILD_GROWTH = 8    # the lists are re-trained when the window has grown this many times since the last
NPROBE = 2            # lists searched per query (more barely helps: the codes limit the hits)
LIST_ROWS = 1000      # embeddings per IVF list (so a query's cost does not grow with the window)
TRAIN_SAMPLE = 65_536 # lists and codes are trained on at most this many embeddings of the window
RECHECK = 8           # candidates per query whose distances are computed exactly from the ring
STALE_SHARE = 16      # evicted embeddings are removed from the lists in batches of capacity / this
QUOTA_SHORTLIST = 2   # the cluster quota balances the 2m best candidates of a window
REPEAT_GAIN = 0.1     # ... but not the near-repeats among them (priority below this x the median pick's)
METRIC_KIND = {"l2": 0, "cosine": 1, "ip": 2}  # the re-check kernel's code of each metric
RETRAIN_MIN = 65_536  # the lists are re-trained after 2 x capacity insertions, and not more often than this


class SlidingWindowStore:
    """A ring buffer of the ``capacity`` most recent embeddings and the nearest-neighbour search
    over them, at a cost that stays (nearly) flat as the window grows.

    Up to :data:`EXACT_UNTIL` embeddings the search is exact (faiss BLAS). Beyond, an inverted
    file over the window answers it: k-means lists of about :data:`LIST_ROWS` embeddings, their
    members (from 32 dims) as 4-bit product-quantizer codes scanned with SIMD lookups (faiss
    FastScan; below, as plain vectors), each query
    scanning ``nprobe`` lists; its :data:`RECHECK` best candidates are re-scored exactly from the
    ring, so a distance returned is exact and only a neighbour missed by the codes or in an
    unscanned list can make it too large. Every embedding is filed under its insertion
    number, so eviction of the oldest is one range removal; the lists are re-trained when the
    window has grown :data:`REBUILD_GROWTH` times and whenever it has turned over completely
    (twice; the stream drifts). ``index="exact"`` keeps the exact search at every size;
    ``index="ivf"`` goes approximate from 1,024 embeddings (or a full smaller window).

    Example:
        >>> w = SlidingWindowStore(4, 2, metric="cosine")
        >>> w.add(np.array([[10.0, 0.0]]))
        >>> w.nearest_distance(np.array([[3.0, 0.0]])).tolist()   # parallel vectors: distance 0
        [0.0]
    """

    def __init__(self, capacity: int, dim: int, metric: str = "l2", index: str = "auto",
                 nprobe: int = NPROBE) -> None:
        self.capacity, self.dim = C.positive_int(capacity, "capacity"), C.positive_int(dim, "dim")
        self.metric = C.choice(metric, "metric", tuple(METRICS))
        self.index_kind = C.choice(index, "index", ("auto", "exact", "ivf"))
        self.nprobe = C.positive_int(nprobe, "nprobe")
        self._metric = get_metric(metric)
        self.buf = np.zeros((self.capacity, self.dim), np.float32)
        self.count = 0
        self.ptr = 0
        self.added = 0  # insertion number of the next embedding
        self._ivf: Any = None
        self._built_at = 0  # window size and insertion number at the last training
        self._built_added = 0

    def __len__(self) -> int:
        return self.count

    @property
    def approximate(self) -> bool:
        """Whether searches go through the IVF lists (else: exact)."""
        return self._ivf is not None

    def add(self, x: np.ndarray) -> None:
        """Append embeddings; the oldest fall out of the window first."""
        x = self._metric.prepare(C.as_vectors(x, "x", self.dim)[-self.capacity:], "x")
        n = len(x)
        if self._ivf is not None and self._ivf.ntotal + n > self.capacity + max(n, self.capacity // STALE_SHARE):
            # evicted embeddings stay filed until this many have piled up (searches skip them)
            self._ivf.remove_ids(faiss.IDSelectorRange(0, self.added + n - self.capacity))
        end = self.ptr + n
        if end <= self.capacity:
            self.buf[self.ptr:end] = x
        else:
            first = self.capacity - self.ptr
            self.buf[self.ptr:] = x[:first]
            self.buf[: n - first] = x[first:]
        self.ptr = end % self.capacity
        self.count = min(self.capacity, self.count + n)
        if self._ivf is not None:
            self._ivf.add_with_ids(x, np.arange(self.added, self.added + n, dtype=np.int64))
        self.added += n
        if self._wants_training():
            self._train()

    def _wants_training(self) -> bool:
        if self.index_kind == "exact" or (self.index_kind == "auto" and self.count < EXACT_UNTIL):
            return False
        if self._ivf is None:
            return self.count >= min(EXACT_UNTIL if self.index_kind == "auto" else 1024, self.capacity)
        turned = self.added - self._built_added >= max(2 * self.capacity, RETRAIN_MIN)
        return self.count >= REBUILD_GROWTH * self._built_at or turned

    def _window(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored embeddings, oldest first, and their insertion numbers."""
        rows = (self.ptr - self.count + np.arange(self.count)) % self.capacity
        return self.buf[rows], np.arange(self.added - self.count, self.added, dtype=np.int64)

    def _train(self) -> None:
        x, ids = self._window()
        rng = np.random.default_rng(int(self.added))
        sample = x if len(x) <= TRAIN_SAMPLE else x[np.sort(rng.choice(len(x), TRAIN_SAMPLE, replace=False))]
        nlist = int(max(1, min(len(x) // LIST_ROWS, len(sample) // 39, 4096)))
        # unit rows (cosine) are filed by l2, which orders them as cosine does and quantizes them better
        metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2
        quantizer = faiss.IndexFlat(self.dim, metric)
        pref = (self.dim // 2, self.dim // 4) if self.dim <= 64 else (self.dim // 4, self.dim // 2)  # sub-vectors of 2-4 dims
        m = next((m for m in pref if self.dim % m == 0 and m % 2 == 0), 0) if len(sample) >= 1024 and self.dim >= 32 else 0
        if m:  # 4-bit PQ codes scanned with SIMD lookups (below 32 dims plain lists scan as fast and exactly)
            ivf = faiss.IndexIVFPQFastScan(quantizer, self.dim, nlist, m, 4, metric)
        else:
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, metric)
        train_quantizer(ivf, sample, self.metric, seed=int(self.added) % (1 << 30))  # as the store's IVF index
        ivf.train(sample)  # the codes, on those centroids
        ivf.own_fields = True
        quantizer.this.disown()
        add_rows(ivf, x, ids)
        ivf.nprobe = min(self.nprobe, nlist)
        self._ivf, self._built_at, self._built_added = ivf, len(x), self.added

    def nearest_distance(self, q: np.ndarray) -> np.ndarray:
        """Distance of each query to its nearest stored embedding (``inf`` while empty)."""
        if self.count == 0:
            return np.full(len(q), np.inf)
        q = self._metric.prepare(C.as_vectors(q, "q", self.dim), "q")
        if self._ivf is None:
            d, _ = faiss.knn(q, self.buf[: self.count], 1, metric=self._metric.faiss)
            return self._metric.to_distance(d[:, 0].astype(np.float64))
        from ._stream_kernels import nearest_of_candidates

        _, ids = self._ivf.search(q, RECHECK)
        valid = ids >= self.added - self.count  # -1 (no candidate) and evicted ids fail
        rows = np.where(valid, ids % self.capacity, -1)  # their rows of the ring
        return nearest_of_candidates(self.buf, q, rows, METRIC_KIND[self.metric])


class StreamSelector(IterableDataset):
    """Emit the informative samples of a stream.

    Args:
        source: an iterable of samples (re-iterated on each ``iter()``), or a zero-argument
            callable returning a fresh iterator.
        embed: ``embed(list_of_samples) -> (n, dim)`` array/tensor, used by the novelty score and
            the sliding-window store.
        window: candidates scored together (the bounded buffer).
        keep: fixed share of each window emitted; or give ``pacing`` to move it from
            ``keep_range[0]`` to ``keep_range[1]`` as windows pass.
        scorer: ``"novelty"`` or ``fn(samples, embeddings) -> scores`` (higher = more
            informative; e.g. the current model's loss).
        select: ``"topk"`` (the highest scores) or ``"sample"`` (without replacement, prob. ~ score).
        store_size: capacity of the sliding-window store of emitted embeddings (searched exactly up
            to 8,192, then through IVF lists at a nearly flat cost: see :class:`SlidingWindowStore`;
            1M-10M is fine).
        index: ``"auto"`` (that switch), ``"exact"`` or ``"ivf"`` for the store's search.
        mix_novelty: with a callable ``scorer`` (e.g. the model's loss), the weight ``w`` of
            novelty beside it. With ``select="topk"`` the choice is farthest-point, each pick the
            candidate of largest ``r^((1 - w) / w) x d`` (``r`` its score's rank in the window over
            the window's size, ``d`` its distance to the memory and to the picks so far): the hard
            candidates first, while a near-repeat of a pick (``d`` ~ 0) ranks below almost every
            new candidate; ``w = 1`` is novelty alone. With ``"sample"``, the draw is proportional to
            ``(1 - w) rank(score) + w rank(novelty)`` (novelty against the memory and the window's
            earlier candidates). 0 = the scorer alone. Cost: the novelty search and the window's
            Gram matrix.
        quota_clusters: balance each window's keep over this many clusters of the stream (k-means,
            resampling-refined as in curation, fitted on the first ``max(64 k, 4096)`` candidates;
            before that, no quota): the window's share is water-filled over the clusters of its
            ``2 x keep`` best candidates by the score (a cluster with fewer than its share is kept
            whole), each cluster's part taken in the score's order. Under farthest-point choice the
            shortlist leaves out near-repeats (a priority below :data:`REPEAT_GAIN` x the median of
            the first ``keep`` picks) unless too few others are left, so balancing never trades a
            new candidate for a repeat. Cost: one assignment of the window to k centroids.
        device: where the memory of emitted embeddings lives. ``None``: the CPU (faiss, see
            ``index``), unless ``embed`` returns CUDA tensors - then their GPU; a torch device
            (``"cuda"``, ``"cuda:1"``, ``"cpu"``) keeps it there as one tensor searched exactly by
            matrix products (:class:`~curriculum.selection.stream_device.TorchWindowStore`).
        seed: the draw depends only on ``(seed, window index, shard)``.

    Example:
        >>> stream = StreamSelector(range(10_000), embed=lambda xs: np.array(xs, "float32")[:, None] % 7,
        ...                         window=100, keep=0.1)
        >>> out = list(stream)
        >>> len(out), len(set(out)) == len(out)
        (1000, True)
    """

    def __init__(self, source: Iterable[Any] | Callable[[], Iterator[Any]], embed: Callable[[list[Any]], Any],
                 window: int = 1024, keep: float = 0.25, pacing: Pacing | None = None,
                 keep_range: tuple[float, float] = (0.1, 1.0), scorer: str | Callable[..., Any] = "novelty",
                 select: str = "topk", store_size: int = 100_000, metric: str = "l2", index: str = "auto",
                 quota_clusters: int | None = None, mix_novelty: float = 0.0, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, device: Any = None) -> None:
        if not callable(embed):
            raise TypeError(f"embed: expected a callable list_of_samples -> (n, dim) array, got {type(embed).__name__}")
        if not (callable(source) or hasattr(source, "__iter__")):
            raise TypeError(f"source: expected an iterable or a callable returning an iterator, got {type(source).__name__}")
        self.source = source
        self.embed = embed
        self.window = C.positive_int(window, "window")
        self.keep = C.finite_float(keep, "keep", 0.0, 1.0, low_open=True)
        self.pacing = None if pacing is None else as_pacing(pacing)
        self.keep_range = (C.finite_float(keep_range[0], "keep_range", 0.0, 1.0),
                           C.finite_float(keep_range[1], "keep_range", 0.0, 1.0))
        if not (isinstance(scorer, str) and scorer == "novelty") and not callable(scorer):
            raise ValueError(f"scorer: expected 'novelty' or a callable (samples, embeddings) -> scores, got {scorer!r}")
        self.scorer = scorer
        self.mix_novelty = C.finite_float(mix_novelty, "mix_novelty", 0.0, 1.0)
        self.select = C.choice(select, "select", ("topk", "sample"))
        self.store_size = C.positive_int(store_size, "store_size")
        self.index = C.choice(index, "index", ("auto", "exact", "ivf"))
        self.quota_clusters = None if quota_clusters is None else C.positive_int(quota_clusters, "quota_clusters", 2)
        self._quota_rows: list[np.ndarray] = []
        self.quota_centroids: np.ndarray | None = None
        self.metric = C.choice(metric, "metric", tuple(METRICS))
        self.seed = int(seed)
        self.rank, self.world_size = dist_info(rank, world_size)
        self.device = None if device is None else as_device(device)
        self.store: SlidingWindowStore | TorchWindowStore | None = None
        self.windows_seen = 0
        self.items_seen = 0
        self.items_emitted = 0
        self.max_buffer = 0

    def prime(self, embeddings: Any) -> None:
        """Fill the memory with embeddings already emitted (a previous run's, or a reference set),
        so what comes next is judged against them too.

        Example:
            >>> sel = StreamSelector(range(10), embed=lambda xs: np.array(xs, "float32")[:, None], window=5)
            >>> sel.prime(np.arange(5, dtype="float32")[:, None]); len(sel.store)
            5
        """
        self._ensure_store(embeddings)
        self.store.add(embeddings)

    def _ensure_store(self, sample: Any, dim: int | None = None) -> None:
        """Create the memory on the first embeddings: on ``device``, or where ``sample`` lives when
        it is a CUDA tensor (:class:`TorchWindowStore`); else faiss on the CPU."""
        if self.store is not None:
            return
        dim = C.as_vectors(sample, "embeddings").shape[1] if dim is None else dim
        device = self.device
        if device is None and getattr(sample, "is_cuda", False):
            device = sample.device
        if device is None:
            self.store = SlidingWindowStore(self.store_size, dim, self.metric, self.index)
        else:
            self.store = TorchWindowStore(self.store_size, dim, self.metric, device)

    def keep_share(self, window_index: int) -> float:
        """Share of window ``window_index`` kept: ``keep``, or the pacing mapped into ``keep_range``."""
        if self.pacing is None:
            return self.keep
        lo, hi = self.keep_range
        return lo + (hi - lo) * self.pacing(window_index)

    def _iterator(self) -> Iterator[Any]:
        return self.source() if callable(self.source) and not hasattr(self.source, "__iter__") else iter(self.source)

    def _scores(self, items: list[Any], emb: np.ndarray) -> np.ndarray:
        if callable(self.scorer):
            s = C.to_numpy(self.scorer(items, emb), "scorer output").astype(np.float64).reshape(-1)
            if s.shape[0] != len(items) or not np.isfinite(s).all():
                raise ValueError(f"scorer: expected {len(items)} finite scores, got shape {s.shape}")
            if self.mix_novelty > 0 and self.select == "sample":
                from scipy.stats import rankdata

                s = (1 - self.mix_novelty) * rankdata(s) + self.mix_novelty * rankdata(self._causal_novelty(emb))
            return s
        return self._memory_distance(emb)

    def _memory_distance(self, emb: np.ndarray) -> np.ndarray:
        return self.store.nearest_distance(emb) if self.store is not None and len(self.store) else \
            np.full(len(emb), np.inf)

    def _causal_novelty(self, emb: np.ndarray) -> np.ndarray:
        """Distance of each candidate to the memory and to the window's earlier candidates: the
        second and later copies of a burst are not novel, whatever their score."""
        store = self._memory_distance(emb)
        e = np.ascontiguousarray(emb, np.float64)
        gram = matmul(e, e.T)
        sq = np.diag(gram)
        if self.metric == "l2":
            d = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * gram, 0.0))
        else:
            n = np.sqrt(np.maximum(sq, 1e-24))
            d = 1.0 - gram / (n[:, None] * n[None])
        d[np.triu_indices(len(e))] = np.inf  # only earlier candidates count
        return np.minimum(store, d.min(1))

    def _greedy_novel(self, emb: np.ndarray, memory: np.ndarray, m: int,
                      weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Farthest-point (k-centre greedy) choice: each pick is the candidate of largest
        ``weight x`` its distance to the memory *and* to the picks so far, so near-repeats inside
        one window are not all kept. The window's distances come from one Gram matrix (a GEMM);
        the picks run compiled. Returns the picks, best first, and the priority of each."""
        from ._stream_kernels import greedy_farthest

        e = np.ascontiguousarray(emb, np.float32)
        w = np.ones(len(e)) if weight is None else weight
        return greedy_farthest(matmul(e, e.T), memory.astype(np.float64), w, int(m), self.metric != "l2")

    def _choose(self, scores: np.ndarray, m: int, rng: np.random.Generator, emb: np.ndarray | None = None) -> np.ndarray:
        labels = self._quota_labels(emb) if emb is not None else None
        if m >= len(scores):
            return np.arange(len(scores))
        if labels is None:
            return np.sort(self._choose_by_score(scores, m, rng, emb)[0])
        from .curation import _water_fill

        # the quota balances a shortlist of the 2m best by the score, in the score's order, so
        # balancing never trades a novel candidate for a repeat: in farthest-point order, a pick
        # whose priority fell below REPEAT_GAIN x the median of the first m is a repeat, and is
        # only taken when too few others are left
        short, gain = self._choose_by_score(scores, min(len(scores), QUOTA_SHORTLIST * m), rng, emb)
        ok = np.ones(len(short), bool)
        if gain is not None:
            mid = float(np.median(gain[:m]))
            if np.isfinite(mid) and mid > 0:
                ok = gain >= REPEAT_GAIN * mid
        pool = short[ok]
        alloc = _water_fill(np.bincount(labels[pool], minlength=len(self.quota_centroids)), min(m, len(pool)))
        rank_in_cluster = np.zeros(len(pool), np.int64)
        seen = np.zeros(len(self.quota_centroids), np.int64)
        for i, c in enumerate(labels[pool]):
            rank_in_cluster[i] = seen[c]
            seen[c] += 1
        take = pool[rank_in_cluster < alloc[labels[pool]]]
        return np.sort(np.concatenate([take, short[~ok][:m - len(take)]]))

    def _quota_labels(self, emb: np.ndarray) -> np.ndarray | None:
        """Cluster of each candidate once the quota clusters are fitted (fitting them from the
        first candidates as they come); ``None`` without a quota or before the fit."""
        if self.quota_clusters is None:
            return None
        x = get_metric(self.metric).prepare(emb) if self.metric == "cosine" else np.ascontiguousarray(emb, np.float32)
        if self.quota_centroids is None:
            self._quota_rows.append(x)
            rows = sum(len(r) for r in self._quota_rows)
            if rows < max(64 * self.quota_clusters, 4096):
                return None
            from ..neighbors.kmeans import kmeans, resample_refine

            fit = np.concatenate(self._quota_rows)
            k = min(self.quota_clusters, len(fit))
            self.quota_centroids = resample_refine(fit, kmeans(fit, k, seed=self.seed), 3, seed=self.seed)
            self._quota_rows = []
        from ..neighbors.kmeans import assign

        return assign(x, self.quota_centroids)[0]

    def _choose_by_score(self, scores: np.ndarray, m: int, rng: np.random.Generator,
                         emb: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``m`` candidates, best first, and their priorities where the choice is farthest-point:
        novelty alone, or a score mixed with novelty (``mix_novelty = w``: priority
        ``r^((1 - w) / w) x`` distance, ``r`` the score's rank in the window / its size, so a near-
        repeat of a pick ranks low whatever its score); else by score or drawn."""
        if emb is not None and self.select == "topk" and not callable(self.scorer):
            return self._greedy_novel(emb, scores, m)
        if emb is not None and self.select == "topk" and self.mix_novelty > 0:
            from scipy.stats import rankdata

            weight = (rankdata(scores) / len(scores)) ** ((1 - self.mix_novelty) / self.mix_novelty)
            return self._greedy_novel(emb, self._memory_distance(emb), m, weight)
        if self.select == "topk" or not np.isfinite(scores).all():
            s = np.where(np.isfinite(scores), scores, np.finfo(np.float64).max)
            return np.argsort(-s, kind="stable")[:m], None
        p = np.maximum(scores, 0) + 1e-12
        return rng.choice(len(scores), m, replace=False, p=p / p.sum()), None

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        shards = n_workers * self.world_size
        shard = self.rank * n_workers + worker
        buf: list[Any] = []
        w = 0
        for i, item in enumerate(self._iterator()):
            # contiguous blocks of one window per shard: near-repeats, which come close together in
            # time, mostly land in the same shard and its store (item-wise round robin would
            # split every burst of repeats across shards, and each shard would keep a copy)
            if (i // self.window) % shards != shard:
                continue
            self.items_seen += 1
            buf.append(item)
            if len(buf) == self.window:
                yield from self._flush(buf, w, shard)
                buf = []
                w += 1
        if buf:
            yield from self._flush(buf, w, shard)

    def _flush(self, buf: list[Any], w: int, shard: int) -> Iterator[Any]:
        self.max_buffer = max(self.max_buffer, len(buf))
        raw = self.embed(buf)
        emb = C.as_real(raw, "embed output")
        if emb.ndim == 0 or emb.shape[0] != len(buf):
            raise ValueError(f"embed output: expected {len(buf)} rows (one per sample), got shape {emb.shape}")
        emb = np.ascontiguousarray(emb.reshape(len(buf), -1), np.float32)
        self._ensure_store(raw, emb.shape[1])
        scores = self._scores(buf, emb)
        rng = np.random.Generator(np.random.PCG64([self.seed, shard, w]))
        m = max(1, int(round(self.keep_share(w) * len(buf))))
        chosen = self._choose(scores, m, rng, emb)
        self.store.add(emb[chosen])
        self.windows_seen += 1
        self.items_emitted += len(chosen)
        for j in chosen:
            yield buf[int(j)]


__all__ = ['SlidingWindowStore', 'StreamSelector']
