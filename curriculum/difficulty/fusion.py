"""Combining difficulty scores by weighted rank fusion."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .._util import checks as C
from .base import Difficulty, as_difficulty


def combine(scores: Sequence[Any], weights: Sequence[float] | None = None, name: str | None = None) -> Difficulty:
    """Weighted mean of percentile ranks: ``sum_i w_i rank_i / sum_i w_i``.

    Ranks make scores of different scales comparable. All inputs must cover the same ids (in
    any order); the result follows the first input's id order. A sample is ``observed`` when
    it is observed in every input that carries a mask.

    Example:
        >>> from curriculum.difficulty import Difficulty
        >>> combine([Difficulty([1., 2., 3.]), Difficulty([30., 20., 10.])], weights=[3, 1]).scores.tolist()
        [0.25, 0.5, 0.75]
    """
    ds = [as_difficulty(s, f"scores[{i}]") for i, s in enumerate(scores)]
    if not ds:
        raise ValueError("scores: expected at least one Difficulty, got an empty list")
    w = np.ones(len(ds)) if weights is None else np.asarray([C.finite_float(x, "weights", 0.0) for x in weights])
    if len(w) != len(ds):
        raise ValueError(f"weights: expected {len(ds)} weights (one per score), got {len(w)}")
    if w.sum() <= 0:
        raise ValueError("weights: expected at least one positive weight, got all zeros")
    ref = ds[0].ids
    ref_sorted = None if all(np.array_equal(d.ids, ref) for d in ds) else np.sort(ref)
    total = np.zeros(len(ref))
    observed = None
    for i, d in enumerate(ds):
        if np.array_equal(d.ids, ref):  # the same order (scores of one store): nothing to align
            pos = np.arange(len(ref))
        elif len(d) != len(ref) or not np.array_equal(np.sort(d.ids), ref_sorted):
            raise ValueError(f"scores[{i}]: covers different ids than scores[0] ({len(d)} vs {len(ref)} ids)")
        else:
            o = np.argsort(d.ids)
            pos = o[np.searchsorted(d.ids[o], ref)]  # position in d of each ref id
        total += w[i] * d.rank()[pos]
        if d.observed is not None:
            m = d.observed[pos]
            observed = m if observed is None else observed & m
    label = name or "combine(" + ", ".join(f"{d.name}*{x:g}" for d, x in zip(ds, w)) + ")"
    return Difficulty(total / w.sum(), ref, label, observed)


__all__ = ['combine']
