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
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import rankdata

from .data import load_real, pixel_pca, symmetric_noise
from ..difficulty import (class_margin, combine, knn_distance, label_disagreement, label_entropy, label_noise,
                          prototype_distance)
from ..pacing import Root
from .._util.progress import progress_bar
from ..sampling.sampler import CurriculumSampler
from ..store import EmbeddingStore

if TYPE_CHECKING:  # torch is imported where the training runs
    import torch


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


def _cnn(side: int) -> "torch.nn.Module":
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * (side // 4) ** 2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def _accuracy(model: Any, x: "torch.Tensor", y: np.ndarray) -> tuple[float, np.ndarray]:
    import torch

    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 2000]).argmax(1) for i in range(0, len(x), 2000)]).cpu().numpy()
    model.train()
    per_class = np.array([(pred[y == c] == c).mean() if (y == c).any() else np.nan for c in range(10)])
    return float((pred == y).mean()), per_class


def _train_one(method: str, x: "torch.Tensor", y: "torch.Tensor", difficulty: Any, xt: "torch.Tensor",
               yt: np.ndarray, steps: int, seed: int, checkpoints: list[int], start: float,
               flipped: np.ndarray | None = None, device: str = "cpu", exclude: np.ndarray | None = None) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    from ..difficulty import Recorder
    from ..sampling.loader import wrap
    from ..pacing import Constant

    torch.manual_seed(seed)
    model = _cnn(x.shape[-1]).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    base = DataLoader(TensorDataset(x, y), batch_size=128, shuffle=True)
    ranks = difficulty.rank()
    recorder = None
    if method == "uniform":
        loader = wrap(base, difficulty=difficulty, pacing=Constant(1.0), seed=seed)
    elif method == "curriculum":
        loader = wrap(base, difficulty=difficulty, pacing=Root(start=start, steps=int(0.8 * steps)), seed=seed)
    elif method == "cleaning":  # uniform over everything but the flagged rows
        loader = wrap(base, difficulty=difficulty, pacing=Constant(1.0), seed=seed, exclude=exclude)
    elif method == "anti-curriculum":
        loader = wrap(base, difficulty=difficulty, pacing=Root(start=start, steps=int(0.8 * steps)), strategy="anti",
                      seed=seed)
    else:  # online hard-sample selection: rank-based selection on the loss EMA, rescored as training goes
        recorder = Recorder(len(x), 10, labels=y.numpy())
        loader = wrap(base, recorder=recorder, pacing=Constant(1.0), strategy="rank", pressure=20.0, seed=seed,
                      rescore_every=10, rescore="loss_ema")
    curve, drawn = [], []
    step = 0
    t0 = time.perf_counter()
    while step < steps:
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, reduction="none")
            if recorder is not None:
                loader.feedback(loss=loss.detach(), logits=logits.detach())
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
            drawn.append(float(ranks[loader.last_indices.numpy()].mean()))
            step += 1
            if step in checkpoints:
                curve.append(_accuracy(model, xt, yt))
            if step >= steps:
                break
    out = {"test_accuracy": [c[0] for c in curve], "per_class": curve[-1][1].tolist(), "checkpoints": checkpoints,
           "seconds": time.perf_counter() - t0, "drawn_rank": drawn}
    if recorder is not None and flipped is not None and flipped.any():
        # how well the training dynamics flag the flipped labels (samples the run has seen)
        seen = recorder.seen
        out["dynamics_auc_flipped"] = {name: roc_auc(recorder.difficulty(name).scores[seen], flipped[seen])
                                       for name in ("loss_ema", "aum", "forgetting", "el2n")}
    return out


def _variant_data(images: np.ndarray, labels: np.ndarray, noisy_lt: bool, n_train: int | None,
                  seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from .data import long_tailed

    idx = np.arange(len(labels))
    if noisy_lt:
        idx = long_tailed(labels, rho=100.0, seed=seed)
    if n_train is not None and len(idx) > n_train:
        idx = np.sort(np.random.default_rng(seed).choice(idx, n_train, replace=False))
    y = labels[idx]
    flipped = np.zeros(len(idx), bool)
    if noisy_lt:
        y, flipped = symmetric_noise(y, _NOISE, num_classes=10, seed=seed)
    return idx, y, flipped


def run_demo(data: str | None = None, out: str = "runs/demo", quick: bool = False, seeds: int | None = None,
             device: str = "cpu") -> dict:
    """Train the same CNN under the same step budget with uniform sampling, a curriculum
    (label-disagreement difficulty from a pixel-PCA store + root pacing), an anti-curriculum and
    online hard-sample selection (rank-based on the loss EMA) and the cleaning mode (uniform over all
    but the hardest 20% by :func:`~curriculum.difficulty.label_noise` - the injected noise rate, given;
    nothing left out on the clean set), on the clean set and on a
    noisy (20% symmetric) long-tailed (rho = 100) variant. Writes ``results.json`` and the
    figures to ``out`` and prints the results table. The table reports whatever was measured.
    ``device`` runs the CNN there (``"cuda"``); sampling, feedback and scores stay on the CPU.
    """
    import torch

    from .report import draw

    dev = _device(device)
    n_seeds = seeds or (1 if quick else 3)
    steps = 120 if quick else 500
    source, train_images, train_labels, test_images, test_labels = _split(data, quick)
    side = train_images.shape[-1]
    print(f"data: {source} ({len(train_labels)} train / {len(test_labels)} test images, {side}x{side}); "
          f"{steps} steps of 128 per run, {n_seeds} seed(s)")
    xt = torch.tensor(test_images, dtype=torch.float32).div(255).unsqueeze(1).to(dev)
    checkpoints = sorted({max(1, steps * q // 4) for q in (1, 2, 3, 4)})
    results: dict[str, Any] = {"data": source, "steps": steps, "seeds": n_seeds, "quick": quick,
                               "device": str(dev), "variants": {}, "grid": None}
    with progress_bar(total=2 * len(_METHODS) * n_seeds, desc="demo runs") as bar:
        for variant, noisy_lt, title in (("clean", False, "clean"),
                                         ("noisy-lt", True, "20% label noise, long-tailed (rho=100)")):
            idx, y, flipped = _variant_data(train_images, train_labels, noisy_lt, 6000 if quick else None, 0)
            store = _pixel_store(train_images[idx], y)
            diff = label_disagreement(store, k=10)
            # cleaning: leave out the hardest share by label_noise, the share given (the injected rate);
            # the probe's own issue mask (confident learning) flags 26% here, 73% of the tail classes' rows
            share = _NOISE if noisy_lt else 0.0
            flagged = label_noise(store, progress=False).hardest(share) if share else np.zeros(0, int)
            x = torch.tensor(train_images[idx], dtype=torch.float32).div(255).unsqueeze(1)
            vres: dict[str, Any] = {"title": f"{title} ({len(idx)} train)", "n_train": int(len(idx)),
                                    "class_counts": np.bincount(y, minlength=10).tolist(),
                                    "competence": [Root(_START, int(0.8 * steps))(s) for s in range(steps)],
                                    "auc_flipped": roc_auc(diff.scores, flipped) if flipped.any() else None,
                                    "cleaning_flagged": int(len(flagged)),
                                    "cleaning_precision": float(flipped[flagged].mean()) if len(flagged) else None,
                                    "methods": {}}
            for m in _METHODS:
                vres["methods"][m] = []
                for sd in range(n_seeds):
                    vres["methods"][m].append(_train_one(m, x, torch.from_numpy(y), diff, xt, test_labels, steps, sd,
                                                         checkpoints, _START, flipped, str(dev), flagged))
                    bar.update(1)
            results["variants"][variant] = vres
            if noisy_lt:
                results["grid"] = _grid(diff, title, flipped, train_images[idx], y)
    results["table"] = _print_table(results)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f)
    pngs = draw(out)
    print("\nwrote " + ", ".join([os.path.join(out, "results.json")] + pngs))
    return results


_METHODS = ("uniform", "curriculum", "anti-curriculum", "online hard", "cleaning")
_START = 0.2  # the root pacing's starting competence
_NOISE = 0.2  # the noisy variant's symmetric label-noise rate


def _device(device: str) -> Any:
    import torch

    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, TypeError, AssertionError) as exc:
        raise ValueError(f"device: expected an available torch device such as 'cpu' or 'cuda', got {device!r} "
                         f"({exc})") from None
    return dev


def _split(data: str | None, quick: bool) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(source, train images, train labels, test images, test labels)``: the data's own test split,
    or a fixed held-out third when it has none; ``quick`` keeps a fixed 3,000 of the test set."""
    train = load_real(data, train=True)
    try:
        test = load_real(data, train=False)
    except FileNotFoundError:
        test = None
    if test is None or test.source == train.source:  # digits: hold out a fixed third
        perm = np.random.default_rng(0).permutation(len(train.labels))
        te_idx, tr_idx = perm[:len(perm) // 3], perm[len(perm) // 3:]
        split = (train.images[tr_idx], train.labels[tr_idx], train.images[te_idx], train.labels[te_idx])
    else:
        split = (train.images, train.labels, test.images, test.labels)
    tr_x, tr_y, te_x, te_y = split
    if quick:  # a fixed share of the test set keeps --quick fast
        keep = np.sort(np.random.default_rng(0).permutation(len(te_y))[:3000])
        te_x, te_y = te_x[keep], te_y[keep]
    return train.source, tr_x, tr_y, te_x, te_y


def _pixel_store(images: np.ndarray, labels: np.ndarray) -> EmbeddingStore:
    side = images.shape[-1]
    z = pixel_pca(images, dim=min(32, side * side), seed=0)
    store = EmbeddingStore(z.shape[1], metric="cosine")
    store.add(z, labels=labels)
    return store


def _grid(diff: Any, title: str, flipped: np.ndarray, images: np.ndarray, y: np.ndarray) -> dict:
    """The easiest and hardest 16 images of a variant, for the report's figure."""
    o = diff.order()
    return {"variant": title, "score_name": diff.name, "scores": diff.scores.round(4).tolist(),
            "flipped": flipped.astype(int).tolist(),
            "easiest": images[o[:16]].tolist(), "easiest_labels": y[o[:16]].tolist(),
            "hardest": images[o[::-1][:16]].tolist(), "hardest_labels": y[o[::-1][:16]].tolist()}


def _print_table(res: dict) -> str:
    lines = []
    for v, vv in res["variants"].items():
        lines.append(f"\n{vv['title']}" + (f" - label_disagreement ROC-AUC for flipped labels: {vv['auc_flipped']:.3f}"
                                              if vv.get("auc_flipped") is not None else ""))
        ck = next(iter(vv["methods"].values()))[0]["checkpoints"]
        head = f"{'method':16s}" + "".join(f"{'acc@' + str(c):>14s}" for c in ck) + f"{'seconds':>9s}"
        if v == "noisy-lt":
            head += f"{'tail acc (5-9)':>16s}"
        lines.append(head)
        base = None
        for m, runs in vv["methods"].items():
            acc = np.array([r["test_accuracy"] for r in runs]) * 100
            cells = "".join(f"{a:8.2f}+-{s:4.2f}" for a, s in zip(acc.mean(0), acc.std(0)))
            row = f"{m:16s}{cells}{np.mean([r['seconds'] for r in runs]):9.1f}"
            if v == "noisy-lt":
                pc = np.array([r["per_class"] for r in runs]) * 100
                row += f"{np.nanmean(pc[:, 5:]):16.2f}"
            lines.append(row)
            if m == "uniform":
                base = acc.mean(0)[-1]
        if base is not None:
            for m, runs in vv["methods"].items():
                if m != "uniform":
                    d = np.mean([r["test_accuracy"][-1] for r in runs]) * 100 - base
                    lines.append(f"  {m} vs uniform at the last checkpoint: {d:+.2f} points"
                                 + ("" if d > 0 else "  (no gain)"))
        if vv.get("cleaning_flagged") is not None:
            prec = vv.get("cleaning_precision")
            lines.append(f"  cleaning: {vv['cleaning_flagged']} rows left out (hardest by label_noise)"
                         + (f", {prec:.0%} of them flipped" if prec is not None and v == "noisy-lt" else ""))
        dyn = [r.get("dynamics_auc_flipped") for r in vv["methods"].get("online hard", []) if r.get("dynamics_auc_flipped")]
        if dyn:
            lines.append("  training dynamics of the online run, ROC-AUC for flipped labels: " + ", ".join(
                f"{k} {np.mean([d[k] for d in dyn]):.3f}" for k in dyn[0]))
        if v == "noisy-lt":
            lines.append("  per-class accuracy (%), class 0 = head ... 9 = tail:")
            for m, runs in vv["methods"].items():
                pc = np.nanmean(np.array([r["per_class"] for r in runs]) * 100, axis=0)
                lines.append(f"  {m:16s}" + " ".join(f"{p:5.1f}" for p in pc))
    text = "\n".join(lines)
    print(text)
    return text


__all__ = ['roc_auc', 'scoring_report', 'run_demo']
