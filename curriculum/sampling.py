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
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from . import _checks as C
from .difficulty.base import Difficulty, as_difficulty
from .pacing import Constant, Pacing, SelfPaced, Wu, as_pacing

STRATEGIES = ("threshold", "anti", "soft", "rank", "importance")
_CHUNK = 65536  # positions per random chunk: fixed, so draws never depend on block sizes


def dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size) from the arguments, else from an initialised torch.distributed, else (0, 1)."""
    if world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world_size = torch.distributed.get_world_size()
            rank = torch.distributed.get_rank() if rank is None else rank
        else:
            world_size = 1
    world_size = C.positive_int(world_size, "world_size")
    rank = 0 if rank is None else C.positive_int(rank, "rank", 0)
    if rank >= world_size:
        raise ValueError(f"rank: expected a value in [0, {world_size}), got {rank}")
    return rank, world_size


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


class CurriculumSampler(Sampler[int]):
    """Draw dataset indices from easy to hard, following a pacing schedule.

    Args:
        difficulty: a :class:`~curriculum.Difficulty` (its ids are the dataset indices drawn) or a
            plain score array (ids ``0..n-1``). Higher = harder.
        pacing: a :mod:`curriculum.pacing` schedule; default ``Constant(1.0)`` (no curriculum).
        num_samples: draws per epoch, over all ranks (default: the number of scored samples).
        strategy: one of ``threshold``, ``anti``, ``soft``, ``rank``, ``importance``.
        batch_size: per-rank batch size; the pacing step advances once per batch.
        seed: base seed; the draw of epoch ``e`` depends only on ``(seed, e)`` and the scores.
        balance: ``None``, ``"class"`` or ``"cluster"`` - pick a group uniformly, then a sample.
        groups: with ``balance``, the class/cluster of every dataset id (``groups[id]``).
        beta: ``(start, end)`` inverse temperatures of the ``soft`` strategy.
        pressure: maximum selection pressure of the ``rank`` strategy.
        smoothing: share of uniform probability mixed into ``importance``.
        rank, world_size: distributed shard; read from torch.distributed when initialised.
        drop_last: drop the tail so every rank gets ``num_samples // world_size`` (else pad).
        start_step: pacing step of the first batch of epoch 0.

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
                 strategy: str = "threshold", batch_size: int = 1, seed: int = 0, balance: str | None = None,
                 groups: Any = None, beta: tuple[float, float] = (-10.0, 5.0), pressure: float = 100.0,
                 smoothing: float = 0.1, rank: int | None = None, world_size: int | None = None,
                 drop_last: bool = False, start_step: int = 0) -> None:
        self.pacing: Pacing = Constant(1.0) if pacing is None else as_pacing(pacing)
        self.strategy = C.choice(strategy, "strategy", STRATEGIES)
        if isinstance(self.pacing, SelfPaced) and self.strategy not in ("threshold",):
            raise ValueError(f"strategy: SelfPaced pacing admits by loss threshold, use strategy='threshold', "
                             f"got {strategy!r}")
        self.batch_size = C.positive_int(batch_size, "batch_size")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed: expected an integer, got {type(seed).__name__}")
        self.seed = int(seed) % (2 ** 63)
        self.balance = None if balance is None else C.choice(balance, "balance", ("class", "cluster"))
        if self.balance is not None and groups is None:
            raise ValueError(f"groups: balance={balance!r} needs groups= (the {balance} of every dataset id)")
        self._groups_arg = None if groups is None else np.asarray(C.to_numpy(groups, "groups"))
        self.beta = (C.finite_float(beta[0], "beta"), C.finite_float(beta[1], "beta"))
        self.pressure = C.finite_float(pressure, "pressure", 1.0)
        self.smoothing = C.finite_float(smoothing, "smoothing", 0.0, 1.0)
        self.rank, self.world_size = dist_info(rank, world_size)
        self.drop_last = bool(drop_last)
        self.start_step = C.positive_int(start_step, "start_step", 0)
        self._epoch = 0
        self._consumed = 0
        self._version = 0
        self._perm_cache: tuple[int, np.ndarray] | None = None
        self._chunk_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        d = as_difficulty(difficulty)
        self._set(d)
        self.num_samples = len(d) if num_samples is None else C.positive_int(num_samples, "num_samples")

    # ------------------------------------------------------------------ scores
    def _set(self, d: Difficulty) -> None:
        if len(d) == 0:
            raise ValueError("difficulty: expected at least one scored sample, got an empty pool")
        self.difficulty = d
        scores, ids = d.scores, d.ids
        if self.strategy == "importance" and scores.min() < 0:
            raise ValueError(f"difficulty: strategy='importance' needs non-negative scores, got minimum "
                             f"{scores.min():.4g} (pass Difficulty(d.rank() + 1e-3, d.ids) for rank-based weights)")
        if self.balance is not None:
            g_all = self._groups_arg
            if g_all.ndim != 1 or len(g_all) <= ids.max():
                raise ValueError(f"groups: expected a 1-D array indexed by dataset id (length > {int(ids.max())}), "
                                 f"got shape {g_all.shape}")
            g = g_all[ids]
        else:
            g = np.zeros(len(ids), np.int64)
        # one list per group, easiest first, concatenated; ties are broken by a seeded random
        # permutation, so equal scores (e.g. samples not yet seen by a recorder) favour no id range
        tie = np.random.Generator(np.random.PCG64([self.seed, 0x71E])).permutation(len(ids))
        o = np.lexsort((tie, scores, g))
        gs = g[o]
        uniq, start, sizes = np.unique(gs, return_index=True, return_counts=True)
        self._list_ids = ids[o]
        self._list_scores = scores[o]
        self._offsets = start.astype(np.int64)
        self._sizes = sizes.astype(np.int64)
        self._group_values = uniq
        if self.strategy == "importance":
            mass = self._list_scores
            tot = np.add.reduceat(mass, self._offsets)
            tot_per = np.repeat(tot, self._sizes)
            n_per = np.repeat(self._sizes, self._sizes).astype(np.float64)
            p = np.where(tot_per > 0, (1 - self.smoothing) * mass / np.where(tot_per > 0, tot_per, 1.0),
                         (1 - self.smoothing) / n_per) + self.smoothing / n_per
            self._p_in_group = p
            self._cum = np.cumsum(p)
            self._cum_start = self._cum[self._offsets] - p[self._offsets]
        self._version += 1
        self._chunk_cache.clear()

    def set_difficulty(self, difficulty: Any) -> None:
        """Replace the scores; the next batch drawn uses them. Ids may differ from the old ones."""
        self._set(as_difficulty(difficulty))

    # ------------------------------------------------------------------ epoch bookkeeping
    @property
    def per_rank(self) -> int:
        if self.drop_last:
            return self.num_samples // self.world_size
        return math.ceil(self.num_samples / self.world_size)

    def __len__(self) -> int:
        return self.per_rank

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def step(self) -> int:
        """Pacing step of the next batch to be drawn."""
        return self.start_step + self._epoch * self.steps_per_epoch + self._consumed // self.batch_size

    @property
    def competence(self) -> float:
        return self.pacing(self.step)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to draw. Setting the current epoch again keeps the position (resume)."""
        epoch = C.positive_int(epoch, "epoch", 0)
        if epoch != self._epoch:
            self._epoch, self._consumed = epoch, 0

    # ------------------------------------------------------------------ the draw
    def _perm(self, epoch: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            n = len(self._list_ids)
            rng = np.random.Generator(np.random.PCG64([self.seed, epoch, 0x5EED]))
            self._perm_cache = (epoch, rng.permutation(n))
        return self._perm_cache[1]

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

    def _admitted(self, comp: np.ndarray, step_u: np.ndarray, epoch: int) -> np.ndarray:
        """(distinct steps, groups) matrix of admitted counts."""
        n = self._sizes[None, :].astype(np.float64)
        if isinstance(self.pacing, SelfPaced):
            thr = self.pacing.threshold(epoch)
            m = np.array([np.searchsorted(self._list_scores[o:o + s], thr, side="left")
                          for o, s in zip(self._offsets, self._sizes)])
            if m.sum() == 0:
                raise ValueError(f"pacing: SelfPaced admits no sample at epoch {epoch} (threshold {thr:.4g} is below "
                                 f"every score, the smallest is {self._list_scores.min():.4g}): empty admitted pool")
            return np.broadcast_to(m[None, :], (len(step_u), len(m)))
        x = comp[:, None] * n
        m = np.floor(x + 1e-7) if isinstance(self.pacing, Wu) else np.ceil(x - 1e-7)
        return np.clip(m, 1, n).astype(np.int64)

    def _draw(self, epoch: int, p0: int, p1: int) -> np.ndarray:
        """Dataset ids at rank-local positions ``[p0, p1)`` of ``epoch``."""
        p = np.arange(p0, p1, dtype=np.int64)
        if p.size == 0:
            return np.zeros(0, np.int64)
        js = p * self.world_size + self.rank
        steps = self.start_step + epoch * self.steps_per_epoch + p // self.batch_size
        step_u, step_i = np.unique(steps, return_inverse=True)
        comp = np.array([self.pacing(int(s)) for s in step_u])
        u, v = self._randoms(epoch, js)
        m_all = self._admitted(comp, step_u, epoch)
        G = len(self._sizes)
        if G == 1:
            g = np.zeros(len(p), np.int64)
        else:
            active = np.flatnonzero(m_all[0] > 0) if isinstance(self.pacing, SelfPaced) else np.arange(G)
            g = active[np.minimum((v * len(active)).astype(np.int64), len(active) - 1)]
        n = self._sizes[g]
        m = m_all[step_i, g]
        c = comp[step_i]
        s = self.strategy
        if s in ("threshold", "anti"):
            if G == 1:  # stratified: a permutation of the pool when everything is admitted
                q = (self._perm(epoch)[js % len(self._list_ids)] + u) / len(self._list_ids)
            else:
                q = u
            pos = np.minimum((q * m).astype(np.int64), m - 1)
            if s == "anti":
                pos = n - 1 - pos
        elif s == "soft":
            beta = self.beta[0] + (self.beta[1] - self.beta[0]) * c
            lam = beta / np.maximum(n - 1, 1)
            pos = _geometric(u, lam, n.astype(np.float64))
        elif s == "rank":
            lam = -(c * math.log(self.pressure)) / n  # over hardest-first positions
            pos = n - 1 - _geometric(u, lam, n.astype(np.float64))
        else:  # importance
            off = self._offsets[g]
            target = self._cum_start[g] + u * (self._cum[off + n - 1] - self._cum_start[g])
            pos = np.searchsorted(self._cum, target, side="right") - off
            pos = np.clip(pos, 0, n - 1)
        return self._list_ids[self._offsets[g] + pos]

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's whole index sequence for ``epoch`` (default: the current one), vectorised."""
        e = self._epoch if epoch is None else C.positive_int(epoch, "epoch", 0)
        out = np.empty(self.per_rank, np.int64)
        step = _CHUNK * 4
        for a in range(0, self.per_rank, step):
            out[a:a + step] = self._draw(e, a, min(self.per_rank, a + step))
        return out

    def _blocks(self) -> Iterator[tuple[np.ndarray, int]]:
        """Blocks of ids from the current position; regenerated if the scores change."""
        B = self.batch_size
        blk = max(B, (8192 // B) * B)
        while self._consumed < self.per_rank:
            p0 = self._consumed
            p1 = min(self.per_rank, (p0 // blk + 1) * blk)
            yield self._draw(self._epoch, p0, p1), self._version

    def __iter__(self) -> Iterator[int]:
        B = self.batch_size
        while True:
            restart = False
            for ids, ver in self._blocks():
                for i in ids.tolist():
                    if self._version != ver and self._consumed % B == 0:
                        restart = True
                        break
                    self._consumed += 1
                    yield i
                if restart:
                    break
            if not restart:
                break
        self._epoch += 1
        self._consumed = 0

    # ------------------------------------------------------------------ importance weights
    def probabilities(self) -> Difficulty:
        """``importance`` only: the draw probability of every scored id (sums to 1)."""
        if self.strategy != "importance":
            raise ValueError(f"probabilities: only defined for strategy='importance', this sampler uses {self.strategy!r}")
        p = self._p_in_group / len(self._sizes)
        return Difficulty(p, self._list_ids, "importance.p")

    def weights(self, indices: Any) -> torch.Tensor:
        """Loss weights ``1 / (N p_i)`` for drawn ``indices`` (``importance``): keeps the mean loss unbiased."""
        p = self.probabilities()
        return torch.as_tensor(1.0 / (len(p) * p.for_ids(indices)), dtype=torch.float32)

    # ------------------------------------------------------------------ state
    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """Resumable state. ``consumed``: indices the *training loop* has used this epoch (with a
        prefetching DataLoader the sampler runs ahead; pass ``batches_done * batch_size``)."""
        pos = self._consumed if consumed is None else C.positive_int(consumed, "consumed", 0)
        return {"epoch": self._epoch, "consumed": pos, "seed": self.seed, "num_samples": self.num_samples,
                "world_size": self.world_size, "batch_size": self.batch_size, "strategy": self.strategy,
                "start_step": self.start_step, "pacing": _safe_config(self.pacing),
                "scores": self.difficulty.scores.copy(), "ids": self.difficulty.ids.copy(),
                "name": self.difficulty.name}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the next draw continues exactly where it was taken."""
        for key in ("seed", "num_samples", "world_size", "batch_size", "strategy"):
            if state.get(key) != getattr(self, key):
                raise ValueError(f"state: {key}={state.get(key)!r} was saved, this sampler has {getattr(self, key)!r}")
        if state.get("consumed", 0) > self.per_rank:
            raise ValueError(f"state: consumed={state['consumed']} exceeds the epoch length {self.per_rank}")
        self._set(Difficulty(state["scores"], state["ids"], state.get("name", "difficulty")))
        self.start_step = state["start_step"]
        self._epoch, self._consumed = int(state["epoch"]), int(state["consumed"])


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
        B = self.batch_size
        limit = (s.per_rank // B) * B if self.drop_last else s.per_rank
        while s._consumed < limit:
            p0 = s._consumed
            p1 = min(limit, p0 + B)
            batch = s._draw(s._epoch, p0, p1).tolist()
            s._consumed = p1
            yield batch
        s._epoch += 1
        s._consumed = 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def set_difficulty(self, difficulty: Any) -> None:
        self.sampler.set_difficulty(difficulty)

    def state_dict(self, batches_consumed: int | None = None) -> dict[str, Any]:
        c = None if batches_consumed is None else batches_consumed * self.batch_size
        return self.sampler.state_dict(consumed=c)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
