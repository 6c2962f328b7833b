"""Wrapped loader throughput against the same plain DataLoader (same dataset, batch, workers).

    python benchmarks/loader.py [--batches 200] [--workers 2] [--rounds 5] [--out bench-results]

The dataset is Fashion-MNIST (digits when absent) with a per-item tensor transform, the usual
shape of an image pipeline. Rounds are interleaved (plain, wrapped, wrapped+feedback,
wrapped+feedback+background rescoring, ...) and the median batches/s of each is reported with
its ratio to plain. Goal: the wrapped loader keeps >= 97% of the plain loader's throughput.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, print_table, write_json  # noqa: E402

import curriculum as cl  # noqa: E402
from curriculum import pacing  # noqa: E402
from curriculum.data import load_real  # noqa: E402


class Images(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.images[i]).float().div_(255.0).sub_(0.5).div_(0.5).unsqueeze(0)
        return x, int(self.labels[i])


STEP = {"model": None, "opt": None}


def consume(loader, n_batches: int, feedback: bool, train: bool = False) -> float:
    """Batches per second of a loop that computes a per-sample value from each batch (the same
    work in every variant) and, for the feedback variants, reports it to the wrapped loader.
    With ``train``, the per-sample value is the loss of a real CNN training step."""
    t = time.perf_counter()
    done = 0
    while done < n_batches:
        for x, y in loader:
            if train:
                loss = torch.nn.functional.cross_entropy(STEP["model"](x), y, reduction="none")
                STEP["opt"].zero_grad()
                loss.mean().backward()
                STEP["opt"].step()
                per_sample = loss.detach()
            else:
                per_sample = x.mean(dim=(1, 2, 3))
            if feedback:
                loader.feedback(loss=per_sample)
            done += 1
            if done >= n_batches:
                break
    return n_batches / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default="bench-results")
    a = ap.parse_args()
    ds = load_real()
    data = Images(ds.images, ds.labels)
    n = len(data)
    scores = np.random.default_rng(0).random(n)

    def plain():
        return DataLoader(data, batch_size=a.batch_size, shuffle=True, num_workers=a.workers,
                          persistent_workers=a.workers > 0)

    def wrapped(recorder=False, rescore=False):
        rec = cl.Recorder(n, 10) if recorder else None
        return cl.wrap(plain(), difficulty=scores, pacing=pacing.Root(0.2, 1000), recorder=rec,
                       rescore_every=25 if rescore else None)

    torch.manual_seed(0)
    STEP["model"] = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * (ds.images.shape[-1] // 4) ** 2, 10))
    STEP["opt"] = torch.optim.SGD(STEP["model"].parameters(), lr=0.01)
    variants = {  # name: (make loader, feedback, real training step, baseline name)
        "plain DataLoader": (plain, False, False, None),
        "wrap (root pacing)": (wrapped, False, False, "plain DataLoader"),
        "wrap + feedback(loss)": (lambda: wrapped(recorder=True), True, False, "plain DataLoader"),
        "wrap + feedback + rescore every 25": (lambda: wrapped(recorder=True, rescore=True), True, False,
                                               "plain DataLoader"),
        "plain + CNN training step": (plain, False, True, None),
        "wrap + feedback + rescore + CNN step": (lambda: wrapped(recorder=True, rescore=True), True, True,
                                                 "plain + CNN training step"),
    }
    loaders = {k: v[0]() for k, v in variants.items()}
    for k, (_, fb, tr, _) in variants.items():  # warm-up: start workers
        consume(loaders[k], 5, fb, tr)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(a.rounds):
        for k, (_, fb, tr, _) in variants.items():
            rates[k].append(consume(loaders[k], a.batches // (4 if tr else 1), fb, tr))
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k}={v[-1]:.1f}" for k, v in rates.items()), flush=True)
    rows = []
    for k, v in rates.items():
        ref = variants[k][3] or k
        base = float(np.median(rates[ref]))
        rows.append({"loader": k, "batches_per_s": float(np.median(v)), "ratio_to_plain": float(np.median(v)) / base,
                     "spread": f"{min(v):.1f}-{max(v):.1f}"})
    text = print_table(rows, ["loader", "batches_per_s", "ratio_to_plain", "spread"],
                       f"{ds.source}: batch {a.batch_size}, {a.workers} workers, median of {a.rounds} rounds x "
                       f"{a.batches} batches")
    write_json(os.path.join(a.out, "loader.json"), {"machine": machine(), "rows": rows, "table": text})


if __name__ == "__main__":
    main()
