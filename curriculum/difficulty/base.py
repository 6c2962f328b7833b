"""The ``Difficulty`` value type: one float score per dataset id, higher = harder, never NaN."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

from .._util import checks as C
from .._util.io import atomic_savez


@dataclass(frozen=True, eq=False)
class Difficulty:
    """Scores over dataset ids (higher = harder).

    Attributes:
        scores: float64 ``(n,)``, finite.
        ids: int64 ``(n,)`` dataset ids the scores belong to (unique).
        name: what produced the scores (``"knn_distance(k=10)"``...).
        observed: optional bool mask; False marks samples with no evidence yet (e.g. never seen by
            the training loop). Their score is a neutral fill (the median of observed scores), so
            pacing treats them as middling, not as easy.

    Example:
        >>> d = Difficulty([0.3, 0.1, 0.9], name="toy")
        >>> d.rank().tolist()
        [0.5, 0.0, 1.0]
        >>> d.easiest(1 / 3).tolist()
        [1]
    """

    scores: np.ndarray
    ids: np.ndarray = field(default=None)  # type: ignore[assignment]
    name: str = "difficulty"
    observed: np.ndarray | None = None

    def __post_init__(self) -> None:
        s = C.to_numpy(self.scores, "scores")
        if s.ndim != 1:
            raise ValueError(f"scores: expected a 1-D array, got shape {s.shape}")
        if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer) or s.dtype == bool):
            raise TypeError(f"scores: expected numbers, got dtype {s.dtype}")
        s = s.astype(np.float64)
        if not np.isfinite(s).all():
            raise ValueError(f"scores: expected finite values, got {int((~np.isfinite(s)).sum())} NaN/inf")
        ids = np.arange(len(s), dtype=np.int64) if self.ids is None else C.as_ids(self.ids, "ids", n=len(s))
        obs = None
        if self.observed is not None:
            obs = C.to_numpy(self.observed, "observed").astype(bool)
            if obs.shape != s.shape:
                raise ValueError(f"observed: expected shape {s.shape}, got {obs.shape}")
        s.setflags(write=False)
        ids.setflags(write=False)
        object.__setattr__(self, "scores", s)
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "observed", obs)

    def __len__(self) -> int:
        return len(self.scores)

    def __repr__(self) -> str:
        if not len(self):
            return f"Difficulty({self.name!r}, n=0)"
        return (f"Difficulty({self.name!r}, n={len(self)}, min={self.scores.min():.4g}, "
                f"median={np.median(self.scores):.4g}, max={self.scores.max():.4g})")

    def rank(self) -> np.ndarray:
        """Percentile ranks in [0, 1] (0 = easiest), ties averaged; 0.5 for a single sample."""
        n = len(self.scores)
        if n <= 1:
            return np.full(n, 0.5)
        return (rankdata(self.scores, method="average") - 1.0) / (n - 1.0)

    def order(self) -> np.ndarray:
        """Positions sorted easiest first (ties by id, so the order is deterministic)."""
        return np.lexsort((self.ids, self.scores))

    def _count(self, fraction: float) -> int:
        f = C.finite_float(fraction, "fraction", 0.0, 1.0)
        return int(math.ceil(f * len(self) - 1e-9))

    def easiest(self, fraction: float) -> np.ndarray:
        """Ids of the easiest ``ceil(fraction * n)`` samples, easiest first."""
        return self.ids[self.order()[: self._count(fraction)]]

    def hardest(self, fraction: float) -> np.ndarray:
        """Ids of the hardest ``ceil(fraction * n)`` samples, hardest first."""
        c = self._count(fraction)
        return self.ids[self.order()[::-1][:c]]

    def for_ids(self, ids: Any) -> np.ndarray:
        """Scores of the given dataset ids (KeyError for ids not covered)."""
        ids = C.as_ids(ids, "ids", unique=False)
        o = np.argsort(self.ids)
        pos = np.searchsorted(self.ids[o], ids)
        pos = np.minimum(pos, len(o) - 1)
        ok = self.ids[o][pos] == ids if len(o) else np.zeros(len(ids), bool)
        if not ok.all():
            raise KeyError(f"ids: not covered by {self.name!r}: {ids[~ok][:5].tolist()}")
        return self.scores[o[pos]]

    def dense(self, num_samples: int | None = None) -> np.ndarray:
        """Scores as an array indexed by dataset id ``0..num_samples-1`` (all ids must be covered)."""
        if len(self) == 0:
            raise ValueError("difficulty: the scores are empty, there is nothing to lay out by dataset id")
        n = int(self.ids.max()) + 1 if num_samples is None else int(num_samples)
        if len(self) != n or self.ids.max(initial=-1) != n - 1:
            raise ValueError(f"num_samples: the scores cover {len(self)} ids up to {int(self.ids.max(initial=-1))}, "
                             f"expected exactly the ids 0..{n - 1}")
        out = np.empty(n)
        out[self.ids] = self.scores
        return out

    # ---------------------------------------------------------------- persistence (no pickle)
    def save(self, path: str | os.PathLike) -> None:
        """Atomic write of the scores, ids, name and mask (zip of .npy + JSON)."""
        path = os.fspath(path)
        meta = json.dumps({"format": "curriculum.Difficulty", "version": 1, "name": self.name}).encode()
        arrays = {"meta": np.frombuffer(meta, np.uint8), "scores": self.scores, "ids": self.ids}
        if self.observed is not None:
            arrays["observed"] = self.observed
        atomic_savez(path, arrays, prefix=".difficulty-")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Difficulty":
        """Load scores written by :meth:`save`."""
        try:
            with np.load(os.fspath(path), allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                obs = z["observed"] if "observed" in z.files else None
                scores, ids = z["scores"], z["ids"]
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise ValueError(f"path: {os.fspath(path)!r} is not a readable Difficulty file ({exc})") from None
        if meta.get("format") != "curriculum.Difficulty" or meta.get("version") != 1:
            raise ValueError(f"path: {os.fspath(path)!r} holds {meta.get('format')!r} v{meta.get('version')}, "
                             "expected curriculum.Difficulty v1")
        return cls(scores, ids, meta["name"], obs)


def as_difficulty(x: Any, name: str = "difficulty") -> Difficulty:
    """Accept a :class:`Difficulty` or a plain score array (ids ``0..n-1``).

    Example:
        >>> as_difficulty([0.5, 0.1]).ids.tolist()
        [0, 1]
    """
    if isinstance(x, Difficulty):
        return x
    return Difficulty(C.to_numpy(x, name), name=name)


def save_with_store(store: Any, path: str | os.PathLike, scores: dict[str, "Difficulty"]) -> None:
    """Save ``store`` and named difficulty scores together in one atomic file.

    Example:
        >>> save_with_store(store, "train.cstore", {"knn": knn_scores})        # doctest: +SKIP
        >>> store, scores = load_with_store("train.cstore")                      # doctest: +SKIP
    """
    extra: dict[str, np.ndarray] = {}
    names = []
    for name, d in scores.items():
        d = as_difficulty(d, f"scores[{name!r}]")
        names.append({"key": name, "name": d.name, "observed": d.observed is not None})
        extra[f"difficulty/{name}/scores"] = d.scores
        extra[f"difficulty/{name}/ids"] = d.ids
        if d.observed is not None:
            extra[f"difficulty/{name}/observed"] = d.observed
    extra["difficulty/index"] = np.frombuffer(json.dumps(names).encode(), np.uint8)
    store.save(path, extra=extra)


def load_with_store(path: str | os.PathLike) -> tuple[Any, dict[str, "Difficulty"]]:
    """Load a file written by :func:`save_with_store`: ``(store, {name: Difficulty})``.

    Example:
        >>> store, scores = load_with_store("scores.cstore")  # doctest: +SKIP
        >>> scores["knn_distance"].order()[:5]               # doctest: +SKIP
    """
    from ..store import EmbeddingStore

    store = EmbeddingStore.load(path)
    with np.load(os.fspath(path), allow_pickle=False) as z:
        if "extra:difficulty/index" not in z.files:
            return store, {}
        names = json.loads(bytes(z["extra:difficulty/index"]).decode())
        out = {}
        for e in names:
            pre = f"extra:difficulty/{e['key']}/"
            obs = z[pre + "observed"] if e["observed"] else None
            out[e["key"]] = Difficulty(z[pre + "scores"], z[pre + "ids"], e["name"], obs)
    return store, out


__all__ = ['Difficulty', 'as_difficulty', 'save_with_store', 'load_with_store']
