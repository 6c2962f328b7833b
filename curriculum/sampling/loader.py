"""``curriculum.wrap``: a drop-in curriculum for an existing DataLoader.

The user's DataLoader is rebuilt with every setting kept - batch size, drop_last, workers,
collate_fn, pin_memory, persistent workers, prefetch factor, worker_init_fn, generator,
timeout, multiprocessing context - and only the sampling replaced by a
:class:`~curriculum.sampling.CurriculumBatchSampler`. Each item travels with its dataset index
(through workers, prefetching and pinning), so :meth:`CurriculumLoader.feedback` always knows
which samples the last batch held.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from typing import Any, Callable, Generator, Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler

from .._util import checks as C
from ..difficulty.base import Difficulty, as_difficulty
from ..difficulty.dynamics import Recorder
from .._util.background import BackgroundTask
from .._util.dist import gather_rows
from .sampler import CurriculumBatchSampler

LOADER_STATE_FORMAT = "curriculum.loader"
_RECENT = 64  # batches whose indices feedback(batch=) can still name


class _IndexedDataset(Dataset):
    """Returns ``(index, item)`` so the index survives workers and prefetching."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        return i, self.dataset[i]

    def __getitems__(self, indices: list[int]) -> list[tuple[int, Any]]:
        many = getattr(self.dataset, "__getitems__", None)
        items = many(indices) if many is not None else [self.dataset[i] for i in indices]
        return list(zip(indices, items))


class _IndexCollate:
    """Collate ``(index, item)`` pairs: the user's collate on the items, indices as a tensor."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, pairs: list[tuple[int, Any]]) -> tuple[np.ndarray, Any]:
        # a numpy array travels from a worker pickled inline; a tensor would cost one more
        # shared-memory segment per batch
        idx = np.fromiter((p[0] for p in pairs), dtype=np.int64, count=len(pairs))
        return idx, self.collate_fn([p[1] for p in pairs])


def _loader_settings(loader: DataLoader) -> dict[str, Any]:
    """Every DataLoader setting that wrap() carries over (the sampling ones excluded)."""
    s = {
        "num_workers": loader.num_workers, "collate_fn": loader.collate_fn, "pin_memory": loader.pin_memory,
        "timeout": loader.timeout, "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context, "generator": loader.generator,
        "persistent_workers": loader.persistent_workers,
    }
    if loader.num_workers > 0:
        s["prefetch_factor"] = loader.prefetch_factor
    if getattr(loader, "pin_memory_device", ""):
        s["pin_memory_device"] = loader.pin_memory_device
    if hasattr(loader, "in_order"):
        s["in_order"] = loader.in_order
    return s


class CurriculumLoader:
    """The wrapped loader returned by :func:`wrap`; iterate it exactly like the original.

    Attributes:
        loader: the rebuilt ``torch.utils.data.DataLoader`` (inspect its settings here).
        batch_sampler: the :class:`~curriculum.sampling.CurriculumBatchSampler` it draws from.
        recorder: the :class:`~curriculum.Recorder` fed by :meth:`feedback` (or None).

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = TensorDataset(torch.arange(8.0))
        >>> loader = wrap(DataLoader(ds, batch_size=4), difficulty=[0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6], seed=0)
        >>> [len(b[0]) for b in loader], loader.epoch
        ([4, 4], 1)
    """

    def __init__(self, loader: DataLoader, batch_sampler: CurriculumBatchSampler, recorder: Recorder | None,
                 store: Any, with_indices: bool, rescore_every: int | None,
                 rescore: Callable[[], Any] | None) -> None:
        self.original = loader
        self.batch_sampler = batch_sampler
        self.recorder = recorder
        self.store = store
        self.with_indices = with_indices
        self.rescore_every = rescore_every
        self._rescore = rescore
        self.loader = DataLoader(_IndexedDataset(loader.dataset), batch_sampler=batch_sampler,
                                 **{**_loader_settings(loader), "collate_fn": _IndexCollate(loader.collate_fn)})
        self._epoch = batch_sampler.sampler.epoch
        self._sampler_epoch = self._epoch  # the sampler's epoch as this loader last left it
        self._rest_empty = False  # set_epoch named the current epoch after its last batch: nothing is left of it
        self._delivered = 0          # batches handed to the training loop this epoch
        self._trained: int | None = None  # batches the loop reported finished (mark_trained)
        self._recent: dict[int, torch.Tensor] = {}  # batch number in the epoch -> its indices
        self._last_indices: torch.Tensor | None = None
        self._pending: Difficulty | None = None
        self._task = BackgroundTask("background re-scoring")
        self._lock = threading.Lock()
        self._changed = False
        self.rescores_applied = 0
        # the batches of the latest iteration, held weakly: a strong reference (the generator's
        # frame holds self) would make a cycle, and a wrapped loader dropped mid-epoch would then
        # wait for the garbage collector, whose weakref pass closes the DataLoader iterator's
        # queues before its workers are told to stop (each then costs a 5 s join timeout)
        self._epoch_iter: weakref.ref[Generator[Any, None, None]] | None = None

    # ------------------------------------------------------------------ iteration
    def __len__(self) -> int:
        return len(self.batch_sampler)

    @property
    def dataset(self) -> Any:
        """The original loader's dataset."""
        return self.original.dataset

    @property
    def batch_size(self) -> int:
        """Indices per batch (the original loader's batch size)."""
        return self.batch_sampler.batch_size

    @property
    def step(self) -> int:
        """Pacing step of the next batch the training loop will receive."""
        s = self.batch_sampler.sampler
        return s.start_step + self._epoch * s.steps_per_epoch + self._delivered

    @property
    def epoch(self) -> int:
        """The epoch the training loop is in (follows ``set_epoch`` and completed epochs)."""
        return self._epoch

    @property
    def last_indices(self) -> torch.Tensor | None:
        """Dataset indices of the batch most recently yielded."""
        return self._last_indices

    def set_epoch(self, epoch: int) -> None:
        """Like ``DistributedSampler.set_epoch``; setting the current epoch again keeps the position
        (resume): after its last batch (a checkpoint taken there), the next iteration is empty and
        the one after draws the next epoch, as an uninterrupted loop sees them."""
        epoch = C.positive_int(epoch, "epoch", 0)
        if epoch != self._epoch:
            self._epoch, self._delivered, self._trained = epoch, 0, None
            self._recent.clear()
            self.batch_sampler.sampler.seek(epoch, 0)
            self._sampler_epoch = epoch
            self._rest_empty = False
        else:
            self._rest_empty = self._delivered >= len(self.batch_sampler) > 0

    def mark_trained(self, batch: int) -> None:
        """The training loop finished batch number ``batch`` (0-based, this epoch): ``state_dict``
        then resumes right after it, whatever was fetched ahead. For frameworks that prefetch
        batches before the training step (Lightning does); a plain loop need not call it.

        Example:
            >>> loader.mark_trained(batch_idx)  # doctest: +SKIP
        """
        batch = C.positive_int(batch, "batch", 0)
        if batch >= self._delivered:
            raise ValueError(f"batch: expected a batch already yielded this epoch (< {self._delivered}), got {batch}")
        self._trained = batch + 1

    def __iter__(self) -> Iterator[Any]:
        # A new iteration first closes one left unfinished (Lightning stops after an epoch's last
        # batch without exhausting it): its DataLoader iterator goes, and its worker processes and
        # their queue threads end now - not when collected, after the next epoch has forked new
        # workers beside those threads (a fork beside a thread in a lock can hang the child).
        last = self._epoch_iter() if self._epoch_iter is not None else None
        if last is not None:
            last.close()
        batches = self._batches()
        self._epoch_iter = weakref.ref(batches)
        return batches

    def _batches(self) -> Iterator[Any]:
        s = self.batch_sampler.sampler
        if self._delivered >= len(self.batch_sampler) > 0:
            self._next_epoch()  # the last iterator stopped after the epoch's last batch (Lightning's does)
            if self._rest_empty:  # ... but the loop named that epoch: its rest is empty
                self._rest_empty = False
                return
        if s.epoch != self._sampler_epoch and s.position == 0:
            self.set_epoch(s.epoch)  # a framework set the epoch on the sampler itself (Lightning does)
        while True:
            # rewind the sampler (prefetching ran it ahead) to what the loop received: a score
            # change then takes effect at the loop's next batch, whatever the worker count
            s.seek(self._epoch, min(self._delivered * self.batch_size, s.per_rank))
            self._changed = False
            for idx_np, batch in self.loader:
                idx = torch.from_numpy(np.asarray(idx_np, dtype=np.int64))
                self._last_indices = idx
                self._recent[self._delivered] = idx
                self._recent.pop(self._delivered - _RECENT, None)
                self._delivered += 1
                self._apply_pending()
                if self.rescore_every and self._delivered % self.rescore_every == 0:
                    self._start_rescore()
                self._sampler_epoch = s.epoch  # prefetching may have finished its epoch: that was us
                yield (idx, batch) if self.with_indices else batch
                if self._changed:  # batches prefetched with the old scores are dropped
                    break
            else:
                break
        self._next_epoch()
        self._sampler_epoch = s.epoch

    def _next_epoch(self) -> None:
        self._epoch += 1
        self._delivered, self._trained = 0, None
        self._recent.clear()

    # ------------------------------------------------------------------ feedback
    def feedback(self, loss: Any = None, logits: Any = None, embeddings: Any = None, labels: Any = None,
                 indices: Any = None, batch: int | None = None) -> None:
        """Report per-sample results of the last batch (or of ``indices``, or of batch number ``batch``).

        ``loss`` (per sample, ``reduction="none"``) and/or ``logits`` update the recorder;
        ``embeddings`` update the store rows with the current step. ``batch`` (0-based, this
        epoch; one of the last 64) names the batch when a framework fetched others ahead of the
        training step. Everything is validated before anything changes; under torch.distributed
        the feedback of all ranks is gathered (tensor collectives) so every rank's recorder sees
        the same updates - every rank must call it.

        Example:
            >>> loss = F.cross_entropy(model(x), y, reduction="none")  # doctest: +SKIP
            >>> loader.feedback(loss=loss.detach())                    # doctest: +SKIP
        """
        idx = self._indices_for(indices, batch)
        idx = idx.reshape(-1).long()
        n = idx.numel()

        def _check_rows(x: Any, name: str) -> torch.Tensor | None:
            if x is None:
                return None
            t = torch.as_tensor(C.as_real(x, name))
            if t.ndim == 0 or t.shape[0] != n:
                raise ValueError(f"{name}: expected {n} rows (one per sample of the batch), got shape {tuple(t.shape)}")
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(f"{name}: expected finite values, got NaN or inf")
            return t

        loss_t, logits_t = _check_rows(loss, "loss"), _check_rows(logits, "logits")
        emb_t, lab_t = _check_rows(embeddings, "embeddings"), _check_rows(labels, "labels")
        if loss_t is None and logits_t is None and emb_t is None:
            raise ValueError("feedback: expected loss=, logits= or embeddings=, got none")
        if (loss_t is not None or logits_t is not None) and self.recorder is None:
            raise ValueError("feedback: loss/logits need a recorder - pass recorder=Recorder(...) to wrap()")
        if emb_t is not None:
            if self.store is None:
                raise ValueError("feedback: embeddings need a store - pass store= to wrap()")
            if emb_t.ndim != 2 or emb_t.shape[1] != self.store.dim:
                raise ValueError(f"embeddings: expected shape ({n}, {self.store.dim}), got {tuple(emb_t.shape)}")
            self.store.rows_of(idx.numpy(), "indices")
        parts = gather_rows([idx, loss_t, logits_t, emb_t, lab_t])
        idx, loss_t, logits_t, emb_t, lab_t = parts
        if self.recorder is not None and (loss_t is not None or logits_t is not None):
            # the recorder validates everything before it writes: a bad call changes nothing
            self.recorder.update(idx, loss=loss_t, logits=logits_t, labels=lab_t)
        if emb_t is not None:
            uniq, last = np.unique(idx.numpy()[::-1], return_index=True)  # last occurrence wins
            rows = len(idx) - 1 - last
            self.store.update(uniq, emb_t.detach().float().cpu().numpy()[rows], step=self.step)

    def _indices_for(self, indices: Any, batch: int | None) -> torch.Tensor:
        if indices is not None and batch is not None:
            raise ValueError("feedback: pass indices= or batch=, not both")
        if indices is not None:
            return torch.from_numpy(C.as_ids(indices, "indices", unique=False))
        if batch is not None:
            b = C.positive_int(batch, "batch", 0)
            if b not in self._recent:
                raise ValueError(f"batch: expected one of the last {_RECENT} batches yielded this epoch "
                                 f"({sorted(self._recent)[:1] + sorted(self._recent)[-1:]}), got {b}")
            return self._recent[b]
        if self._last_indices is None:
            raise RuntimeError("feedback: no batch has been yielded yet, pass indices=")
        return self._last_indices

    # ------------------------------------------------------------------ re-scoring
    def _start_rescore(self) -> None:
        if self._rescore is None or self._task.running:
            return
        fn = self._rescore.snapshot() if isinstance(self._rescore, _RecorderRescore) else self._rescore

        def work() -> None:
            d = _check_cover(as_difficulty(fn()), len(self.dataset))
            with self._lock:
                self._pending = d

        self._task.start(work)

    def _apply_pending(self) -> None:
        """Hand a finished re-score to the sampler: it takes effect at the loop's next batch."""
        self._task.check()
        with self._lock:
            d, self._pending = self._pending, None
        if d is not None:
            self.batch_sampler.set_difficulty(d)
            self._changed = True
            self.rescores_applied += 1

    def wait_rescore(self) -> None:
        """Block until a running re-score finishes and hand its scores to the sampler."""
        self._task.wait()
        self._apply_pending()

    def set_difficulty(self, difficulty: Any) -> None:
        """Replace the scores; the next batch the loop receives uses them (with any number of
        workers: batches prefetched with the old scores are dropped). A rejected set changes nothing."""
        self.batch_sampler.set_difficulty(_check_cover(as_difficulty(difficulty), len(self.dataset)))
        self._changed = True

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Sampler position (as delivered to the loop), pacing step, scores and recorder, together."""
        s = self.batch_sampler.sampler
        done = self._delivered if self._trained is None else self._trained
        st = s.state_dict(consumed=min(done * self.batch_size, s.per_rank))
        st["epoch"] = self._epoch
        return {"format": LOADER_STATE_FORMAT, "version": 1, "sampler": st, "delivered": done, "epoch": self._epoch,
                "recorder": None if self.recorder is None else self.recorder.state_dict(),
                "rescores_applied": self.rescores_applied}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume exactly where :meth:`state_dict` was taken (in this or a new process)."""
        C.state_format(state, LOADER_STATE_FORMAT, (1,), "CurriculumLoader")
        if (state.get("recorder") is None) != (self.recorder is None):
            raise ValueError("state: recorder presence differs between the saved state and this loader")
        self.batch_sampler.load_state_dict(state["sampler"])
        if self.recorder is not None:
            self.recorder.load_state_dict(state["recorder"])
        self._epoch, self._delivered = int(state["epoch"]), int(state["delivered"])
        self._sampler_epoch = self.batch_sampler.sampler.epoch
        self._trained = None
        self._rest_empty = False
        self._recent.clear()
        self.rescores_applied = int(state.get("rescores_applied", 0))


class _RecorderRescore:
    """Re-score from a recorder statistic; the recorder is snapshotted in the training thread
    (a tensor copy) so the background computation never reads half-applied updates."""

    def __init__(self, recorder: Recorder, name: str) -> None:
        self.recorder, self.name = recorder, name
        recorder.difficulty(name)  # validate the name now

    def snapshot(self) -> Callable[[], Difficulty]:
        snap = Recorder(self.recorder.num_samples, self.recorder.num_classes)
        snap.load_state_dict(self.recorder.state_dict())
        return lambda: snap.difficulty(self.name)

    def __call__(self) -> Difficulty:
        return self.recorder.difficulty(self.name)


def _check_cover(d: Difficulty, n: int, warn: bool = False) -> Difficulty:
    if len(d) and (d.ids.max() >= n):
        raise ValueError(f"difficulty: scores ids must be dataset indices < len(dataset)={n}, got id {int(d.ids.max())}")
    if warn and len(d) < n:
        warnings.warn(f"difficulty: the scores cover {len(d):,} of the {n:,} samples - the other {n - len(d):,} are "
                      f"never drawn and each scored one is drawn ~{n / max(len(d), 1):.1f}x per epoch; score every "
                      f"sample, or pass num_samples={len(d)} to draw each once", UserWarning, stacklevel=3)
    return d


def _honour_sampler(loader: DataLoader, kwargs: dict[str, Any]) -> None:
    """Carry over what the loader's own sampler says about the epoch: a ``DistributedSampler``'s
    shard (rank and replicas) and a ``RandomSampler``'s ``num_samples``."""
    from torch.utils.data.distributed import DistributedSampler

    s = loader.sampler if loader.batch_size is not None else getattr(loader.batch_sampler, "sampler", None)
    if isinstance(s, DistributedSampler):
        kwargs.setdefault("rank", s.rank)
        kwargs.setdefault("world_size", s.num_replicas)
    elif isinstance(s, RandomSampler) and s.num_samples != len(loader.dataset):
        kwargs.setdefault("num_samples", s.num_samples)


def _batching(loader: DataLoader) -> tuple[int, bool]:
    """``(batch_size, drop_last)`` of a loader whose sampling ``wrap`` can take over, or a clear error."""
    if not isinstance(loader, DataLoader):
        raise TypeError(f"loader: expected a torch.utils.data.DataLoader, got {type(loader).__name__}")
    if isinstance(loader.dataset, IterableDataset):
        raise TypeError("loader: its dataset is an IterableDataset, which has no indices to order; use "
                        "curriculum.stream to select from a stream instead")
    if not hasattr(loader.dataset, "__len__"):
        raise TypeError(f"loader: its dataset ({type(loader.dataset).__name__}) has no __len__, needed to score "
                        "every sample")
    if not isinstance(loader.sampler, (RandomSampler, SequentialSampler)) and loader.batch_size is not None:
        from torch.utils.data.distributed import DistributedSampler
        if not isinstance(loader.sampler, DistributedSampler):
            raise ValueError(f"loader: it uses a custom sampler ({type(loader.sampler).__name__}); wrap replaces the "
                             "sampling - pass your weighting as difficulty= / strategy= instead")
    if loader.batch_size is not None:
        return loader.batch_size, loader.drop_last
    bs_obj = loader.batch_sampler
    if bs_obj is None:
        raise ValueError("loader: automatic batching is off (batch_size=None); wrap needs batches")
    if type(bs_obj) is not BatchSampler or not isinstance(bs_obj.sampler, (RandomSampler, SequentialSampler)):
        raise ValueError(f"loader: it uses a custom batch_sampler ({type(bs_obj).__name__}) whose draws wrap cannot "
                         "honour; build the DataLoader with batch_size= (or use CurriculumBatchSampler directly)")
    return bs_obj.batch_size, bs_obj.drop_last


def _rescore_fn(rescore_every: int | None, rescore: Callable[[], Any] | str | None,
                recorder: Recorder | None) -> Callable[[], Any] | None:
    """What recomputes the scores: ``rescore`` itself, or a recorder statistic by name (default its
    ``loss_ema`` when a recorder is given)."""
    if isinstance(rescore, str) or (rescore is None and recorder is not None):
        name = rescore or "loss_ema"
        if recorder is None:
            raise ValueError(f"rescore: {name!r} names a recorder statistic, pass recorder=")
        return _RecorderRescore(recorder, name)
    if rescore_every is not None and rescore is None:
        raise ValueError("rescore_every: needs a recorder= or a rescore= callable to recompute the scores")
    return rescore


def wrap(loader: DataLoader, difficulty: Any = None, pacing: Any = None, strategy: str = "threshold",
         recorder: Recorder | None = None, store: Any = None, rescore_every: int | None = None,
         rescore: Callable[[], Any] | str | None = None, with_indices: bool = False, seed: int = 0,
         **sampler_kwargs: Any) -> CurriculumLoader:
    """Turn an existing DataLoader into a curriculum one; only the sampling changes.

    Args:
        loader: a map-style ``DataLoader`` with automatic batching.
        difficulty: a :class:`~curriculum.Difficulty` or score array over dataset indices. If
            None and a ``recorder`` is given, its ``loss_ema`` (uniform until feedback arrives).
        pacing, strategy, seed, **sampler_kwargs: passed to :class:`~curriculum.CurriculumSampler`
            (``balance=``, ``groups=``, ``beta=``, ``exclude=`` - the cleaning mode: ids never
            drawn, the epoch then counts the rest...). Rank/world size come from torch.distributed.
        recorder: a :class:`~curriculum.Recorder` updated by :meth:`CurriculumLoader.feedback`.
        store: an :class:`~curriculum.EmbeddingStore` whose rows ``feedback(embeddings=...)`` updates.
        rescore_every: every ``n`` batches, recompute the scores in a background thread and hand
            them to the sampler when ready (the loop never waits).
        rescore: how to recompute: a callable returning a Difficulty, or the name of a recorder
            statistic (``"loss_ema"``, ``"aum"``...). Default: the recorder's ``loss_ema``.
        with_indices: yield ``(indices, batch)`` instead of ``batch``.

    Example:
        >>> loader = wrap(train_loader, difficulty=scores, pacing=curriculum.pacing.Root(0.2, 10_000))  # doctest: +SKIP
        >>> for x, y in loader:                                                                       # doctest: +SKIP
        ...     loss = F.cross_entropy(model(x), y, reduction="none")
        ...     loader.feedback(loss=loss.detach())
        ...     loss.mean().backward()
    """
    batch_size, drop_last = _batching(loader)
    n = len(loader.dataset)
    _honour_sampler(loader, sampler_kwargs)
    rescore_every = None if rescore_every is None else C.positive_int(rescore_every, "rescore_every")
    rescore_fn = _rescore_fn(rescore_every, rescore, recorder)
    if recorder is not None and recorder.num_samples != n:
        raise ValueError(f"recorder: num_samples={recorder.num_samples}, expected len(dataset)={n}")
    if difficulty is None:
        if recorder is None:
            raise ValueError("difficulty: expected scores (a Difficulty or an array over dataset indices), or a "
                             "recorder= to start uniform and learn them from feedback")
        difficulty = recorder.difficulty("loss_ema")
    d = _check_cover(as_difficulty(difficulty), n, warn="num_samples" not in sampler_kwargs)
    if sampler_kwargs.get("exclude") is None:  # else the epoch defaults to the ids left
        sampler_kwargs.setdefault("num_samples", n)
    bs = CurriculumBatchSampler(d, pacing, batch_size=batch_size, drop_last=drop_last, strategy=strategy, seed=seed,
                                **sampler_kwargs)
    return CurriculumLoader(loader, bs, recorder, store, with_indices, rescore_every, rescore_fn)


__all__ = ["wrap", "CurriculumLoader"]
