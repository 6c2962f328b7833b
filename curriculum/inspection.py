"""Bring your own embeddings, get per-sample scores: :func:`inspect`.

One pass computes what a user asks of a dataset: which samples look mislabelled (the bench's best
label-noise score, with the neighbours' majority label), which are near-duplicates, which are
outliers, how hard each is for a curriculum, and how the data spreads over clusters before and
after a balanced curated subset. :mod:`curriculum.cli.inspect` writes them as arrays, a CSV of
flagged samples and a self-contained HTML report (``curriculum inspect``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._util import checks as C
from .difficulty import Difficulty, label_noise
from .store import EmbeddingStore

K = 10                  # neighbours behind the neighbourhood scores
DUPLICATE_SIMILARITY = 0.98
FLAG_QUANTILE = 0.75    # label issues: the neighbours disagree and the label-noise score is above this quantile ...
OUTLIER_QUANTILE = 0.99  # ... outliers: beyond this quantile of the k-th neighbour distance
CURATED_SHARE = 0.1
GRAPH_RECALL = 0.8  # a report's kNN graph: NN-descent's lists suffice where 0.95 would force the exact graph


@dataclass
class Inspection:
    """Per-sample scores of :func:`inspect`, aligned with the input rows.

    Attributes:
        scores: name -> float array ``(n,)``: ``label_noise`` (higher = more likely mislabelled;
            only with labels), ``difficulty`` (0 easy .. 1 hard: rank of the k-th neighbour
            distance, or with labels of the label-noise-free margin), ``outlier`` (k-th neighbour
            distance), plus int arrays ``duplicate_group`` (-1 = none), ``cluster``,
            ``neighbour_label`` (majority of the k neighbours; -1 without labels) and the 0/1
            ``curated`` membership of a balanced 10% subset.
        flagged: row -> reasons: ``"label"`` (the neighbours' majority disagrees and the label-noise
            score is in the top quarter), ``"duplicate"``, ``"outlier"`` (k-th neighbour distance
            in the top 1%).
        labels: the given labels (or ``None``).
        neighbours: ``(n, k)`` rows of every row's nearest neighbours, nearest first.

    Example:
        >>> import numpy as np
        >>> r = inspect(np.random.default_rng(0).normal(size=(300, 8)), labels=np.arange(300) % 3)
        >>> sorted(r.scores)[:3], len(r.scores["label_noise"])
        (['cluster', 'curated', 'difficulty'], 300)
    """

    scores: dict[str, np.ndarray]
    flagged: dict[int, list[str]] = field(default_factory=dict)
    labels: np.ndarray | None = None
    metric: str = "cosine"
    neighbours: np.ndarray | None = None  # (n, k) rows of each row's nearest neighbours

    def duplicate_groups(self) -> list[np.ndarray]:
        """Rows of each near-duplicate group, largest first."""
        g = self.scores["duplicate_group"]
        groups = [np.flatnonzero(g == v) for v in np.unique(g[g >= 0])]
        return sorted(groups, key=lambda r: (-len(r), int(r[0])))


def inspect(embeddings: Any, labels: Any = None, metric: str = "cosine", k: int = K, seed: int = 0,
            progress: bool | None = None) -> Inspection:
    """Scores of every row of ``embeddings`` ``(n, d)`` (finite floats; ``labels`` optional,
    ``(n,)`` integers). See :class:`Inspection` for what comes back.

    Example:
        >>> import numpy as np
        >>> r = inspect(np.random.default_rng(0).normal(size=(200, 4)), metric="l2")
        >>> r.scores["outlier"].shape, "label_noise" in r.scores
        ((200,), False)
    """
    x = C.as_vectors(embeddings, "embeddings")
    n = len(x)
    if n < 2 * k + 2:
        raise ValueError(f"embeddings: expected at least {2 * k + 2} rows for k={k}, got {n}")
    y = None if labels is None else C.as_labels(labels, "labels", n)
    store = EmbeddingStore(x.shape[1], metric=C.choice(metric, "metric", ("cosine", "l2", "ip")))
    store.add(x, labels=y)
    dist, nbr = store.knn(k, progress=progress, target_recall=GRAPH_RECALL)  # later scores reuse this graph
    scores: dict[str, np.ndarray] = {"outlier": dist[:, -1].astype(np.float64)}
    scores["neighbour_label"] = np.full(n, -1, np.int64)
    if y is not None:
        votes = y[nbr]
        scores["neighbour_label"] = _majority(votes, int(y.max()) + 1)
        scores["label_noise"] = _by_row(label_noise(store, k=k, progress=progress), n)
    scores["difficulty"] = Difficulty(scores["label_noise"] if y is not None else scores["outlier"]).rank()
    scores["duplicate_group"] = _duplicate_groups(store, n, seed, progress)
    scores.update(_clusters(store, n, seed, progress))
    return Inspection(scores, _flags(scores, y), y, metric, store.rows_of(nbr.reshape(-1)).reshape(nbr.shape))


def _majority(votes: np.ndarray, classes: int) -> np.ndarray:
    """Most frequent label per row of ``votes`` (ties: the smallest label), in chunks of rows."""
    out = np.empty(len(votes), np.int64)
    for a in range(0, len(votes), 65_536):
        v = votes[a:a + 65_536]
        counts = np.zeros((len(v), classes), np.int32)
        np.add.at(counts, (np.repeat(np.arange(len(v)), v.shape[1]), v.reshape(-1)), 1)
        out[a:a + len(v)] = counts.argmax(1)
    return out


def _by_row(d: Any, n: int) -> np.ndarray:
    out = np.empty(n)
    out[d.ids] = d.scores
    return out


def _duplicate_groups(store: EmbeddingStore, n: int, seed: int, progress: bool | None) -> np.ndarray:
    from .difficulty.geometry import near_duplicates

    group = np.full(n, -1, np.int64)
    for g, members in enumerate(near_duplicates(store, DUPLICATE_SIMILARITY, seed=seed, progress=progress)):
        group[members] = g
    return group


def _clusters(store: EmbeddingStore, n: int, seed: int, progress: bool | None) -> dict[str, np.ndarray]:
    from .selection.curation import auto_hierarchy, balanced_select

    h = auto_hierarchy(store.vectors(), "cosine" if store.metric == "cosine" else "l2", seed=seed, progress=progress)
    curated = np.zeros(n, np.int64)
    curated[balanced_select(h, max(1, int(n * CURATED_SHARE)), seed=seed)] = 1
    return {"cluster": h.leaf_of_top().astype(np.int64), "curated": curated}


def _flags(scores: dict[str, np.ndarray], y: np.ndarray | None) -> dict[int, list[str]]:
    flagged: dict[int, list[str]] = {}
    if y is not None:
        high = scores["label_noise"] > np.quantile(scores["label_noise"], FLAG_QUANTILE)
        for r in np.flatnonzero(high & (scores["neighbour_label"] != y)):
            flagged.setdefault(int(r), []).append("label")
    for r in np.flatnonzero(scores["duplicate_group"] >= 0):
        flagged.setdefault(int(r), []).append("duplicate")
    for r in np.flatnonzero(scores["outlier"] > np.quantile(scores["outlier"], OUTLIER_QUANTILE)):
        flagged.setdefault(int(r), []).append("outlier")
    return dict(sorted(flagged.items()))


__all__ = ["Inspection", "inspect"]
