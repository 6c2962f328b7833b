"""Lightning: the curriculum under DDP, per-sample feedback, and resume from Lightning's own checkpoints.

Return a :func:`curriculum.wrap`-ped loader from ``train_dataloader()`` and add the callback::

    class Model(L.LightningModule):
        def train_dataloader(self):
            loader = DataLoader(train_set, batch_size=64, shuffle=True, num_workers=2)
            return cl.wrap(loader, difficulty=scores, pacing=cl.pacing.Root(0.2, 2_000), recorder=rec)

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y, reduction="none")
            return {"loss": loss.mean(), "per_sample_loss": loss.detach()}

    trainer = L.Trainer(callbacks=[CurriculumCallback()])
    trainer.fit(model)                          # later: trainer.fit(model, ckpt_path="last.ckpt")

Why this works where a bare sampler does not:

- Lightning replaces the sampler of every ``DataLoader`` under DDP (a ``DistributedSamplerWrapper``
  with ``shuffle=True``, which flattens the curriculum); a wrapped loader is not a ``DataLoader``,
  so Lightning leaves it alone, and it shards the curriculum's draw by rank itself (rank and world
  size are read when iteration starts, after Lightning set up the process group).
- Lightning saves the state of a loader that has ``state_dict`` in its checkpoints and restores it
  on ``fit(ckpt_path=...)``; the state is tensors and plain values (``weights_only`` loads it).
- Lightning fetches one batch ahead of ``training_step``; the callback tells the loader which batch
  the step finished (``mark_trained``), so the saved position and the feedback refer to the batch
  that was trained, not the one prefetched.
"""

from __future__ import annotations

import warnings
from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # the older package name
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError as exc:  # pragma: no cover - the message is the point
        raise ImportError("curriculum.integrations.lightning needs Lightning: pip install 'curriculum[integrations]' "
                          "(or pip install lightning)") from exc

from ..sampling.loader import CurriculumLoader
from ..sampling.sampler import CurriculumBatchSampler, CurriculumSampler

__all__ = ["CurriculumCallback", "curriculum_loaders"]


def curriculum_loaders(obj: Any) -> list[CurriculumLoader]:
    """Every :class:`~curriculum.CurriculumLoader` in a (possibly nested) train dataloader structure.

    Example:
        >>> curriculum_loaders({"a": [1, 2]})
        []
    """
    if isinstance(obj, CurriculumLoader):
        return [obj]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in curriculum_loaders(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in curriculum_loaders(v)]
    return []


def _bare_curriculum_sampler(loader: Any) -> str | None:
    """What a plain DataLoader holds of ours (a replaced sampler included), or None."""
    for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        inner = getattr(getattr(obj, "dataset", None), "_sampler", None)  # Lightning's DistributedSamplerWrapper
        if isinstance(inner, (CurriculumSampler, CurriculumBatchSampler)):
            return "replaced"
        if isinstance(obj, (CurriculumSampler, CurriculumBatchSampler)) or isinstance(
                getattr(obj, "sampler", None), (CurriculumSampler, CurriculumBatchSampler)):
            return "bare"
    return None


class CurriculumCallback(pl.Callback):
    """Keeps a :func:`curriculum.wrap`-ped train loader exact under Lightning.

    Args:
        loss_key: key of the per-sample loss in the dict ``training_step`` returns (fed to the
            loader's recorder); missing keys are skipped.
        logits_key: key of per-sample logits in that dict (optional).
        embeddings_key: key of per-sample embeddings for the loader's store (optional).

    Example:
        >>> trainer = L.Trainer(callbacks=[CurriculumCallback()])  # doctest: +SKIP
    """

    def __init__(self, loss_key: str = "per_sample_loss", logits_key: str = "per_sample_logits",
                 embeddings_key: str = "per_sample_embeddings") -> None:
        for name, key in (("loss_key", loss_key), ("logits_key", logits_key), ("embeddings_key", embeddings_key)):
            if not isinstance(key, str):
                raise TypeError(f"{name}: expected a str (a key of training_step's output), got {type(key).__name__}")
        self.loss_key, self.logits_key, self.embeddings_key = loss_key, logits_key, embeddings_key
        self.loaders: list[CurriculumLoader] = []

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        train = trainer.train_dataloader
        self.loaders = curriculum_loaders(train)
        if self.loaders:
            return
        flat = train if isinstance(train, (list, tuple)) else list(train.values()) if isinstance(train, dict) else [train]
        kinds = {_bare_curriculum_sampler(dl) for dl in flat} - {None}
        if "replaced" in kinds:
            raise RuntimeError("CurriculumCallback: Lightning replaced the curriculum sampler with a shuffling "
                               "DistributedSampler, which flattens the curriculum; return curriculum.wrap(DataLoader(...)) "
                               "from train_dataloader() (or pass Trainer(use_distributed_sampler=False))")
        if "bare" in kinds:
            warnings.warn("CurriculumCallback: the train DataLoader holds a curriculum sampler directly; Lightning does "
                          "not checkpoint its position, so fit(ckpt_path=...) restarts the epoch - return "
                          "curriculum.wrap(DataLoader(...)) from train_dataloader() to resume exactly", UserWarning)
        else:
            warnings.warn("CurriculumCallback: no curriculum loader in train_dataloader() - return "
                          "curriculum.wrap(DataLoader(...)) from it", UserWarning)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        for loader in self.loaders:
            loader.mark_trained(batch_idx)
            if not isinstance(outputs, dict):
                continue
            parts = {"loss": outputs.get(self.loss_key), "logits": outputs.get(self.logits_key),
                     "embeddings": outputs.get(self.embeddings_key)}
            if loader.recorder is None:
                parts["loss"] = parts["logits"] = None
            if loader.store is None:
                parts["embeddings"] = None
            if any(v is not None for v in parts.values()):
                loader.feedback(**{k: v.detach() for k, v in parts.items() if v is not None}, batch=batch_idx)
