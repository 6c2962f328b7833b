"""Embedding a dataset with a model into a new store (``EmbeddingStore.from_model``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._util import checks as C
from .._util.progress import progress_bar, want


def _model_device(model: Any, device: Any) -> Any:
    if device is not None:
        return device
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else "cpu"


def _split(batch: Any, input_key: str | None, label_key: str | None) -> tuple[Any, Any]:
    """(inputs, integer labels or None) of one collated batch: ``x`` or ``(x, y, ...)``, or a dict
    (Hugging Face datasets) read at ``input_key`` / ``label_key`` (default ``"label"`` or ``"labels"``)."""
    if isinstance(batch, dict):
        if input_key is None or input_key not in batch:
            raise ValueError(f"input_key: the dataset's items are dicts with keys {sorted(batch)}; expected input_key= "
                             f"naming the model's input among them, got {input_key!r}")
        key = label_key if label_key is not None else next((k for k in ("label", "labels") if k in batch), None)
        if key is not None and key not in batch:
            raise ValueError(f"label_key: expected one of the item keys {sorted(batch)}, got {key!r}")
        x, y = batch[input_key], None if key is None else batch[key]
    else:
        x, y = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) and len(batch) > 1 else (batch, None)
        x = x[0] if isinstance(x, (list, tuple)) else x
    if y is not None:
        ya = C.to_numpy(y, "labels")
        y = ya if ya.ndim == 1 and np.issubdtype(ya.dtype, np.integer) else None
    return x, y


def embed_dataset(cls: Any, model: Any, dataset: Any, batch_size: int, device: Any, progress: bool | None, metric: str,
                  index: str, num_workers: int, collate_fn: Any, step: int | None, store_kwargs: dict,
                  input_key: str | None = None, label_key: str | None = None) -> Any:
    """See :meth:`curriculum.EmbeddingStore.from_model`."""
    import torch
    from torch.utils.data import DataLoader

    if not hasattr(dataset, "__len__"):
        raise TypeError(f"dataset: expected a map-style dataset with __len__, got {type(dataset).__name__}")
    batch_size = C.positive_int(batch_size, "batch_size")
    for name, key in (("input_key", input_key), ("label_key", label_key)):
        if key is not None and not isinstance(key, str):
            raise TypeError(f"{name}: expected a str (an item key) or None, got {type(key).__name__}")
    device = _model_device(model, device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_fn)
    was_training = getattr(model, "training", False)
    store = None
    offset = 0
    model.eval()
    try:
        with torch.no_grad(), progress_bar(total=len(dataset), desc="embedding", disable=not want(progress, len(dataset), 10_000)) as bar:
            for batch in loader:
                x, y = _split(batch, input_key, label_key)
                z = model(x.to(device) if hasattr(x, "to") else x)
                z = C.to_numpy(z, "model output").reshape(len(z), -1)
                n_in = len(x) if hasattr(x, "__len__") else len(z)
                if len(z) != n_in:
                    raise ValueError(f"model: expected one embedding per input row ({n_in}), got {len(z)} rows")
                if store is None:
                    store = cls(z.shape[1], metric=metric, index=index, **store_kwargs)
                store.add(z, ids=np.arange(offset, offset + len(z)), labels=y, step=step)
                offset += len(z)
                bar.update(len(z))
    finally:
        model.train(was_training)
    if store is None:
        raise ValueError("dataset: expected at least one item, got an empty dataset")
    return store


__all__ = ['embed_dataset']
