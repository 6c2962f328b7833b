"""Hugging Face ``Trainer``: a curriculum that survives accelerate's sharding, per-sample feedback
through a dataset index, and resume from ``resume_from_checkpoint``.

::

    from curriculum.integrations.transformers import CurriculumTrainer, with_index

    trainer = CurriculumTrainer(model=model, args=args, train_dataset=with_index(train_ds),
                                difficulty=scores, pacing=cl.pacing.Root(0.2, 1_000), recorder=rec)
    trainer.train()                                   # later: trainer.train(resume_from_checkpoint=True)

How it fits the Trainer:

- The sampler draws the *global* sequence (``rank=0, world_size=1``, the same on every process) and
  accelerate's ``BatchSamplerShard`` hands batch ``b`` to process ``b % world_size``: ranks get
  disjoint batches of one curriculum, and nothing is sharded twice. Its batch size is the global
  batch (per device x processes x gradient accumulation), so the pacing's steps are optimizer steps.
- ``with_index`` adds an ``"index"`` column; the trainer keeps it through the Trainer's column
  pruning, takes it out before the model's forward pass, and feeds the per-sample loss (and logits)
  of every process to ``recorder`` (gathered, so all ranks hold the same statistics).
- Every checkpoint folder gets ``curriculum.pt`` (scores, epoch, recorder; ``torch.load(weights_only=True)``
  reads it). On resume the sampler restarts its epoch from those scores and the Trainer's own
  batch skipping moves it to the saved step: the draws are keyed by position, so the resumed batches
  are those of the uninterrupted run.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch

try:
    import transformers
    from transformers import Trainer, TrainerCallback
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("curriculum.integrations.transformers needs transformers and accelerate: "
                      "pip install 'curriculum[integrations]'") from exc

from .._util import checks as C
from .._util.dist import gather_rows
from ..difficulty.base import as_difficulty
from ..difficulty.dynamics import Recorder
from ..sampling.loader import _check_cover
from ..sampling.sampler import CurriculumSampler

__all__ = ["CurriculumTrainer", "with_index", "IndexedDataset", "STATE_FILE"]

STATE_FILE = "curriculum.pt"


class IndexedDataset(torch.utils.data.Dataset):
    """A map-style dataset of dict items, each with its dataset index added under ``key``.

    Example:
        >>> ds = IndexedDataset([{"x": 1.0}, {"x": 2.0}])
        >>> ds[1]
        {'x': 2.0, 'index': 1}
    """

    def __init__(self, dataset: Any, key: str = "index") -> None:
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"dataset: expected a map-style dataset (with __len__ and __getitem__), got "
                            f"{type(dataset).__name__}")
        self.dataset, self.key = dataset, key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        if not isinstance(item, dict):
            raise TypeError(f"dataset: expected dict items (the Trainer's format), got {type(item).__name__} at {i}")
        return {**item, self.key: i}


def with_index(dataset: Any, key: str = "index") -> Any:
    """The dataset with each item's index under ``key``: a ``datasets.Dataset`` gets a column, any
    other map-style dataset of dicts an :class:`IndexedDataset` view.

    Example:
        >>> with_index([{"x": 1.0}])[0]
        {'x': 1.0, 'index': 0}
    """
    if not isinstance(key, str):
        raise TypeError(f"key: expected a str, got {type(key).__name__}")
    try:
        import datasets
    except ImportError:
        datasets = None
    if datasets is not None and isinstance(dataset, datasets.Dataset):
        if key in dataset.column_names:
            raise ValueError(f"key: the dataset already has a column {key!r}")
        return dataset.add_column(key, np.arange(len(dataset), dtype=np.int64))
    return IndexedDataset(dataset, key)


def _classification_loss(outputs: Any, inputs: dict[str, Any]) -> torch.Tensor:
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[1]
    labels = inputs.get("labels", inputs.get("label"))
    if labels is None or logits.ndim != 2:
        raise ValueError("per_sample_loss: the default is classification cross-entropy (logits (B, C), labels (B,)); "
                         "for other heads pass per_sample_loss=fn(outputs, inputs) -> (B,) losses")
    return torch.nn.functional.cross_entropy(logits.detach().float(), labels.view(-1), reduction="none")


class _SaveCurriculum(TrainerCallback):
    """Writes the curriculum's state into every checkpoint folder the Trainer saves."""

    def __init__(self, trainer: "CurriculumTrainer") -> None:
        self.trainer = trainer

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = os.path.join(args.output_dir, f"{transformers.trainer_utils.PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if args.should_save and self.trainer.curriculum_sampler is not None and os.path.isdir(folder):
            torch.save(self.trainer.curriculum_state(), os.path.join(folder, STATE_FILE))


class CurriculumTrainer(Trainer):
    """A ``transformers.Trainer`` whose training order follows a curriculum.

    Args:
        difficulty: a :class:`~curriculum.Difficulty` or score array over dataset indices.
        pacing, strategy, sampler_kwargs: passed to :class:`~curriculum.CurriculumSampler`.
        recorder: a :class:`~curriculum.Recorder` fed the per-sample loss and logits of every
            training batch (needs the ``index`` column, see :func:`with_index`).
        per_sample_loss: ``fn(outputs, inputs) -> (B,)`` losses for the recorder (default:
            cross-entropy of ``logits`` (B, C) against ``labels``).
        index_key: the column holding dataset indices.
        *args, **kwargs: the Trainer's own.

    Example:
        >>> trainer = CurriculumTrainer(model=m, args=a, train_dataset=with_index(ds), difficulty=s)  # doctest: +SKIP
    """

    def __init__(self, *args: Any, difficulty: Any, pacing: Any = None, strategy: str = "threshold",
                 recorder: Recorder | None = None, per_sample_loss: Callable[[Any, dict], torch.Tensor] | None = None,
                 index_key: str = "index", sampler_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if recorder is not None and not isinstance(recorder, Recorder):
            raise TypeError(f"recorder: expected a curriculum.Recorder or None, got {type(recorder).__name__}")
        self.difficulty = as_difficulty(difficulty)
        self.pacing, self.strategy, self.recorder = pacing, strategy, recorder
        self.per_sample_loss = per_sample_loss or _classification_loss
        self.index_key = index_key
        self.sampler_kwargs = dict(sampler_kwargs or {})
        self.curriculum_sampler: CurriculumSampler | None = None
        self._resume_state: dict[str, Any] | None = None
        if self.train_dataset is not None and not hasattr(self.train_dataset, "__len__"):
            raise TypeError(f"train_dataset: a curriculum orders a map-style dataset (with __len__), got "
                            f"{type(self.train_dataset).__name__}")
        self._make_sampler(None)  # validate the scores, pacing and strategy now
        self.add_callback(_SaveCurriculum(self))

    # ------------------------------------------------------------------ sampler
    def _make_sampler(self, n: int | None) -> CurriculumSampler:
        a = self.args
        d = self.difficulty if n is None else _check_cover(self.difficulty, n, warn="num_samples" not in self.sampler_kwargs)
        global_batch = a.per_device_train_batch_size * max(1, a.world_size) * a.gradient_accumulation_steps
        kw = {"seed": a.seed, **self.sampler_kwargs}
        return CurriculumSampler(d, self.pacing, strategy=self.strategy, batch_size=global_batch, rank=0, world_size=1,
                                 **kw)

    def _get_train_sampler(self, train_dataset: Any = None) -> CurriculumSampler:
        ds = self.train_dataset if train_dataset is None else train_dataset
        self.curriculum_sampler = self._make_sampler(len(ds))
        if self._resume_state is not None:
            self._load_curriculum(self._resume_state)
            self._resume_state = None
        return self.curriculum_sampler

    def curriculum_state(self) -> dict[str, Any]:
        """The sampler (at the start of its epoch: the Trainer skips to the step itself) and recorder state."""
        if self.curriculum_sampler is None:
            raise RuntimeError("curriculum_state: no training has started (the sampler is built by train())")
        return {"format": "curriculum.hf-trainer", "version": 1,
                "sampler": self.curriculum_sampler.state_dict(consumed=0),
                "recorder": None if self.recorder is None else self.recorder.state_dict()}

    def _load_curriculum(self, state: dict[str, Any]) -> None:
        C.state_format(state, "curriculum.hf-trainer", (1,), "CurriculumTrainer")
        if (state.get("recorder") is None) != (self.recorder is None):
            raise ValueError(f"{STATE_FILE}: recorder presence differs between the checkpoint and this trainer")
        self.curriculum_sampler.load_state_dict(state["sampler"])
        if self.recorder is not None:
            self.recorder.load_state_dict(state["recorder"])

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train``; resuming also restores the curriculum from the checkpoint's ``curriculum.pt``."""
        path = resume_from_checkpoint
        if path is True:
            path = transformers.trainer_utils.get_last_checkpoint(self.args.output_dir)
            if path is None:
                raise ValueError(f"resume_from_checkpoint: no checkpoint found in {self.args.output_dir!r}")
        if isinstance(path, (str, os.PathLike)):
            file = os.path.join(path, STATE_FILE)
            if not os.path.isfile(file):
                raise FileNotFoundError(f"resume_from_checkpoint: {file} is missing (not saved by a CurriculumTrainer)")
            self._resume_state = torch.load(file, weights_only=True)
        return super().train(resume_from_checkpoint=path, **kwargs)

    # ------------------------------------------------------------------ the index column and feedback
    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self.index_key not in self._signature_columns:  # keep the index through column pruning
            self._signature_columns = list(self._signature_columns) + [self.index_key]

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kwargs: Any) -> Any:
        idx = inputs.pop(self.index_key, None)
        if self.recorder is None or idx is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, **kwargs)
        per = self.per_sample_loss(outputs, inputs).detach().float().reshape(-1)
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        labels = inputs.get("labels", inputs.get("label"))
        if logits is None or logits.ndim != 2 or labels is None or labels.ndim != 1:
            logits = labels = None  # margins and the like need class logits and labels
        idx, per, logits, labels = gather_rows([torch.as_tensor(idx).reshape(-1).long(), per,
                                                None if logits is None else logits.detach().float(),
                                                None if labels is None else labels.detach().long()])
        self.recorder.update(idx, loss=per, logits=logits, labels=labels)
        return (loss, outputs) if return_outputs else loss
