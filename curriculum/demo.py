"""Demo jobs on real data (Fashion-MNIST when found, else scikit-learn digits).

:func:`scoring_report` embeds the training images by pixel PCA, flips a share of the labels
(symmetric noise, fixed seed), builds the faiss store and scores every sample with each
geometry score; it reports how well each score ranks the flipped labels as hard (ROC-AUC) and
what a root-paced curriculum sampler draws as training progresses.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
from scipy.stats import rankdata

from .data import load_real, pixel_pca, symmetric_noise
from .difficulty import class_margin, combine, knn_distance, label_disagreement, label_entropy, prototype_distance
from .pacing import Root
from .progress import progress_bar
from .sampling import CurriculumSampler
from .store import EmbeddingStore


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for detecting ``positive`` (Mann-Whitney, ties averaged)."""
    r = rankdata(score)
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((r[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def scoring_report(data: str | None = None, k: int = 10, noise: float = 0.2, dim: int = 64,
                   limit: int | None = None, seed: int = 0, out: str | None = None) -> dict[str, Any]:
    """Score a real dataset with every geometry score; print and return the report."""
    ds = load_real(data)
    images, labels = ds.images, ds.labels
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    print(f"data: {ds.source}, {len(labels)} images")
    t0 = time.perf_counter()
    z = pixel_pca(images, dim=min(dim, images[0].size), seed=seed)
    noisy, flipped = symmetric_noise(labels, noise, num_classes=int(labels.max()) + 1, seed=seed)
    store = EmbeddingStore(z.shape[1], metric="cosine")
    store.add(z, labels=noisy)
    t_store = time.perf_counter() - t0
    scorers = {
        f"knn_distance(k={k})": lambda: knn_distance(store, k),
        f"label_disagreement(k={k})": lambda: label_disagreement(store, k),
        f"label_entropy(k={k})": lambda: label_entropy(store, k),
        f"class_margin(k={k})": lambda: class_margin(store, k),
        "prototype_distance(10)": lambda: prototype_distance(store, 10, seed=seed),
    }
    rows, scores = [], {}
    with progress_bar(total=len(scorers), desc="scoring") as bar:
        for name, fn in scorers.items():
            t = time.perf_counter()
            d = fn()
            scores[name] = d
            rows.append({"score": name, "seconds": time.perf_counter() - t,
                         "auc_flipped": roc_auc(d.scores, flipped)})
            bar.update(1)
    fused = combine([scores[f"label_disagreement(k={k})"], scores[f"class_margin(k={k})"]])
    rows.append({"score": "combine(disagreement, margin)", "seconds": 0.0, "auc_flipped": roc_auc(fused.scores, flipped)})
    print(f"\nstore: {len(store)} x {store.dim} ({store.active_index}), built in {t_store:.1f} s; "
          f"{noise:.0%} labels flipped")
    print(f"{'score':34s} {'seconds':>8s} {'ROC-AUC (flipped = hard)':>26s}")
    for r in rows:
        print(f"{r['score']:34s} {r['seconds']:8.2f} {r['auc_flipped']:26.3f}")
    # what a curriculum draws: mean difficulty rank and share of flipped labels per stage
    d = scores[f"label_disagreement(k={k})"]
    steps = 400
    sampler = CurriculumSampler(d, Root(start=0.1, steps=steps), batch_size=128, seed=seed,
                                num_samples=128 * steps)
    idx = sampler.epoch_indices(0).reshape(steps, 128)
    ranks = d.rank()
    stages = []
    print(f"\ncurriculum (Root pacing, start 0.1, {steps} steps of 128) drawing by label_disagreement:")
    print(f"{'steps':>12s} {'competence':>11s} {'mean rank':>10s} {'flipped share':>14s}")
    for a in range(0, steps, steps // 4):
        b = a + steps // 4
        sel = idx[a:b].ravel()
        st = {"steps": f"{a}-{b}", "competence": sampler.pacing(a), "mean_rank": float(ranks[sel].mean()),
              "flipped_share": float(flipped[sel].mean())}
        stages.append(st)
        print(f"{st['steps']:>12s} {st['competence']:11.3f} {st['mean_rank']:10.3f} {st['flipped_share']:14.3f}")
    report = {"data": ds.source, "n": int(len(labels)), "noise": noise, "k": k, "scores": rows, "stages": stages}
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "scores.json"), "w") as f:
            json.dump(report, f, indent=2)
        print(f"\nwrote {os.path.join(out, 'scores.json')}")
    return report


def run_demo(data: str | None = None, out: str = "runs/demo", quick: bool = False, seeds: int | None = None) -> dict:
    """The main job. Until the training comparison lands this runs the real scoring report."""
    return scoring_report(data=data, limit=10_000 if quick else None, out=out)
