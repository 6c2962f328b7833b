"""The curriculum sampler: dataset indices drawn from easy to hard as training progresses.

A draw is a pure function of ``(seed, epoch, position, scores, pacing)``, computed vectorised
in blocks, so that

* the same arguments give the same index sequence, on any number of DataLoader workers;
* stopping after any batch and resuming from ``state_dict()`` in a new process yields exactly
  the remaining sequence of the uninterrupted run;
* with ``world_size`` ranks, rank ``r`` takes positions ``r, r + W, r + 2W, ...`` of one global
  draw (like ``DistributedSampler``): disjoint shards of equal length;
* an epoch of 10M indices is a handful of numpy calls (:meth:`CurriculumSampler.epoch_indices`).

The sampler's clock: ``step = start_step + epoch * steps_per_epoch + position // batch_size``;
the pacing's competence at that step decides what may be drawn, so competence moves within an
epoch, not only between epochs.

Strategies (``r`` = difficulty rank in [0, 1], positions counted in the group's easy-first order):

=============  ==========================================================================
``threshold``  uniform over the easiest ``admitted(step, n)`` (Platanios, DeepSpeed, Hacohen);
               stratified, so that at competence 1 an epoch is a permutation
``anti``       uniform over the *hardest* ``admitted(step, n)``: the anti-curriculum control
``soft``       ``p_i ~ exp(beta * r_i)``, ``beta = beta[0] + (beta[1] - beta[0]) * c(t)``
``rank``       Loshchilov & Hutter 2015: ``p ~ exp(-pos_hard * ln(s) / n)`` with selection
               pressure ``s = pressure ** c(t)`` (uniform at c=0, full pressure at c=1)
``importance`` Katharopoulos & Fleuret 2018: ``p_i ~ (1 - smoothing) s_i / sum(s) + smoothing / n``;
               :meth:`CurriculumSampler.weights` gives the ``1 / (N p_i)`` loss weights
=============  ==========================================================================

With :class:`~curriculum.pacing.SelfPaced` the admitted pool is every sample whose score is below
the epoch's threshold (use loss-valued scores). ``balance="class"`` / ``"cluster"`` first picks a
group uniformly, then draws inside it by the strategy, with the competence applied per group -
so a long-tailed pool is not dominated by its head.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from .._util import checks as C
from .._util.arrays import sorted_unique
from .._util.dist import dist_info
from ..difficulty.base import Difficulty, as_difficulty
from ..pacing import Constant, Pacing, SelfPaced, as_pacing

STRATEGIES = ("threshold", "anti", "soft", "rank", "importance")
STATE_FORMAT = "curriculum.CurriculumSampler"
STATE_VERSION = 2  # 2: tensors instead of numpy arrays, a score set pending at a batch boundary
_CHUNK = 65536  # positions per random chunk: fixed, so draws never depend on block sizes


def _geometric(u: np.ndarray, lam: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Inverse CDF of ``P(i) ~ exp(lam * i)`` on ``i = 0..n-1`` (vectorised, overflow-safe)."""
    out = np.empty(u.shape, np.float64)
    small = np.abs(lam * n) < 1e-9
    out[small] = u[small] * n[small]
    big = ~small
    lb, nb, ub = lam[big], n[big], u[big]
    pos = lb > 0
    # lam > 0: i = n - 1 - [inverse CDF with -lam at 1 - u] keeps exp() from overflowing
    lneg = np.where(pos, -lb, lb)
    uu = np.where(pos, 1.0 - ub, ub)
    i = np.log1p(uu * np.expm1(lneg * nb)) / lneg
    out[big] = np.where(pos, nb - i, i)
    return np.clip(np.floor(out), 0, n - 1).astype(np.int64)


class _Pool:
    """The draw tables of one score set: ids per group, easiest first (immutable once built)."""

    def __init__(self, d: Difficulty, ids: np.ndarray, scores: np.ndarray, offsets: np.ndarray, sizes: np.ndarray,
                 strategy: str, smoothing: float) -> None:
        self.difficulty, self.ids, self.scores, self.offsets, self.sizes = d, ids, scores, offsets, sizes
        if strategy == "importance":
            tot = np.repeat(np.add.reduceat(scores, offsets), sizes)
            n_per = np.repeat(sizes, sizes).astype(np.float64)
            p = np.where(tot > 0, (1 - smoothing) * scores / np.where(tot > 0, tot, 1.0),
                         (1 - smoothing) / n_per) + smoothing / n_per
            self.p_in_group, self.cum = p, np.cumsum(p)
            self.cum_start = self.cum[offsets] - p[offsets]


def _as_groups(groups: Any) -> np.ndarray:
    """``groups[id]``: a 1-D array of finite integer-valued group labels."""
    g = C.to_numpy(groups, "groups")
    if g.ndim != 1:
        raise ValueError(f"groups: expected a 1-D array indexed by dataset id, got shape {g.shape}")
    if np.issubdtype(g.dtype, np.floating) and not np.isfinite(g).all():
        raise ValueError(f"groups: expected finite group labels, got NaN or inf at {int((~np.isfinite(g)).sum())} id(s)")
    if not (np.issubdtype(g.dtype, np.integer) or np.issubdtype(g.dtype, np.floating) and (g == np.round(g)).all()):
        raise TypeError(f"groups: expected integer group labels, got dtype {g.dtype}")
    return g.astype(np.int64)



class CurriculumSampler(Sampler[int]):
    """Draw dataset indices from easy to hard, following a pacing schedule.

    Args:
        difficulty: a :class:`~curriculum.Difficulty` (its ids are the dataset indices drawn) or a
            plain score array (ids ``0..n-1``). Higher = harder.
        pacing: a :mod:`curriculum.pacing` schedule; default ``Constant(1.0)`` (no curriculum).
        num_samples: draws per epoch, over all ranks (default: the number of scored samples).
        strategy: one of ``threshold``, ``anti``, ``soft``, ``rank``, ``importance``.
        batch_size: per-rank batch size; the pacing step advances once per batch. Give the
            DataLoader's batch size: left out under a non-constant pacing it warns and counts samples.
        seed: base seed; the draw of epoch ``e`` depends only on ``(seed, e)`` and the scores.
        balance: ``None``, ``"class"`` or ``"cluster"`` - pick a group uniformly, then a sample.
        groups: with ``balance``, the class/cluster of every dataset id (``groups[id]``).
        beta: ``(start, end)`` inverse temperatures of the ``soft`` strategy.
        pressure: maximum selection pressure of the ``rank`` strategy.
        smoothing: share of uniform probability mixed into ``importance``.
        rank, world_size: distributed shard; when both are left out, read from torch.distributed
            when iteration starts (so the sampler may be built before ``init_process_group``).
        drop_last: drop the tail so every rank gets ``num_samples // world_size`` (else pad).
        start_step: pacing step of the first batch of epoch 0.
        exclude: dataset ids never drawn - the cleaning mode: train on everything but the flagged
            samples (e.g. ``label_probe(store).ranked_issues()``, or the ids of
            ``difficulty.hardest(share)``). Applies to every later score set too; the default
            ``num_samples`` counts the ids left.

    ``__iter__`` yields ints, ``len()`` is the per-rank epoch length. A new ``iter()``
    continues where the last one stopped within an epoch; a finished epoch advances the epoch
    by one (``set_epoch`` sets it explicitly, as with ``DistributedSampler``).

    Example:
        >>> from curriculum.pacing import Root
        >>> s = CurriculumSampler([0.1, 0.9, 0.5, 0.3], Root(0.25, steps=4), batch_size=1, seed=0)
        >>> first = next(iter(s))          # at competence 0.25 only the easiest sample is admitted
        >>> first
        0
    """

    def __init__(self, difficulty: Any, pacing: Any = None, num_samples: int | None = None,
                 strategy: str = "threshold", batch_size: int | None = None, seed: int = 0,
                 balance: str | None = None,
                 groups: Any = None, beta: tuple[float, float] = (-10.0, 5.0), pressure: float = 100.0,
                 smoothing: float = 0.1, rank: int | None = None, world_size: int | None = None,
                 drop_last: bool = False, start_step: int = 0, exclude: Any = None) -> None:
        self.pacing: Pacing = Constant(1.0) if pacing is None else as_pacing(pacing)
        self.strategy = C.choice(strategy, "strategy", STRATEGIES)
        if isinstance(self.pacing, SelfPaced) and self.strategy not in ("threshold",):
            raise ValueError(f"strategy: SelfPaced pacing admits by loss threshold, use strategy='threshold', "
                             f"got {strategy!r}")
        if batch_size is None and not isinstance(self.pacing, Constant):
            warnings.warn("batch_size: not given, so the pacing advances one step per drawn sample; pass the "
                          "DataLoader's batch_size (the pacing's steps count batches)", UserWarning, stacklevel=2)
        self.batch_size = C.positive_int(1 if batch_size is None else batch_size, "batch_size")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed: expected an integer, got {type(seed).__name__}")
        self.seed = int(seed) % (2 ** 63)
        self.balance = None if balance is None else C.choice(balance, "balance", ("class", "cluster"))
        if self.balance is not None and groups is None:
            raise ValueError(f"groups: balance={balance!r} needs groups= (the {balance} of every dataset id)")
        self._groups_arg = None if groups is None else _as_groups(groups)
        self.beta = (C.finite_float(beta[0], "beta"), C.finite_float(beta[1], "beta"))
        self.pressure = C.finite_float(pressure, "pressure", 1.0)
        self.smoothing = C.finite_float(smoothing, "smoothing", 0.0, 1.0)
        self._dist_auto = rank is None and world_size is None  # re-read when iteration starts
        self.rank, self.world_size = dist_info(rank, world_size)
        self.drop_last = bool(drop_last)
        self.start_step = C.positive_int(start_step, "start_step", 0)
        self.exclude = sorted_unique(C.as_ids([] if exclude is None else exclude, "exclude", unique=False))
        self._epoch = 0
        self._consumed = 0
        self._version = 0
        self._perm_cache: tuple[int, int, np.ndarray] | None = None
        self._chunk_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._pending: _Pool | None = None
        self._install(self._pool(as_difficulty(difficulty)))
        self._num_samples_arg = None if num_samples is None else C.positive_int(num_samples, "num_samples")
        self.num_samples = len(self.difficulty) if num_samples is None else self._num_samples_arg

    # ------------------------------------------------------------------ scores
    def _pool(self, d: Difficulty) -> _Pool:
        """The draw tables of score set ``d``, fully validated; nothing is assigned here."""
        if len(d) == 0:
            raise ValueError("difficulty: expected at least one scored sample, got an empty pool")
        if len(self.exclude):
            keep = ~np.isin(d.ids, self.exclude)
            if not keep.any():
                raise ValueError(f"exclude: leaves no scored sample to draw (all {len(d)} ids excluded)")
            d = Difficulty(d.scores[keep], d.ids[keep], d.name, None if d.observed is None else d.observed[keep])
        scores, ids = d.scores, d.ids
        if self.strategy == "importance" and scores.min() < 0:
            raise ValueError(f"difficulty: strategy='importance' needs non-negative scores, got minimum "
                             f"{scores.min():.4g} (pass Difficulty(d.rank() + 1e-3, d.ids) for rank-based weights)")
        if self.balance is not None:
            g_all = self._groups_arg
            if len(g_all) <= ids.max():
                raise ValueError(f"groups: expected a group for every scored id (length > {int(ids.max())}), "
                                 f"got length {len(g_all)}")
            g = g_all[ids]
        else:
            g = np.zeros(len(ids), np.int64)
        # one list per group, easiest first, concatenated; ties are broken by a seeded random
        # permutation, so equal scores (e.g. samples not yet seen by a recorder) favour no id range
        tie = np.random.Generator(np.random.PCG64([self.seed, 0x71E])).permutation(len(ids))
        o = np.lexsort((tie, scores, g))
        _, start, sizes = np.unique(g[o], return_index=True, return_counts=True)
        return _Pool(d, ids[o], scores[o], start.astype(np.int64), sizes.astype(np.int64), self.strategy,
                     self.smoothing)

    def _install(self, pool: _Pool) -> None:
        self._p = pool
        self.difficulty = pool.difficulty
        self._version += 1
        self._chunk_cache.clear()
        self._perm_cache = None

    def set_difficulty(self, difficulty: Any) -> None:
        """Replace the scores. They take effect at the next batch boundary: at once between
        batches, else from the next batch (the rest of the current batch keeps the old scores, in
        a live run and after a resume alike). A rejected score set changes nothing.

        The new set may cover other ids than the last: draws then come from the new ids only.
        ``num_samples`` (the epoch length) stays as given; when it was left to default (the number
        of scored ids), it follows the new set from the next epoch on.
        """
        pool = self._pool(as_difficulty(difficulty))
        if self._consumed % self.batch_size == 0:
            self._install(pool)
            self._pending = None
        else:
            self._pending = pool

    def _at_boundary(self) -> None:
        """Apply a score set deferred to this batch boundary."""
        if self._pending is not None and self._consumed % self.batch_size == 0:
            pool, self._pending = self._pending, None
            self._install(pool)

    # ------------------------------------------------------------------ epoch bookkeeping
    @property
    def per_rank(self) -> int:
        """Indices this rank draws per epoch."""
        return self._per_rank(self.num_samples)

    def _sync_dist(self) -> None:
        """Rank and world size left to torch.distributed are read again when iteration starts: a
        script may build its loader before ``init_process_group`` (torchrun recipes often do).
        Mid-epoch, a change is an error rather than silently different shards."""
        if not self._dist_auto:
            return
        rank, world = dist_info(None, None)
        if (rank, world) == (self.rank, self.world_size):
            return
        if self._consumed > 0:
            raise RuntimeError(f"rank/world_size: torch.distributed now reports rank {rank} of {world}, but this sampler "
                               f"already drew {self._consumed} ids of epoch {self._epoch} as rank {self.rank} of "
                               f"{self.world_size}; build it after init_process_group or pass rank= and world_size=")
        self.rank, self.world_size = rank, world

    def _per_rank(self, num_samples: int) -> int:
        return num_samples // self.world_size if self.drop_last else math.ceil(num_samples / self.world_size)

    def __len__(self) -> int:
        self._sync_dist()
        return self.per_rank

    @property
    def steps_per_epoch(self) -> int:
        """Pacing steps (batches of this rank) per epoch."""
        return math.ceil(self.per_rank / self.batch_size)

    @property
    def epoch(self) -> int:
        """The epoch being drawn."""
        return self._epoch

    @property
    def step(self) -> int:
        """Pacing step of the next batch to be drawn."""
        return self.start_step + self._epoch * self.steps_per_epoch + self._consumed // self.batch_size

    @property
    def competence(self) -> float:
        """The pacing's competence at the next step (the admitted share of the data)."""
        return self.pacing(self.step)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to draw. Setting the current epoch again keeps the position (resume)."""
        epoch = C.positive_int(epoch, "epoch", 0)
        if epoch != self._epoch:
            self._new_epoch(epoch)

    # ------------------------------------------------------------------ the draw
    def _perm(self, epoch: int) -> np.ndarray:
        n = len(self._p.ids)
        if self._perm_cache is None or self._perm_cache[:2] != (epoch, n):
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch, 0x5EED]))
            self._perm_cache = (epoch, n, rng.permutation(n))
        return self._perm_cache[2]

    def _randoms(self, epoch: int, js: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        u = np.empty(len(js))
        v = np.empty(len(js))
        chunks = js // _CHUNK
        for c in np.unique(chunks):
            key = (epoch, int(c))
            if key not in self._chunk_cache:
                if len(self._chunk_cache) > 8:
                    self._chunk_cache.clear()
                rng = np.random.Generator(np.random.PCG64([self.seed, epoch, int(c), 0xC0FFEE]))
                self._chunk_cache[key] = (rng.random(_CHUNK), rng.random(_CHUNK))
            cu, cv = self._chunk_cache[key]
            m = chunks == c
            off = js[m] - c * _CHUNK
            u[m], v[m] = cu[off], cv[off]
        return u, v

    def _admitted(self, comp: np.ndarray, epoch: int) -> np.ndarray:
        """(distinct steps, groups) matrix of admitted counts; the pacing owns the rounding."""
        p = self._p
        if isinstance(self.pacing, SelfPaced):  # admission by a loss threshold, not by a share
            thr = self.pacing.threshold(epoch)
            m = np.array([np.searchsorted(p.scores[o:o + n], thr, side="left") for o, n in zip(p.offsets, p.sizes)])
            if m.sum() == 0:
                raise ValueError(f"pacing: SelfPaced admits no sample at epoch {epoch} (threshold {thr:.4g} is below "
                                 f"every score, the smallest is {p.scores.min():.4g}): empty admitted pool")
            return np.broadcast_to(m[None, :], (len(comp), len(m)))
        return self.pacing.admit(comp[:, None], p.sizes[None, :])

    def _draw(self, epoch: int, p0: int, p1: int) -> np.ndarray:
        """Dataset ids at rank-local positions ``[p0, p1)`` of ``epoch``."""
        pool, pos_ = self._p, np.arange(p0, p1, dtype=np.int64)
        if pos_.size == 0:
            return np.zeros(0, np.int64)
        js = pos_ * self.world_size + self.rank
        steps = self.start_step + epoch * self.steps_per_epoch + pos_ // self.batch_size
        step_u, step_i = np.unique(steps, return_inverse=True)
        comp = np.array([self.pacing(int(s)) for s in step_u])
        u, v = self._randoms(epoch, js)
        m_all = self._admitted(comp, epoch)
        G = len(pool.sizes)
        if G == 1:
            g = np.zeros(len(pos_), np.int64)
        else:
            active = np.flatnonzero(m_all[0] > 0) if isinstance(self.pacing, SelfPaced) else np.arange(G)
            g = active[np.minimum((v * len(active)).astype(np.int64), len(active) - 1)]
        n, m, c = pool.sizes[g], m_all[step_i, g], comp[step_i]
        if self.strategy in ("threshold", "anti"):
            # stratified when ungrouped: a permutation of the pool when everything is admitted
            q = (self._perm(epoch)[js % len(pool.ids)] + u) / len(pool.ids) if G == 1 else u
            pos = np.minimum((q * m).astype(np.int64), m - 1)
            pos = n - 1 - pos if self.strategy == "anti" else pos
        elif self.strategy == "soft":
            beta = self.beta[0] + (self.beta[1] - self.beta[0]) * c
            pos = _geometric(u, beta / np.maximum(n - 1, 1), n.astype(np.float64))
        elif self.strategy == "rank":
            lam = -(c * math.log(self.pressure)) / n  # over hardest-first positions
            pos = n - 1 - _geometric(u, lam, n.astype(np.float64))
        else:  # importance
            off = pool.offsets[g]
            target = pool.cum_start[g] + u * (pool.cum[off + n - 1] - pool.cum_start[g])
            pos = np.clip(np.searchsorted(pool.cum, target, side="right") - off, 0, n - 1)
        return pool.ids[pool.offsets[g] + pos]

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's whole index sequence for ``epoch`` (default: the current one), vectorised."""
        e = self._epoch if epoch is None else C.positive_int(epoch, "epoch", 0)
        out = np.empty(self.per_rank, np.int64)
        step = _CHUNK * 4
        for a in range(0, self.per_rank, step):
            out[a:a + step] = self._draw(e, a, min(self.per_rank, a + step))
        return out

    # ------------------------------------------------------------------ position (owned here)
    @property
    def position(self) -> int:
        """Indices drawn so far in the current epoch (rank-local)."""
        return self._consumed

    def seek(self, epoch: int, position: int) -> None:
        """Move to ``position`` of ``epoch`` (a loader rewinds a sampler that prefetching ran ahead)."""
        epoch = C.positive_int(epoch, "epoch", 0)
        position = C.positive_int(position, "position", 0)
        if position == 0:
            self._sync_dist()
        if position > self.per_rank:
            raise ValueError(f"position: expected at most the epoch length {self.per_rank}, got {position}")
        if epoch != self._epoch:
            self._new_epoch(epoch)
        self._consumed = position
        self._at_boundary()

    def next_batch(self, limit: int | None = None) -> list[int]:
        """The next batch (up to ``batch_size`` ids, stopping at ``limit``); advances the position."""
        if self._consumed == 0:
            self._sync_dist()
        self._at_boundary()
        p0 = self._consumed
        p1 = min(self.per_rank if limit is None else limit, p0 + self.batch_size)
        batch = self._draw(self._epoch, p0, p1).tolist()
        self._consumed = max(p0, p1)
        return batch

    def finish_epoch(self) -> None:
        """Close the epoch: the next draw starts epoch + 1 at position 0."""
        self._new_epoch(self._epoch + 1)

    def _new_epoch(self, epoch: int) -> None:
        self._epoch, self._consumed = epoch, 0
        if self._pending is not None:
            pool, self._pending = self._pending, None
            self._install(pool)
        if self._num_samples_arg is None:  # a defaulted epoch length follows the scored ids
            self.num_samples = len(self.difficulty)

    def _blocks(self) -> Iterator[tuple[np.ndarray, int]]:
        """Blocks of ids from the current position; regenerated if the scores change."""
        B = self.batch_size
        blk = max(B, (8192 // B) * B)
        while self._consumed < self.per_rank:
            p0 = self._consumed
            p1 = min(self.per_rank, (p0 // blk + 1) * blk)
            yield self._draw(self._epoch, p0, p1), self._version

    def __iter__(self) -> Iterator[int]:
        self._sync_dist()
        B = self.batch_size
        while True:
            restart = False
            for ids, ver in self._blocks():
                lst, i = ids.tolist(), 0
                while i < len(lst) and not restart:
                    self._at_boundary()  # score sets deferred to a batch boundary land here
                    j = min(len(lst), i + B - self._consumed % B)
                    for x in lst[i:j]:
                        if self._version != ver:  # new scores: redraw from this position
                            restart = True
                            break
                        self._consumed += 1
                        yield x
                    i = j
                if restart:
                    break
            if not restart:
                break
        self.finish_epoch()

    # ------------------------------------------------------------------ importance weights
    def probabilities(self) -> Difficulty:
        """``importance`` only: the draw probability of every scored id (sums to 1)."""
        if self.strategy != "importance":
            raise ValueError(f"probabilities: only defined for strategy='importance', this sampler uses {self.strategy!r}")
        p = self._p.p_in_group / len(self._p.sizes)
        return Difficulty(p, self._p.ids, "importance.p")

    def weights(self, indices: Any) -> torch.Tensor:
        """Loss weights ``1 / (N p_i)`` for drawn ``indices`` (``importance``): keeps the mean loss unbiased."""
        p = self.probabilities()
        return torch.as_tensor(1.0 / (len(p) * p.for_ids(indices)), dtype=torch.float32)

    # ------------------------------------------------------------------ state
    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Resumable state: plain Python values and tensors only, so ``torch.load`` with its default
        ``weights_only=True`` reads it. ``consumed``: indices the *training loop* has used this
        epoch (a prefetching DataLoader runs the sampler ahead; :func:`curriculum.wrap` tracks it).
        A score set deferred to the next batch boundary travels as ``pending``."""
        pos = self._consumed if consumed is None else C.positive_int(consumed, "consumed", 0)
        pending = None if self._pending is None else _scores_state(self._pending.difficulty)
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "epoch": self._epoch, "consumed": pos,
                "seed": self.seed, "num_samples": self.num_samples, "world_size": self.world_size,
                "batch_size": self.batch_size, "strategy": self.strategy, "start_step": self.start_step,
                "pacing": _safe_config(self.pacing), **_scores_state(self.difficulty), "pending": pending,
                "exclude": torch.from_numpy(self.exclude.copy())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next draw continues exactly where it was taken. The
        state is checked whole before anything changes: a bad one raises and leaves the sampler as it was."""
        st = _check_state(state)
        self._sync_dist()
        for key in ("seed", "world_size", "batch_size", "strategy") + (
                ("num_samples",) if self._num_samples_arg is not None else ()):
            if st[key] != getattr(self, key):
                raise ValueError(f"state: {key}={st[key]!r} was saved, this sampler has {getattr(self, key)!r}")
        saved = np.asarray(st.get("exclude", np.zeros(0, np.int64)), np.int64)
        if not np.array_equal(saved, self.exclude):
            raise ValueError(f"state: {len(saved)} excluded ids were saved, this sampler excludes {len(self.exclude)} "
                             "(pass the same exclude= to resume)")
        per_rank = self._per_rank(st["num_samples"])
        if st["consumed"] > per_rank:
            raise ValueError(f"state: consumed={st['consumed']} exceeds the epoch length {per_rank}")
        pool = self._pool(_scores_from(st, ""))
        pending = None if st.get("pending") is None else self._pool(_scores_from(st["pending"], "pending."))
        self._install(pool)
        self._pending = pending
        self.num_samples = st["num_samples"]
        self.start_step = st["start_step"]
        self._epoch, self._consumed = st["epoch"], st["consumed"]


def _scores_state(d: Difficulty) -> dict[str, Any]:
    return {"scores": torch.from_numpy(d.scores.astype(np.float64)), "ids": torch.from_numpy(d.ids.astype(np.int64)),
            "name": d.name}


def _scores_from(st: dict[str, Any], where: str) -> Difficulty:
    try:
        return Difficulty(C.to_numpy(st["scores"], "scores"), C.to_numpy(st["ids"], "ids"), str(st.get("name", "difficulty")))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"state.{where}scores: not a valid score set ({exc})") from None


def _check_state(state: Any) -> dict[str, Any]:
    """A sampler state checked for format, version, keys and value ranges (nothing applied)."""
    C.state_format(state, STATE_FORMAT, (1, STATE_VERSION), "CurriculumSampler")  # 0.1.0 states: version 1
    missing = [k for k in ("epoch", "consumed", "seed", "num_samples", "world_size", "batch_size", "strategy",
                           "start_step", "scores", "ids") if k not in state]
    if missing:
        raise ValueError(f"state: missing key(s) {missing} (not a complete sampler state)")
    out = dict(state)
    for key, low in (("epoch", 0), ("consumed", 0), ("start_step", 0), ("num_samples", 1), ("batch_size", 1),
                     ("world_size", 1)):
        try:
            out[key] = C.positive_int(state[key], f"state.{key}", low)
        except TypeError as exc:
            raise ValueError(str(exc)) from None
    return out


def _safe_config(p: Pacing) -> dict[str, Any] | None:
    try:
        return p.to_config()
    except Exception:  # a lambda in FromCallable has no importable name; the state still resumes
        return None


class CurriculumBatchSampler(Sampler[list[int]]):
    """The batch form: yields lists of ``batch_size`` dataset ids, one pacing step per batch.

    Use as ``DataLoader(ds, batch_sampler=CurriculumBatchSampler(...))``; per-batch decisions
    (new scores from :meth:`set_difficulty`) take effect at the next batch. All
    :class:`CurriculumSampler` arguments are accepted.

    Example:
        >>> bs = CurriculumBatchSampler([0.3, 0.1, 0.2, 0.9], batch_size=2, seed=1)
        >>> [len(b) for b in bs]
        [2, 2]
    """

    def __init__(self, difficulty: Any, pacing: Any = None, batch_size: int = 1, drop_last: bool = False,
                 **kwargs: Any) -> None:
        self.sampler = CurriculumSampler(difficulty, pacing, batch_size=batch_size, **kwargs)
        self.batch_size = self.sampler.batch_size
        self.drop_last = bool(drop_last)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        s = self.sampler
        limit = (s.per_rank // self.batch_size) * self.batch_size if self.drop_last else s.per_rank
        while s.position < limit:
            yield s.next_batch(limit)
        s.finish_epoch()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to draw; setting the current epoch again keeps the position."""
        self.sampler.set_epoch(epoch)

    def set_difficulty(self, difficulty: Any) -> None:
        """Replace the scores; they take effect at the next batch."""
        self.sampler.set_difficulty(difficulty)

    def state_dict(self, batches_consumed: int | None = None) -> dict[str, Any]:
        """The sampler's state; ``batches_consumed``: batches the training loop used this epoch (workers prefetch ahead)."""
        c = None if batches_consumed is None else batches_consumed * self.batch_size
        return self.sampler.state_dict(consumed=c)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (checked whole before anything changes)."""
        self.sampler.load_state_dict(state)


__all__ = ['STRATEGIES', 'STATE_FORMAT', 'STATE_VERSION', 'CurriculumSampler', 'CurriculumBatchSampler']
