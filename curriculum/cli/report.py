"""Figures for a demo run, drawn from its ``results.json`` (``curriculum report RUN_DIR``)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

COLORS = {"uniform": "#4d4d4d", "curriculum": "#1f77b4", "anti-curriculum": "#d62728", "online hard": "#2ca02c",
          "cleaning": "#9467bd"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out: str, name: str, tight: bool = True) -> str:
    """Write ``fig`` to ``out/name`` (110 dpi), close it and return the path.

    Example:
        >>> fig = _plt().figure(); save_figure(fig, tmp_dir, "empty.png")  # doctest: +SKIP
    """
    if tight:
        fig.tight_layout()
    path = os.path.join(out, name)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def draw(run_dir: str) -> list[str]:
    """Redraw every figure of a finished run; returns the PNG paths."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"run_dir: no results.json in {run_dir!r} (run `curriculum demo --out {run_dir}` first)")
    with open(path) as f:
        res = json.load(f)
    return [_accuracy(res, run_dir), _pacing(res, run_dir), _difficulty(res, run_dir)]


def _accuracy(res: dict, out: str) -> str:
    plt = _plt()
    variants = list(res["variants"])
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4.2), squeeze=False)
    for ax, v in zip(axes[0], variants):
        for m, runs in res["variants"][v]["methods"].items():
            steps = runs[0]["checkpoints"]
            acc = np.array([r["test_accuracy"] for r in runs]) * 100
            mean = acc.mean(0)
            ax.plot(steps, mean, marker="o", label=m, color=COLORS.get(m))
            if len(runs) > 1:
                ax.fill_between(steps, acc.min(0), acc.max(0), alpha=0.15, color=COLORS.get(m))
        ax.set_title(res["variants"][v]["title"])
        ax.set_xlabel("training step")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    name = res["data"].split(" from ")[0]
    fig.suptitle(f"{name}: the same CNN and step budget per method; band = min-max over {res['seeds']} seed(s)")
    return save_figure(fig, out, "accuracy.png")


def _pacing(res: dict, out: str) -> str:
    plt = _plt()
    variants = list(res["variants"])
    fig, axes = plt.subplots(1, len(variants), figsize=(6 * len(variants), 4.2), squeeze=False)
    for ax, v in zip(axes[0], variants):
        vv = res["variants"][v]
        steps = np.arange(len(vv["competence"]))
        ax.plot(steps, vv["competence"], color="black", lw=2, label="competence c(t) (root pacing)")
        for m, runs in vv["methods"].items():
            drawn = np.array(runs[0]["drawn_rank"])
            w = max(1, len(drawn) // 40)
            smooth = np.convolve(drawn, np.ones(w) / w, mode="valid")
            ax.plot(np.arange(len(smooth)) + w // 2, smooth, color=COLORS.get(m), alpha=0.9,
                    label=f"{m}: mean difficulty rank drawn")
        ax.axhline(0.5, color="grey", ls=":", lw=1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("training step")
        ax.set_ylabel("competence / mean rank of drawn samples")
        ax.set_title(vv["title"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, out, "pacing.png")


def _difficulty(res: dict, out: str) -> str:
    plt = _plt()
    g = res["grid"]
    easy, hard = np.array(g["easiest"]), np.array(g["hardest"])
    n = len(easy)
    fig = plt.figure(figsize=(12, 5.2))
    ax = fig.add_axes([0.06, 0.12, 0.36, 0.78])
    scores = np.array(g["scores"])
    flipped = np.array(g["flipped"], bool)
    bins = np.linspace(scores.min(), scores.max(), 31)
    ax.hist(scores[~flipped], bins=bins, alpha=0.7, label="clean label")
    if flipped.any():
        ax.hist(scores[flipped], bins=bins, alpha=0.7, label="flipped label")
    ax.set_xlabel(g["score_name"] + " (higher = harder)")
    ax.set_ylabel("samples")
    ax.set_title(f"difficulty on {g['variant']}")
    ax.legend()
    cols = min(n, 8)
    rows = int(np.ceil(n / cols))
    for block, (imgs, labels, title) in enumerate(((easy, g["easiest_labels"], "easiest"),
                                                  (hard, g["hardest_labels"], "hardest"))):
        for i in range(n):
            r, c = divmod(i, cols)
            w = 0.52 / cols
            h = 0.36 / rows
            a = fig.add_axes([0.46 + c * w, 0.52 - block * 0.46 + (rows - 1 - r) * h, w * 0.95, h * 0.9])
            a.imshow(imgs[i], cmap="gray_r")
            a.set_xticks([])
            a.set_yticks([])
            a.set_title(str(labels[i]), fontsize=6, pad=1)
        fig.text(0.46, 0.93 - block * 0.46, f"{title} {n} (label shown above each image)", fontsize=10)
    return save_figure(fig, out, "difficulty.png", tight=False)


__all__ = ['COLORS', 'draw', 'save_figure']
