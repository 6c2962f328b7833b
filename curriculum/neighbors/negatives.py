"""Every row's hard negatives - its nearest rows of another label - by an other-label NN-descent.

The blocked engine finds them exactly inside its probes, but on real features the lists a row
must probe to reach its hard negatives grow with N (Fashion-MNIST CNN-128: nprobe 35 / 62 / 89
for recall 0.95 at 250k / 1M / 2M rows, the build 21.6 / 151 / 450 s). Negatives have the
structure NN-descent uses for neighbours: a row's hard negatives are near its own neighbours'
hard negatives, near the neighbours of its hard negatives, and a row that lists ``i`` as a
negative is one of ``i``'s (the relation is symmetric). So a cheap blocked pass (few probes)
seeds the lists, and rounds refine them from those three sources, on the all-points kNN graph:
each round scores only what the last one changed, and the rounds stop when the recall measured
on sampled rows against exact search clears the target (where they settle short of it, a
blocked pass of 4x the probes seeds them again).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._util import checks as C
from .._util.progress import progress_bar
from .blocked import block_plan, blocked_knn
from .descent import descent_knn
from .kernels import exact_topk
from .metric import get_metric
from .plan import PLAN_SAMPLE, plan_recall, sampled_recall

SEED_NPROBE = 8     # probes of the blocked pass that seeds the lists (1M CNN features, the graph aside:
                    # recall 0.55, 0.95 after 4 rounds, 69 s; 4 probes: 0.40, 6 rounds, 67 s; 16: 0.72, 92 s)
GRAPH_K = 10        # neighbours per row in the graph the candidates come through
SPREAD = 20         # leading entries of a list that spread as candidates
MAX_ROUNDS = 16
MIN_CHANGED = 0.005  # rounds stop when fewer list entries than this share of all changed


def descent_negatives(x: np.ndarray, labels: np.ndarray, k: int, metric: str, recall_k: int | None = None,
                      target: float = 0.95, graph: np.ndarray | None = None, nprobe: int = SEED_NPROBE,
                      seed: int = 0, progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``k`` nearest rows of another label of every row of ``x`` (approximate; see the
    module), as row numbers (``-1`` pads a row with fewer). Rounds run until the recall of the
    ``recall_k`` (default ``k``) nearest, measured on :data:`PLAN_SAMPLE` sampled rows against
    exact search, clears ``target`` by two standard errors (as the blocked engine's plan); where
    they settle short of it, the lists are seeded again by a blocked pass of 4x the probes and
    refined on (at most every block probed: exact). ``graph``: each row's nearest rows (any
    label; computed by :func:`descent_knn` with :data:`GRAPH_K` when not given);
    ``nprobe``: probes of the seeding blocked pass. Returns ``(rows, info)``; ``info`` holds
    ``recall_estimate`` (the last measured recall), ``rounds``, ``seed_recall`` and ``nprobe``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(3000, 8)).astype(np.float32)
        >>> lab = (x[:, 0] > 0).astype(np.int64)  # two labels split by a plane
        >>> rows, info = descent_negatives(x, lab, 5, "l2")
        >>> bool((lab[rows] != lab[:, None]).all()), info["recall_estimate"] >= 0.95
        (True, True)
    """
    from . import _negatives_kernels as kern

    x, met = C.as_vectors(x, "x"), get_metric(metric)
    n = len(x)
    labels = np.asarray(labels, np.int64)
    if labels.shape != (n,):
        raise ValueError(f"labels: expected one label per row of x ({n}), got shape {labels.shape}")
    k = C.positive_int(k, "k")
    recall_k = min(k, C.positive_int(recall_k, "recall_k")) if recall_k is not None else k
    target = C.finite_float(target, "target", 0.0, 1.0, low_open=True)
    x = np.ascontiguousarray(met.prepare(x, "x"), np.float32)  # the module's rows: prepared
    kind = 0 if met.name in ("ip", "cosine") else 1
    if graph is None:
        graph = descent_knn(x, min(GRAPH_K, n - 1), metric, seed=seed, progress=progress)[1]
    graph = np.ascontiguousarray(graph, np.int64)
    sample = np.random.default_rng(seed).choice(n, min(PLAN_SAMPLE, n), replace=False)
    true_d = exact_topk(x[sample], x, recall_k, metric, labels[sample], labels)[0]
    goal = min(1.0, target + 2.0 * math.sqrt(target * (1.0 - target) / (len(sample) * recall_k)))  # 2 s.e.
    plan = block_plan(x, max(1, n // 256), metric, seed)
    probes, rows, dist = C.positive_int(nprobe, "nprobe"), None, None
    info: dict[str, Any] = {"nprobe": probes, "rounds": 0}
    with progress_bar(total=MAX_ROUNDS, desc="hard negatives (other-label descent)", disable=not progress) as bar:
        while True:  # seed (again, with 4x the probes, when the rounds settle short of the target)
            dist, rows = _seeded(x, kind, labels, k, metric, probes, plan, rows)
            info["nprobe"] = probes
            info["recall_estimate"] = _recall(x, rows, recall_k, metric, sample, true_d)
            info.setdefault("seed_recall", info["recall_estimate"])
            dist, rows = _rounds(kern, x, kind, labels, graph, dist, rows, info, goal,
                                 lambda r: _recall(x, r, recall_k, metric, sample, true_d), bar)
            if info["recall_estimate"] >= goal or probes >= len(plan[0]):
                return rows, info
            probes = min(4 * probes, len(plan[0]))


DESCENT_FROM_ROWS = 250_000  # negatives_table(method="auto") refines by NN-descent from this many rows
# (Fashion-MNIST CNN-128 at 250k: 19.9 s with the graph vs 20.1 s blocked; below, the blocked engine)


def negatives_table(x: np.ndarray, labels: np.ndarray, k: int, metric: str, recall_k: int | None = None,
                    target: float = 0.95, method: str = "auto", nprobe: int | None = None,
                    graph: np.ndarray | None = None, progress: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Every row's ``k`` nearest rows of another label (row numbers, ``-1`` pads) by one of two
    engines - the table :meth:`~curriculum.HardNegativeMiner.build_table` installs and each rank
    of a sharded store builds for its region batch:

    - ``"blocked"``: :func:`~curriculum.neighbors.blocked_knn` with labels, at ``nprobe`` or,
      without it, the smallest nprobe whose recall of the ``recall_k`` nearest (measured on
      sampled rows against exact search, :func:`~curriculum.neighbors.plan_recall`) clears ``target``;
    - ``"descent"``: :func:`descent_negatives` (``graph``: a kNN graph of ``x`` to walk);
    - ``"auto"``: ``"descent"`` from :data:`DESCENT_FROM_ROWS` rows unless ``nprobe`` is given,
      else ``"blocked"`` (also where one label leaves nothing to refine).

    Returns ``(rows, info)``; ``info`` holds ``method``, ``nprobe``, ``recall_estimate`` (None at a
    given nprobe) and the descent's ``rounds`` / ``seed_recall``.

    Example:
        >>> import numpy as np
        >>> x = np.array([[0.0], [1.0], [1.5], [4.0]], np.float32)
        >>> rows, info = negatives_table(x, np.array([0, 0, 1, 1]), 1, "l2")
        >>> rows.ravel().tolist(), info["method"]
        ([2, 2, 1, 1], 'blocked')
    """
    n = len(x)
    how = table_method(method, nprobe)
    if how == "auto":
        how = "descent" if nprobe is None and n >= DESCENT_FROM_ROWS else "blocked"
    if how == "descent" and len(np.unique(labels)) > 1:
        rows, info = descent_negatives(x, labels, k, metric, recall_k=recall_k, target=target, graph=graph,
                                       progress=progress)
        return rows, {"method": "descent", **info}
    estimate = None  # the blocked engine (also where one label leaves nothing to refine: it says so)
    if nprobe is None:
        plan = plan_recall(x, recall_k or k, metric, target, labels=labels)
        centroids, assign, nprobe, estimate = plan.centroids, plan.assign, plan.nprobe, plan.recall_estimate
    else:
        centroids, assign = block_plan(x, max(1, n // 256), metric)
    rows = blocked_knn(x, k, metric, nprobe=nprobe, labels=labels, progress=progress, centroids=centroids,
                       assign=assign)[1]
    return rows, {"method": "blocked", "nprobe": nprobe, "recall_estimate": estimate}


def table_method(method: str, nprobe: int | None) -> str:
    """``method`` checked for :func:`negatives_table` (``nprobe`` is the blocked engine's only).

    Example:
        >>> table_method("auto", 8)
        'auto'
    """
    how = C.choice(method, "method", ("auto", "blocked", "descent"))
    if how == "descent" and nprobe is not None:
        raise ValueError("nprobe: the blocked engine's probes; method='descent' seeds its lists itself")
    return how


def _seeded(x: np.ndarray, kind: int, labels: np.ndarray, k: int, metric: str, probes: int,
            plan: tuple[np.ndarray, np.ndarray], rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Lists from a blocked pass of ``probes`` probes (merged with ``rows`` where given), as raw
    scores ascending and rows."""
    seeded = blocked_knn(x, k, metric, nprobe=probes, labels=labels, centroids=plan[0], assign=plan[1])[1]
    both = seeded if rows is None else np.concatenate([rows, seeded], 1)
    return _rescored(x, kind, both, k)  # sorted, a row listed by both kept once


def _rounds(kern: Any, xp: np.ndarray, kind: int, labels: np.ndarray, graph: np.ndarray, dist: np.ndarray,
            rows: np.ndarray, info: dict[str, Any], target: float, recall: Any, bar: Any) -> tuple:
    """Refinement rounds until ``recall(rows)`` reaches ``target``, the lists settle or
    :data:`MAX_ROUNDS` rounds ran in all (``info`` counts them and keeps the last recall)."""
    new = np.ones(rows.shape, bool)
    spread = min(SPREAD, rows.shape[1])
    while info["recall_estimate"] < target and info["rounds"] < MAX_ROUNDS:
        out = (np.empty_like(dist), np.empty_like(rows), np.empty_like(new))
        changed = kern.refine(xp, kind, labels, graph, dist, rows, new, spread, *_reverse(rows, dist, new, spread),
                              *out)
        dist, rows, new = out
        info["rounds"] += 1
        info["recall_estimate"] = recall(rows)
        bar.update(1)
        if changed < MIN_CHANGED * rows.size:
            break
    return dist, rows


def _rescored(xp: np.ndarray, kind: int, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The listed rows' raw scores (the kernels' convention), each list sorted ascending, repeats
    dropped, ``k`` kept."""
    from ._descent_kernels import rescore

    return rescore(xp, kind, np.ascontiguousarray(rows, np.int64), k)


def _reverse(rows: np.ndarray, dist: np.ndarray, new: np.ndarray,
             spread: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reverse lists of the new entries among each list's ``spread`` leading ones: for row ``u``,
    the rows ``v`` that newly list it, with their distance (CSR: pointers, sources, distances)."""
    n = len(rows)
    head = rows[:, :spread]
    keep = new[:, :spread] & (head >= 0)
    src = np.broadcast_to(np.arange(n)[:, None], head.shape)[keep]
    dst, d = head[keep], dist[:, :spread][keep]
    order = np.argsort(dst, kind="stable")
    ptr = np.searchsorted(dst[order], np.arange(n + 1))
    return ptr.astype(np.int64), src[order].astype(np.int64), np.ascontiguousarray(d[order], np.float32)


def _recall(x: np.ndarray, rows: np.ndarray, k: int, metric: str, sample: np.ndarray, true_d: np.ndarray) -> float:
    return float(sampled_recall(x, rows, k, metric, truth=(sample, true_d)))


__all__ = ["negatives_table", "table_method", "descent_negatives", "DESCENT_FROM_ROWS", "SEED_NPROBE", "GRAPH_K"]
