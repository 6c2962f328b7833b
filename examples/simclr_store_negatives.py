"""Self-supervised (SimCLR-style) training with store negatives vs in-batch negatives.

    python examples/simclr_store_negatives.py [--steps 200] [--train 10000]

No labels are used for training. Two runs with the same seed and steps:

* in-batch: the usual NT-Xent/InfoNCE, the other 2B - 2 views of the batch as negatives;
* store: the batch negatives plus, per anchor, its 16 nearest samples of the *whole* training set
  from an ``EmbeddingStore`` (label-free ``HardNegativeMiner``, skipping near-duplicates above
  cosine 0.95, which in SSL are the same object) - their stored embeddings serve as a memory bank,
  without gradient, re-embedded every 50 steps - weighted by the hard-negative loss of
  Robinson et al. 2021 (``beta=0.5``, ``tau_plus=0.1``).

Quality is the kNN accuracy (k=10, cosine) of the learned embedding: test images classified
by the labels of their nearest training images (labels are used only here).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import curriculum as cl
from curriculum.contrastive import hard_negative_nce
from curriculum.data import load_real
from curriculum.mining import HardNegativeMiner
from curriculum.neighbourhood import IndexRefresher


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random crop (pad 3, shift), horizontal flip and brightness jitter, batched."""
    b = x.shape[0]
    pad = F.pad(x, (3, 3, 3, 3))
    dx, dy = torch.randint(0, 7, (2,), generator=g).tolist()
    out = pad[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    flip = torch.rand(b, generator=g) < 0.5
    out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return (out * (0.6 + 0.8 * torch.rand(b, 1, 1, 1, generator=g))).clamp(0, 1)


class Encoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.LazyLinear(128), torch.nn.ReLU(), torch.nn.Linear(128, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


def knn_accuracy(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray, xt: torch.Tensor, yt: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        z = torch.cat([model(x[i:i + 1000]) for i in range(0, len(x), 1000)])
        zt = torch.cat([model(xt[i:i + 1000]) for i in range(0, len(xt), 1000)])
    model.train()
    nb = (zt @ z.T).topk(10, dim=1).indices.numpy()
    votes = np.apply_along_axis(lambda r: np.bincount(r, minlength=10), 1, y[nb])
    return float((votes.argmax(1) == yt).mean())


def train(method: str, x: torch.Tensor, steps: int, seed: int = 0) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = Encoder()
    model(x[:2])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    t = 0.5
    data = TensorDataset(x)
    if method == "store":
        store = cl.EmbeddingStore.from_model(model, data, batch_size=1000, progress=False, metric="cosine", step=0)
        miner = HardNegativeMiner(store, k=16, duplicate_threshold=0.95)
        refresher = IndexRefresher(store, model, data, every_steps=50, batch_size=1000, background=False)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = rng.choice(len(x), 128, replace=False)
        z1, z2 = model(augment(x[idx], g)), model(augment(x[idx], g))
        b = len(idx)
        z = torch.cat([z1, z2])
        sim = z @ z.T / t
        sim.fill_diagonal_(-torch.inf)
        target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
        if method == "in-batch":
            loss = F.cross_entropy(sim, target)
        else:
            neg_ids = miner.negatives(idx).ids                     # (B, 16) whole-dataset neighbours
            neg_ids = np.where(neg_ids >= 0, neg_ids, idx[:, None])
            # their stored embeddings act as a memory bank (no gradient), refreshed every 50 steps
            zneg = torch.from_numpy(store.vectors(neg_ids.ravel())).reshape(b, 16, -1)
            inbatch = torch.stack([torch.cat([z1[torch.arange(b) != i], z2[torch.arange(b) != i]]) for i in range(b)])
            negs = torch.cat([inbatch, zneg], dim=1)
            loss = hard_negative_nce(z1, z2, negs, temperature=t, beta=0.5, tau_plus=0.1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if method == "store":
            refresher.step(step + 1)
    return model, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--train", type=int, default=10000)
    a = ap.parse_args()
    tr, te = load_real(train=True), load_real(train=False)
    x = torch.tensor(tr.images[: a.train], dtype=torch.float32).div(255).unsqueeze(1)
    xt = torch.tensor(te.images[:5000], dtype=torch.float32).div(255).unsqueeze(1)
    print(f"{tr.source}: {len(x)} unlabelled training images, kNN accuracy on {len(xt)} test images")
    print(f"{'negatives':10s} {'kNN accuracy (k=10)':>20s} {'seconds':>8s}")
    for method in ("in-batch", "store"):
        model, secs = train(method, x, a.steps)
        acc = knn_accuracy(model, x, tr.labels[: a.train], xt, te.labels[:5000])
        print(f"{method:10s} {acc:20.4f} {secs:8.1f}", flush=True)


if __name__ == "__main__":
    main()
