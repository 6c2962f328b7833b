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
from ..neighbors import METRICS, get_metric
from ..pacing import Pacing, as_pacing


class SlidingWindowStore:
    """A ring buffer of the ``capacity`` most recent embeddings, searchable exactly (faiss BLAS).
    Vectors are prepared by the metric as the store prepares them (unit rows under cosine).

    Example:
        >>> w = SlidingWindowStore(4, 2, metric="cosine")
        >>> w.add(np.array([[10.0, 0.0]]))
        >>> w.nearest_distance(np.array([[3.0, 0.0]])).tolist()   # parallel vectors: distance 0
        [0.0]
    """

    def __init__(self, capacity: int, dim: int, metric: str = "l2") -> None:
        self.capacity, self.dim = C.positive_int(capacity, "capacity"), C.positive_int(dim, "dim")
        self.metric = C.choice(metric, "metric", tuple(METRICS))
        self._metric = get_metric(metric)
        self.buf = np.zeros((self.capacity, self.dim), np.float32)
        self.count = 0
        self.ptr = 0

    def __len__(self) -> int:
        return self.count

    def add(self, x: np.ndarray) -> None:
        """Append embeddings; the oldest fall out of the window first."""
        x = self._metric.prepare(C.as_vectors(x, "x", self.dim)[-self.capacity:], "x")
        n = len(x)
        end = self.ptr + n
        if end <= self.capacity:
            self.buf[self.ptr:end] = x
        else:
            first = self.capacity - self.ptr
            self.buf[self.ptr:] = x[:first]
            self.buf[: n - first] = x[first:]
        self.ptr = end % self.capacity
        self.count = min(self.capacity, self.count + n)

    def nearest_distance(self, q: np.ndarray) -> np.ndarray:
        """Distance of each query to its nearest stored embedding (``inf`` while empty)."""
        if self.count == 0:
            return np.full(len(q), np.inf)
        q = self._metric.prepare(C.as_vectors(q, "q", self.dim), "q")
        d, _ = faiss.knn(q, self.buf[: self.count], 1, metric=self._metric.faiss)
        return self._metric.to_distance(d[:, 0].astype(np.float64))


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
        store_size: capacity of the sliding-window store of emitted embeddings.
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
                 select: str = "topk", store_size: int = 100_000, metric: str = "l2", seed: int = 0,
                 rank: int | None = None, world_size: int | None = None) -> None:
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
        self.select = C.choice(select, "select", ("topk", "sample"))
        self.store_size = C.positive_int(store_size, "store_size")
        self.metric = C.choice(metric, "metric", tuple(METRICS))
        self.seed = int(seed)
        self.rank, self.world_size = dist_info(rank, world_size)
        self.store: SlidingWindowStore | None = None
        self.windows_seen = 0
        self.items_seen = 0
        self.items_emitted = 0
        self.max_buffer = 0

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
            return s
        return self.store.nearest_distance(emb) if self.store is not None else np.full(len(items), np.inf)

    def _greedy_novel(self, emb: np.ndarray, scores: np.ndarray, m: int) -> np.ndarray:
        """Farthest-point (k-centre greedy) choice: each pick is the candidate farthest from the
        store *and* from the picks so far, so near-repeats inside one window are not all kept."""
        d = scores.copy()
        picked = []
        for _ in range(m):
            j = int(np.argmax(d))
            picked.append(j)
            dj = np.sqrt(np.maximum(((emb - emb[j]) ** 2).sum(1), 0.0)) if self.metric == "l2" else \
                1.0 - emb @ emb[j] / np.maximum(np.linalg.norm(emb, axis=1) * np.linalg.norm(emb[j]), 1e-12)
            d = np.minimum(d, dj)
            d[j] = -np.inf
        return np.sort(np.array(picked, np.int64))

    def _choose(self, scores: np.ndarray, m: int, rng: np.random.Generator, emb: np.ndarray | None = None) -> np.ndarray:
        if m >= len(scores):
            return np.arange(len(scores))
        if emb is not None and self.select == "topk" and not callable(self.scorer):
            return self._greedy_novel(emb, scores, m)
        if self.select == "topk" or not np.isfinite(scores).all():
            s = np.where(np.isfinite(scores), scores, np.finfo(np.float64).max)
            return np.sort(np.argsort(-s, kind="stable")[:m])
        p = np.maximum(scores, 0) + 1e-12
        return np.sort(rng.choice(len(scores), m, replace=False, p=p / p.sum()))

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
        emb = C.as_real(self.embed(buf), "embed output")
        if emb.ndim == 0 or emb.shape[0] != len(buf):
            raise ValueError(f"embed output: expected {len(buf)} rows (one per sample), got shape {emb.shape}")
        emb = np.ascontiguousarray(emb.reshape(len(buf), -1), np.float32)
        if self.store is None:
            self.store = SlidingWindowStore(self.store_size, emb.shape[1], self.metric)
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
