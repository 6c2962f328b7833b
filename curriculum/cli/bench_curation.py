"""``curriculum bench --sections curation``: balance of a curated subset of long-tailed pools,
beside random subsets and, where a checkout is given, the anchor's implementation.

Pools: synthetic Gaussian modes (5 to 500 of them, sizes falling 100x from head to tail, 16-d to
384-d; the number of modes is never passed to ``curate``), the same family at 250k / 1M rows with
a fixed 100 modes (cost against N), and real labelled long-tailed sets: Fashion-MNIST-LT
(rho = 100) with CNN features and the Debian descriptions' MiniLM embeddings by archive section
(all 121k, and a 25k sample where the anchor runs too).
Every pool is curated to 10% with default arguments. Balance: max/min of the per-mode counts
over the modes larger than their fair share (smaller ones should be taken whole: the share that
was), the effective number of modes or classes (exp of the entropy), and the share of the rarest
10% of the classes, each beside the median of :data:`RANDOM_DRAWS` random subsets (the rarest classes'
share beside the pool's own, which is a random subset's expectation). On the labelled sets - where a
few hundred rows make up the rarest classes, so one draw moves their share by a third - ``curate``
and the anchor run with :data:`LABELLED_SEEDS` seeds and each row gives the medians, with the
rarest classes' share and the effective classes over the seeds as ``rare_share_range`` and
``effective_range``, and the rarest classes' share over 30 random subsets as ``rare_share_random_sd``.

The anchor (Vo et al. 2024, facebookresearch/ssl-data-curation) is not on PyPI; point
``CURRICULUM_ANCHOR_CURATION`` at a checkout to run it on the pools up to 25k rows, configured
as its README's example scaled to N: two levels of N/30 and N/100 clusters, 15 and 2 points
sampled per cluster, 10 resampling steps, random hierarchical sampling; seed ``s`` seeds torch's
and NumPy's global random state, which it draws from.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import textwrap
import time
from typing import Any

import numpy as np

ANCHOR_ENV = "CURRICULUM_ANCHOR_CURATION"
ANCHOR_MAX_ROWS = 25_000
SHARE = 0.1
LABELLED_SEEDS = 3  # curate() and anchor seeds on the labelled sets (medians reported)
RANDOM_DRAWS = 30  # random subsets per pool: their median is the baseline (5 let it move by ~10% between runs)
RANDOM = f"random (median of {RANDOM_DRAWS})"
FAR = 'curate(within="far")'  # on the labelled sets also: the default until stop 47 (equal shares per leaf)


def mode_pool(modes: int, dim: int, rows: int, rho: float = 100.0, seed: int = 0,
              separation: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, mode of each row)``: ``modes`` Gaussian modes (unit-ish spread, centres
    ``separation`` apart per axis) whose sizes fall geometrically by ``rho`` from head to tail,
    ``rows`` in all.

    Example:
        >>> x, y = mode_pool(5, 8, 1000)
        >>> x.shape, np.bincount(y).tolist()
        ((1000, 8), [689, 216, 68, 21, 6])
    """
    rng = np.random.default_rng(seed)
    w = (1.0 / rho) ** (np.arange(modes) / max(modes - 1, 1))
    sizes = np.maximum(1, np.floor(w / w.sum() * rows)).astype(np.int64)
    sizes[0] += rows - sizes.sum()
    centres = rng.normal(size=(modes, dim)) * separation
    spread = rng.uniform(0.7, 1.3, modes)
    x = np.empty((rows, dim), np.float32)
    start = 0
    for c, s in enumerate(sizes):
        x[start:start + s] = centres[c] + spread[c] * rng.standard_normal((s, dim), np.float32)
        start += s
    return x, np.repeat(np.arange(modes), sizes)


def balance(y: np.ndarray, sel: np.ndarray) -> dict[str, float]:
    """Balance of the rows ``sel`` over the groups ``y``: ``max_min`` over groups larger than
    their fair share, ``small_taken`` (mean share taken of the smaller groups, 1 = whole),
    ``effective`` groups, ``rare_share`` (rows of the rarest 10% of groups).

    Example:
        >>> b = balance(np.repeat([0, 1, 2], [100, 100, 5]), np.r_[0:10, 100:110, 200:205])
        >>> b["max_min"], b["small_taken"], b["rare_share"]
        (1.0, 1.0, 0.2)
    """
    sizes = np.bincount(y)
    got = np.bincount(y[sel], minlength=len(sizes))
    big = sizes > len(sel) / len(sizes)
    p = got[got > 0] / got.sum()
    rare = np.argsort(sizes, kind="stable")[:max(1, int(round(len(sizes) / 10)))]
    return {"max_min": float(got[big].max() / max(got[big].min(), 1)) if big.any() else 1.0,
            "small_taken": float((got[~big] / sizes[~big]).mean()) if (~big).any() else 1.0,
            "effective": float(np.exp(-(p * np.log(p)).sum())),
            "rare_share": float(got[rare].sum() / got.sum())}


def curation_sets(quick: bool, data: str | None) -> dict[str, tuple[np.ndarray, np.ndarray, str, str]]:
    """``name -> (vectors, groups, metric, kind)``; kind ``modes`` (planted) or ``classes`` (labels)."""
    out: dict[str, tuple[np.ndarray, np.ndarray, str, str]] = {}
    shapes = [(16, 16, 24_000), (50, 64, 20_000)] if quick else \
        [(5, 16, 15_000), (16, 16, 24_000), (50, 64, 22_000), (200, 128, 43_000), (500, 384, 54_000),
         (100, 128, 250_000), (100, 128, 1_000_000)]
    for modes, dim, rows in shapes:
        for metric in (("l2",) if rows > 100_000 else ("l2", "cosine")):
            x, y = mode_pool(modes, dim, rows, seed=modes)
            out[f"{modes} modes, {dim}-d, {rows // 1000}k ({metric})"] = (x, y, metric, "modes")
    out.update(_real_sets(quick, data))
    return out


def _real_sets(quick: bool, data: str | None) -> dict[str, tuple[np.ndarray, np.ndarray, str, str]]:
    from . import real_embeddings as R
    from .data import load_real, long_tailed, pixel_pca

    out: dict[str, tuple[np.ndarray, np.ndarray, str, str]] = {}
    ds = load_real(data)
    name = ds.source.split(" from ")[0]
    if quick:
        idx = long_tailed(ds.labels, 100.0)
        out[f"{name}-LT pixel-PCA-64"] = (pixel_pca(ds.images[idx], 64), ds.labels[idx], "l2", "classes")
        return out
    x, y = R.cnn_features(ds.images, ds.labels, progress=True)
    x, y = x[:len(ds.labels)], y[:len(ds.labels)]
    idx = long_tailed(y, 100.0)
    out[f"{name}-LT CNN-128"] = (x[idx], y[idx], "cosine", "classes")
    try:
        xt, yt = R.text_embeddings()
        yt = np.unique(yt, return_inverse=True)[1]
        out["Debian descriptions MiniLM-384, 59 sections"] = (xt, yt, "cosine", "classes")
        pick = np.sort(np.random.default_rng(0).choice(len(xt), ANCHOR_MAX_ROWS, replace=False))  # the anchor runs here
        out[f"Debian descriptions, {ANCHOR_MAX_ROWS // 1000}k sample"] = (np.ascontiguousarray(xt[pick]),
                                                                           np.unique(yt[pick], return_inverse=True)[1],
                                                                           "cosine", "classes")
    except FileNotFoundError as exc:
        print(f"  text set skipped: {exc}")
    return out


def _anchor(x: np.ndarray, target: int, seed: int = 0) -> tuple[np.ndarray, float] | str:
    """The anchor's pipeline on ``x`` (see the module) with torch's and NumPy's global random
    state seeded by ``seed`` (it draws from both), or why it did not run."""
    path = os.environ.get(ANCHOR_ENV)
    if not path:
        return f"set {ANCHOR_ENV} to a checkout of facebookresearch/ssl-data-curation"
    if len(x) > ANCHOR_MAX_ROWS:
        return f"skipped above {ANCHOR_MAX_ROWS} rows (CPU torch: over 10 min at 43k)"
    import torch

    sys.path.insert(0, path)
    np.Inf = np.inf  # type: ignore[attr-defined]  # the anchor predates NumPy 2
    try:
        from src import hierarchical_kmeans_gpu as hk  # type: ignore[import-not-found]
        from src import hierarchical_sampling as hs  # type: ignore[import-not-found]
        from src.clusters import HierarchicalCluster  # type: ignore[import-not-found]
    finally:
        sys.path.remove(path)
    levels = [max(2, len(x) // 30), max(1, len(x) // 100)]
    torch.manual_seed(seed)
    np.random.seed(seed)
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        res = hk.hierarchical_kmeans_with_resampling(torch.from_numpy(np.ascontiguousarray(x, np.float32)), levels, 2,
                                                     [15, 2], n_resamples=10, verbose=False)
        sel = hs.hierarchical_sampling(HierarchicalCluster.from_dict(res), target_size=target)
    return np.asarray(sel, np.int64), time.perf_counter() - t


def curation_section(quick: bool = False, data: str | None = None) -> list[dict[str, Any]]:
    """One row per pool and method (``curate`` defaults, random subsets, the anchor)."""
    import curriculum as cl

    rows: list[dict[str, Any]] = []
    for name, (x, y, metric, kind) in curation_sets(quick, data).items():
        target = int(len(x) * SHARE)
        store = cl.EmbeddingStore(x.shape[1], metric=metric)
        store.add(x)
        rand = [balance(y, np.random.default_rng(s).choice(len(x), target, replace=False)) for s in range(RANDOM_DRAWS)]
        base = {k: float(np.median([r[k] for r in rand])) for k in rand[0]}
        base["rare_share"] = balance(y, np.arange(len(y)))["rare_share"]  # a random subset's expectation: exact
        common = {"section": "curation", "set": name, "n": len(x), "dim": x.shape[1], "groups": int(y.max()) + 1,
                  "kind": kind}
        rows.append({**common, "method": RANDOM, **_rounded(base)})
        rows.append({**common, "method": "curate()", **_curated(store, y, target, base, kind == "classes")})
        if kind == "classes":
            rows[-1]["rare_share_random_sd"] = round(float(np.std([r["rare_share"] for r in rand])), 4)
            rows.append({**common, "method": FAR, **_curated(store, y, target, base, True, "far")})
        rows.append({**common, "method": "anchor (ssl-data-curation)",
                     **_anchored(x if metric == "l2" else x / np.linalg.norm(x, axis=1, keepdims=True), y, target,
                                 base, kind == "classes")})
        ours = next(r for r in rows[::-1] if r["method"] == "curate()")
        print(f"  {name}: curate {ours['seconds']:.1f} s, max/min {ours['max_min']}, rare x random "
              f"{ours['rare_x_random']}", flush=True)
    return rows


def _curated(store: Any, y: np.ndarray, target: int, base: dict[str, float], seeds: bool,
             within: str | None = None) -> dict[str, Any]:
    """``curate`` with default arguments, or all but ``within`` (seed 0; on labelled sets the
    medians over :data:`LABELLED_SEEDS` seeds, and the range of the rarest classes' share):
    balance, seconds, peak memory."""
    import curriculum as cl

    from .bench_sections import PeakRSS

    runs = []
    for seed in range(LABELLED_SEEDS if seeds else 1):
        with PeakRSS() as mem:
            t = time.perf_counter()
            sel = cl.curate(store, target, seed=seed, **({} if within is None else {"within": within}))
            secs = time.perf_counter() - t
        runs.append({**balance(y, store.rows_of(sel)), "seconds": secs, "peak_mb": mem.mb})
    return {**_summary(runs, base, seeds), "peak_mb": max(r["peak_mb"] for r in runs)}


def _anchored(x: np.ndarray, y: np.ndarray, target: int, base: dict[str, float], seeds: bool) -> dict[str, Any]:
    """The anchor's row, summarised as :func:`_curated` summarises ours (the same seeds on the
    labelled sets), or a ``note`` saying why it did not run."""
    runs = []
    for seed in range(LABELLED_SEEDS if seeds else 1):
        got = _anchor(x, target, seed)
        if isinstance(got, str):
            return {"note": got}
        runs.append({**balance(y, got[0]), "seconds": got[1]})
    return _summary(runs, base, seeds)


def _summary(runs: list[dict[str, float]], base: dict[str, float], seeds: bool) -> dict[str, Any]:
    """Medians over the seeds' ``runs`` (balance and seconds), the rarest classes' share beside
    random's and, with ``seeds``, its range."""
    med = {k: float(np.median([r[k] for r in runs])) for k in runs[0] if k != "peak_mb"}
    out: dict[str, Any] = {"seconds": round(med.pop("seconds"), 2), **_rounded(med), "rare_x_random": _ratio(med, base)}
    if seeds:
        out["seeds"] = len(runs)
        out["rare_share_range"] = [round(min(r["rare_share"] for r in runs), 4), round(max(r["rare_share"] for r in runs), 4)]
        out["effective_range"] = [round(min(r["effective"] for r in runs), 2), round(max(r["effective"] for r in runs), 2)]
    return out


def curation_scaling(sizes: list[int], modes: int = 100, dim: int = 128) -> list[dict[str, Any]]:
    """``curate()`` (default arguments, 10%) on :func:`mode_pool` pools of ``modes`` modes at every
    size in ``sizes``: how its seconds and peak memory grow with N while the modes stay the same,
    and its balance beside the median of 5 random subsets at each N."""
    import curriculum as cl

    rows: list[dict[str, Any]] = []
    for n in sizes:
        x, y = mode_pool(modes, dim, n, seed=modes)
        store = cl.EmbeddingStore(dim, metric="l2")
        store.add(x)
        del x
        target = int(n * SHARE)
        rand = [balance(y, np.random.default_rng(s).choice(n, target, replace=False)) for s in range(5)]
        base = {k: float(np.median([r[k] for r in rand])) for k in rand[0]}
        rows.append({"section": "curation scaling", "set": f"{modes} modes, {dim}-d (l2)", "n": n,
                     "random_max_min": round(base["max_min"], 2), **_curated(store, y, target, base, False)})
        print(f"  N={n:,}: curate {rows[-1]['seconds']:.1f} s, max/min {rows[-1]['max_min']}, "
              f"peak {rows[-1]['peak_mb']:.0f} MB", flush=True)
        del store
    return rows


def plot_curation(rows: list[dict[str, Any]], path: str) -> str:
    """Bar chart per pool: max/min per mode (planted modes) and the rarest classes' share relative
    to random (labelled sets), for each method. Returns ``path``.

    Example:
        >>> plot_curation(rows, "curation.png")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [RANDOM, "curate()", FAR, "anchor (ssl-data-curation)"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    for ax, kind, key, label in ((axes[0], "modes", "max_min", "max/min rows per planted mode (log)"),
                                 (axes[1], "classes", "rare_share", "share of the rarest 10% of classes")):
        sets = list(dict.fromkeys(r["set"] for r in rows if r["kind"] == kind))
        for j, m in enumerate(methods):
            vals = [next((r.get(key, np.nan) for r in rows if r["set"] == s and _method(r) == m), np.nan) for s in sets]
            ax.bar(np.arange(len(sets)) + (j - 1.5) * 0.2, vals, 0.2, label=m)
        ax.set_xticks(np.arange(len(sets)), ["\n".join(textwrap.wrap(s.replace(",", ""), 9 if kind == "modes" else 16)) for s in sets], fontsize=7)
        ax.set_ylabel(label)
        if kind == "modes":
            ax.set_yscale("log")
            ax.axhline(2.5, color="k", lw=0.8, ls="--")
    axes[1].legend(fontsize=7)
    fig.suptitle('curate() with default arguments (on the labelled sets also within="far"), 10% of each long-tailed pool')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _method(row: dict[str, Any]) -> str:
    """A row's method, random baselines of any draw count (older runs: 5) as :data:`RANDOM`."""
    return RANDOM if row["method"].startswith("random") else row["method"]


def _rounded(b: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4 if k == "rare_share" else 2) for k, v in b.items()}


def _ratio(b: dict[str, float], base: dict[str, float]) -> float:
    return round(b["rare_share"] / max(base["rare_share"], 1e-9), 2)


__all__ = ["mode_pool", "balance", "curation_sets", "curation_section", "curation_scaling", "plot_curation"]
