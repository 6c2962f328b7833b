"""Embedding a dataset with a model into a new store (``EmbeddingStore.from_model``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._util import checks as C
from .._util.progress import progress_bar


def _model_device(model: Any, device: Any) -> Any:
    if device is not None:
        return device
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else "cpu"


def _split(batch: Any) -> tuple[Any, Any]:
    """(inputs, integer labels or None) of one collated batch."""
    x, y = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) and len(batch) > 1 else (batch, None)
    x = x[0] if isinstance(x, (list, tuple)) else x
    if y is not None:
        ya = C.to_numpy(y, "labels")
        y = ya if ya.ndim == 1 and np.issubdtype(ya.dtype, np.integer) else None
    return x, y


def embed_dataset(cls: Any, model: Any, dataset: Any, batch_size: int, device: Any, progress: bool, metric: str,
                  index: str, num_workers: int, collate_fn: Any, step: int | None, store_kwargs: dict) -> Any:
    """See :meth:`curriculum.EmbeddingStore.from_model`."""
    import torch
    from torch.utils.data import DataLoader

    if not hasattr(dataset, "__len__"):
        raise TypeError(f"dataset: expected a map-style dataset with __len__, got {type(dataset).__name__}")
    batch_size = C.positive_int(batch_size, "batch_size")
    device = _model_device(model, device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_fn)
    was_training = getattr(model, "training", False)
    store = None
    offset = 0
    model.eval()
    try:
        with torch.no_grad(), progress_bar(total=len(dataset), desc="embedding", disable=not progress) as bar:
            for batch in loader:
                x, y = _split(batch)
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
