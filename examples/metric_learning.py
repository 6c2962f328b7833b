"""Metric learning with global hard negatives vs in-batch batch-hard mining (Fashion-MNIST).

    python examples/metric_learning.py [--steps 300] [--train 12000]

A small CNN embeds images (64-d, unit norm) and is trained with a triplet loss on classes 0-4;
retrieval recall@1 is measured on the *held-out* classes 5-9 of the test set. Two runs with the
same budget of steps and seed:

* in-batch: ``BatchHardMiner`` - hardest positive and negative inside each batch of 128;
* global: ``HardNegativeMiner`` over an ``EmbeddingStore`` of the whole training set - for each
  anchor the 5 nearest other-class samples of the *whole dataset* are fetched and re-embedded
  (the hardest of them is used), the store being re-embedded every 50 steps (ANCE-style
  ``IndexRefresher``, here in the foreground so the run is deterministic).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import curriculum as cl
from curriculum.data import load_real
from curriculum.mining import BatchHardMiner, HardNegativeMiner
from curriculum.neighbourhood import IndexRefresher


def encoder() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.LazyLinear(64))


class Normed(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


def recall_at_1(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        z = torch.cat([model(x[i:i + 1000]) for i in range(0, len(x), 1000)])
    model.train()
    s = z @ z.T
    s.fill_diagonal_(-2.0)
    return float((y[s.argmax(1).numpy()] == y).mean())


def train(method: str, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: np.ndarray, steps: int,
          seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = Normed(encoder())
    model(x[:2])  # materialise the lazy layer
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    margin = 0.2
    data = TensorDataset(x, y)
    store = miner = refresher = None
    if method == "global":
        store = cl.EmbeddingStore.from_model(model, data, batch_size=1000, progress=False, metric="cosine", step=0)
        miner = HardNegativeMiner(store, k=5)
        refresher = IndexRefresher(store, model, data, every_steps=50, batch_size=1000, background=False)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = rng.choice(len(x), 128, replace=False)
        z = model(x[idx])
        if method == "in-batch":
            a, p, n = BatchHardMiner("cosine")(z.detach(), y[idx])
            za, zp, zn = z[a], z[p], z[n]
        else:
            a, p, _ = BatchHardMiner("cosine")(z.detach(), y[idx])
            neg = miner.negatives(idx[a.numpy()]).ids  # (B, 5) dataset ids from the whole store
            ok = (neg >= 0).all(1)
            a, p, neg = a[ok], p[ok], neg[ok]
            zneg = model(x[torch.from_numpy(neg.ravel())]).reshape(len(a), 5, -1)
            za, zp = z[a], z[p]
            hardest = (za[:, None, :] * zneg).sum(-1).argmax(1)
            zn = zneg[torch.arange(len(a)), hardest]
        loss = F.relu((1 - (za * zp).sum(1)) - (1 - (za * zn).sum(1)) + margin).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if refresher is not None:
            refresher.step(step + 1)
    return {"method": method, "recall@1": recall_at_1(model, xt, yt), "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train", type=int, default=12000)
    a = ap.parse_args()
    tr, te = load_real(train=True), load_real(train=False)
    seen = np.flatnonzero(tr.labels < 5)[: a.train]
    held = np.flatnonzero(te.labels >= 5)
    x = torch.from_numpy(tr.images[seen]).float().div(255).unsqueeze(1)
    y = torch.from_numpy(tr.labels[seen])
    xt = torch.from_numpy(te.images[held]).float().div(255).unsqueeze(1)
    print(f"{tr.source}: train {len(seen)} images of classes 0-4, retrieval on {len(held)} test images of classes 5-9")
    results = [train(m, x, y, xt, te.labels[held], a.steps) for m in ("in-batch", "global")]
    print(f"{'mining':10s} {'recall@1 (held-out classes)':>28s} {'seconds':>8s}")
    for r in results:
        print(f"{r['method']:10s} {r['recall@1']:28.4f} {r['seconds']:8.1f}")


if __name__ == "__main__":
    main()
