"""``curriculum bench --sections noise``: finding flipped labels, side by side with cleanlab.

Each data set gets 20% label noise, symmetric (a flipped label is any other class) and pairwise
(class ``c`` becomes ``c + 1``); every score ranks the samples and is judged by the ROC-AUC of the
flipped ones, and the flagged sets by precision / recall. cleanlab (``pip install
curriculum[bench]``) is run as its users run it on embeddings: self-confidence from 5-fold
out-of-fold scikit-learn logistic-regression probabilities, and ``find_label_issues`` on them.
The two times the goal compares - the default ``label_noise`` from a fresh store, and cleanlab's
cross-validation - are medians of :data:`REPS` interleaved runs.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any, Callable

import numpy as np

NOISE_RATE = 0.2
REPS = 3  # interleaved runs of the default score and of cleanlab; their medians are reported


def noise_sets(n_images: int, n_text: int, data: str | None) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """``name -> (vectors, clean labels, metric)``: Fashion-MNIST pixel-PCA-64 and (in the full
    section) the penultimate features of a small CNN trained on it, and when built, the Debian
    descriptions' MiniLM embeddings with their 59 archive sections as labels."""
    from . import real_embeddings as R
    from .data import load_real, pixel_pca

    out: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    ds = load_real(data)
    rows = np.random.default_rng(0).choice(len(ds.images), min(n_images, len(ds.images)), replace=False)
    out[f"{ds.source.split(' from ')[0]} pixel-PCA-64"] = (pixel_pca(ds.images[rows], 64), ds.labels[rows], "l2")
    if n_text <= 0:
        return out
    x, y = R.cnn_features(ds.images, ds.labels, progress=True)  # trained on the clean labels (cached)
    out[f"{ds.source.split(' from ')[0]} CNN-128 features"] = (x[rows], y[rows], "cosine")
    try:
        x, y = R.text_embeddings()
        rows = np.random.default_rng(1).choice(len(x), min(n_text, len(x)), replace=False)
        out["Debian descriptions MiniLM-384, 59 sections"] = (x[rows], np.unique(y[rows], return_inverse=True)[1], "cosine")
    except FileNotFoundError as exc:
        print(f"  text set skipped: {exc}")
    return out


def add_noise(y: np.ndarray, kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(noisy labels, flipped mask)``: :data:`NOISE_RATE` of the labels moved to another class,
    at random (``"symmetric"``) or to the next class (``"pairwise"``)."""
    rng = np.random.default_rng(seed)
    c = int(y.max()) + 1
    flip = rng.random(len(y)) < NOISE_RATE
    other = (y + (rng.integers(1, c, len(y)) if kind == "symmetric" else 1)) % c
    return np.where(flip, other, y), flip


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC-AUC of ``score`` for the ``positive`` rows (Mann-Whitney, ties averaged)."""
    from scipy.stats import rankdata

    r = rankdata(score)
    npos, nneg = int(positive.sum()), int((~positive).sum())
    return float((r[positive].sum() - npos * (npos + 1) / 2) / max(npos * nneg, 1))


def noise_section(n_images: int = 20_000, n_text: int = 24_000, data: str | None = None,
                  reps: int = REPS) -> list[dict[str, Any]]:
    """The rows: per data set and noise kind, each score's AUC and time on a noisy training pool
    (80% of the rows), the flagged sets' share, precision and recall (our probe's issue mask,
    cleanlab's ``find_label_issues``), and the cleaning effect: the clean-label accuracy on the
    held-out 20% of a logistic regression trained on the whole noisy pool vs. on the pool
    without each flagged set. The default score's and cleanlab's seconds: medians of ``reps``
    interleaved runs."""
    rows: list[dict[str, Any]] = []
    _warm_up()
    for name, (x, y, metric) in noise_sets(n_images, n_text, data).items():
        test = np.random.default_rng(2).random(len(x)) < 0.2
        for kind in ("symmetric", "pairwise"):
            noisy, flip = add_noise(y[~test], kind)
            xt = x[~test]
            print(f"  {name}, {kind} noise: pool N={len(xt):,}, {int(y.max()) + 1} classes, {flip.mean():.1%} flipped",
                  flush=True)
            base = {"section": "noise", "data": name, "noise": kind, "N": len(xt)}
            flagged: dict[str, np.ndarray] = {}
            medians = _interleaved(xt, noisy, metric, reps)
            for what, secs, score, mask in _ours(xt, noisy, metric) + _cleanlab(xt, noisy):
                rows.append(_row(base, what, medians.get(what.split(" (")[0], secs), score, mask, flip))
                if mask is not None:
                    flagged[what] = mask
            rows.extend(_effect(base, xt, noisy, x[test], y[test], flagged))
    return rows


def _row(base: dict[str, Any], what: str, secs: float, score: np.ndarray, mask: np.ndarray | None,
         flip: np.ndarray) -> dict[str, Any]:
    row = {**base, "what": what, "seconds": secs, "auc": auc(score, flip)}
    if mask is not None:
        row.update(flagged=float(mask.mean()), precision=float(flip[mask].mean()) if mask.any() else 0.0,
                   recall=float(mask[flip].mean()))
    print(f"    {what:48s} {secs:7.2f} s  AUC {row['auc']:.3f}"
          + (f"  flagged {row['flagged']:.1%} P {row['precision']:.2f} R {row['recall']:.2f}" if mask is not None
             else ""), flush=True)
    return row


def _effect(base: dict[str, Any], x: np.ndarray, noisy: np.ndarray, xq: np.ndarray, yq: np.ndarray,
            flagged: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Held-out clean accuracy of a logistic regression on the pool, whole and without each flagged set."""
    if not importlib.util.find_spec("sklearn"):
        return []
    from sklearn.linear_model import LogisticRegression

    out = []
    for what, mask in [("train on all noisy labels", np.zeros(len(x), bool))] + [
            (f"train without flagged: {k.split(' (')[0]}", m) for k, m in flagged.items()]:
        model = LogisticRegression(max_iter=300).fit(x[~mask], noisy[~mask])
        acc = float((model.predict(xq) == yq).mean())
        out.append({**base, "what": what, "test_accuracy": acc, "flagged": float(mask.mean())})
        print(f"    {what:48s} held-out clean accuracy {acc:.4f} ({mask.mean():.1%} left out)", flush=True)
    return out


Result = tuple[str, float, np.ndarray, "np.ndarray | None"]


def _warm_up() -> None:
    """Load torch, faiss and the compiled selection kernel of the blocked engine once outside the
    timings (the first call pays ~1 s of it)."""
    import torch

    from ..difficulty import label_noise
    from ..neighbors.kernels import smallest_k
    from ..store import EmbeddingStore

    rng = np.random.default_rng(0)
    s = EmbeddingStore(8, metric="l2")
    s.add(rng.normal(size=(300, 8)).astype(np.float32), labels=rng.integers(0, 3, 300))
    label_noise(s, progress=False)
    smallest_k(torch.from_numpy(rng.random((4, 400), np.float32)), 30, head=100)


def _interleaved(x: np.ndarray, noisy: np.ndarray, metric: str, reps: int = REPS) -> dict[str, float]:
    """Median seconds of ``reps`` interleaved runs of the default score (probe and graph on a
    fresh store) and of cleanlab's cross-validated probabilities: the two times the goal
    compares, measured so that a noisy moment on the shared machine hits both alike."""
    from ..difficulty import label_noise
    from ..store import EmbeddingStore

    def ours() -> None:
        s = EmbeddingStore(x.shape[1], metric=metric)
        s.add(x, labels=noisy)
        label_noise(s, progress=False)

    times: dict[str, list[float]] = {"label_noise": [], "cleanlab self_confidence": []}
    have_cleanlab = bool(importlib.util.find_spec("cleanlab") and importlib.util.find_spec("sklearn"))
    for _ in range(reps):
        times["label_noise"].append(_timed(ours)[1])
        if have_cleanlab:
            times["cleanlab self_confidence"].append(_timed(lambda: _cross_val_probs(x, noisy))[1])
    return {k: float(np.median(v)) for k, v in times.items() if v}


def _cross_val_probs(x: np.ndarray, noisy: np.ndarray) -> np.ndarray:
    """cleanlab's starting point as its users build it: 5-fold out-of-fold probabilities of a
    scikit-learn logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    return cross_val_predict(LogisticRegression(max_iter=1000), x, noisy, cv=5, method="predict_proba", n_jobs=-1)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _ours(x: np.ndarray, noisy: np.ndarray, metric: str) -> list[Result]:
    from ..difficulty import class_margin, combine, label_disagreement, label_k, label_noise, label_probe
    from ..store import EmbeddingStore

    def fresh() -> EmbeddingStore:  # every timed graph is built from scratch (the store caches it)
        s = EmbeddingStore(x.shape[1], metric=metric)
        s.add(x, labels=noisy)
        return s

    store = fresh()
    out: list[Result] = []
    probe, s4 = _timed(lambda: label_probe(store, progress=False))
    default, s0 = _timed(lambda: label_noise(store, probe, progress=False))
    out.append((f"label_noise (default: probe sc + margin + disagreement k=label_k={label_k(store)})", s4 + s0,
                default.scores, None))
    k10, s8 = _timed(lambda: label_noise(fresh(), probe, k=10, progress=False))
    out.append(("label_noise with k=10", s4 + s8, k10.scores, None))
    dis, s1 = _timed(lambda: label_disagreement(fresh(), 10, progress=False))
    out.append(("label_disagreement(k=10) (with its kNN graph)", s1, dis.scores, None))
    dis50, s2 = _timed(lambda: label_disagreement(fresh(), 50, progress=False))
    out.append(("label_disagreement(k=50) (with its kNN graph)", s2, dis50.scores, None))
    cm, s3 = _timed(lambda: class_margin(fresh(), 10, progress=False))
    out.append(("class_margin(k=10)", s3, cm.scores, None))
    out.append(("label_probe self_confidence (3 folds)", s4, probe.score("self_confidence").scores,
                probe.issue_mask()))
    out.append(("label_probe margin (same probe)", s4, probe.score("margin").scores, None))
    pm, s6 = _timed(lambda: combine([probe.score("self_confidence"), probe.score("margin")]))
    out.append(("combine(probe self_confidence, probe margin)", s4 + s6, pm.scores, None))
    return out


def _cleanlab(x: np.ndarray, noisy: np.ndarray) -> list[Result]:
    if not (importlib.util.find_spec("cleanlab") and importlib.util.find_spec("sklearn")):
        print("    cleanlab skipped: not installed (pip install curriculum[bench])")
        return []
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs, secs = _timed(lambda: _cross_val_probs(x, noisy))
    quality, s2 = _timed(lambda: get_label_quality_scores(noisy, probs, method="self_confidence"))
    issues, s3 = _timed(lambda: find_label_issues(noisy, probs, n_jobs=1))
    print(f"    (cleanlab: {secs:.2f} s of it cross-validation, {s3:.2f} s find_label_issues)")
    return [("cleanlab self_confidence (5-fold sklearn LR)", secs + s2, 1.0 - quality, issues)]


__all__ = ["NOISE_RATE", "noise_sets", "add_noise", "auc", "noise_section"]
