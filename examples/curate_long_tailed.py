"""Curating an uncurated, long-tailed pool, then training on it (Fashion-MNIST).

    python examples/curate_long_tailed.py [--select 3000] [--steps 300] [--out runs/curate]

The pool: Fashion-MNIST long-tailed with rho = 100 (class 0 the head, class 9 the tail), plus
planted near-duplicates (10 light variations of each of 60 head images) and out-of-distribution
images (scikit-learn digits upscaled to 28x28, given random labels). Pixel-PCA embeddings
(or a briefly trained CNN's penultimate features, the default) go into an ``EmbeddingStore``;
``curate`` removes near-duplicates and selects a subset balanced
over a hierarchical clustering. A small CNN is trained on the curated subset and on a random
subset of the same size; both are tested on the balanced test set. Prints a table (per-class
accuracy, tail share, duplicates and OOD kept) and writes a bar chart.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F

import curriculum as cl
from curriculum.curation import curate, deduplicate
from curriculum.data import load_digits, load_fashion_mnist, long_tailed, pixel_pca


def build_pool(seed: int = 0):
    try:  # the planted out-of-distribution images are digits: the pool itself must be Fashion-MNIST
        tr = load_fashion_mnist(train=True)
    except FileNotFoundError as exc:
        raise SystemExit(f"this example needs Fashion-MNIST ({exc}); run 'make data' or set CURRICULUM_FMNIST") from None
    rng = np.random.default_rng(seed)
    idx = long_tailed(tr.labels, rho=100.0, seed=seed)
    images, labels = tr.images[idx], tr.labels[idx]
    kind = np.zeros(len(labels), np.int64)  # 0 = real, 1 = planted duplicate, 2 = out-of-distribution
    src = rng.choice(np.flatnonzero(labels == 0), 60, replace=False)
    dups = []
    for i in src:
        for _ in range(10):
            im = images[i].astype(np.int16) + rng.integers(-6, 7, images[i].shape)
            dups.append(np.clip(np.roll(im, rng.integers(-1, 2), axis=1), 0, 255).astype(np.uint8))
    d = load_digits()
    pick = rng.choice(len(d.labels), 600, replace=False)
    ood = np.stack([np.pad(np.kron(im, np.ones((3, 3), np.uint8)), 2) for im in d.images[pick]])
    images = np.concatenate([images, np.stack(dups), ood])
    labels = np.concatenate([labels, np.zeros(len(dups), np.int64), rng.integers(0, 10, len(ood))])
    kind = np.concatenate([kind, np.ones(len(dups), np.int64), np.full(len(ood), 2)])
    return images, labels, kind


def train_eval(images, labels, test, steps: int, seed: int = 0):
    torch.manual_seed(seed)
    x = torch.tensor(images, dtype=torch.float32).div(255).unsqueeze(1)
    y = torch.from_numpy(labels)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(32 * 49, 10))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        b = rng.choice(len(y), min(128, len(y)), replace=False)
        loss = F.cross_entropy(model(x[b]), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt = torch.tensor(test.images, dtype=torch.float32).div(255).unsqueeze(1)
    with torch.no_grad():
        pred = model(xt).argmax(1).numpy()
    return np.array([(pred[test.labels == c] == c).mean() for c in range(10)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--select", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="runs/curate")
    ap.add_argument("--embed", choices=("cnn", "pca"), default="cnn",
                    help="embedding: a briefly trained CNN's penultimate layer, or pixel PCA")
    a = ap.parse_args()
    images, labels, kind = build_pool()
    test = load_fashion_mnist(train=False)
    if a.embed == "cnn":  # penultimate features of a CNN trained briefly on the (uncurated) pool
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                  torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                  torch.nn.Flatten(), torch.nn.Linear(32 * 49, 64), torch.nn.ReLU())
        head = torch.nn.Linear(64, 10)
        opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=2e-3)
        xp = torch.tensor(images, dtype=torch.float32).div(255).unsqueeze(1)
        yp = torch.from_numpy(labels)
        rng = np.random.default_rng(1)
        for _ in range(200):
            b = rng.choice(len(yp), 128, replace=False)
            loss = F.cross_entropy(head(net(xp[b])), yp[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        store0 = cl.EmbeddingStore.from_model(net, torch.utils.data.TensorDataset(xp, yp), batch_size=1000,
                                              progress=False)
        z = store0.vectors()
    else:
        z = pixel_pca(images, dim=64)
    store = cl.EmbeddingStore(64, metric="cosine")
    store.add(z, labels=labels)
    print(f"pool: {len(labels)} images ({(kind == 1).sum()} planted duplicates, {(kind == 2).sum()} out-of-distribution); "
          f"class counts {np.bincount(labels[kind == 0], minlength=10).tolist()}")
    # near-duplicates are judged in pixel space; the balance in the embedding's space
    pixel_store = store
    if a.embed == "cnn":
        pixel_store = cl.EmbeddingStore(64, metric="cosine")
        pixel_store.add(pixel_pca(images, dim=64), labels=labels)
    survivors = deduplicate(pixel_store, 0.98)
    curated = curate(store, a.select, ids=survivors, seed=0)
    # a user who hand-checked 500 random pool images passes the good ones as the in-distribution reference
    checked = np.random.default_rng(1).choice(np.intersect1d(np.flatnonzero(kind == 0), survivors), 500, replace=False)
    with_ref = curate(store, a.select, ids=survivors, seed=0, reference=checked)
    rand = np.sort(np.random.default_rng(0).choice(len(labels), a.select, replace=False))
    rows = {}
    for name, sel in (("random", rand), ("curated", curated), ("+reference", with_ref)):
        acc = train_eval(images[sel], labels[sel], test, a.steps)
        real = sel[kind[sel] == 0]
        rows[name] = {"tail_share": float(np.isin(labels[real], range(5, 10)).mean()),
                      "duplicates": int((kind[sel] == 1).sum()), "ood": int((kind[sel] == 2).sum()),
                      "per_class": acc, "mean": float(acc.mean()), "tail_acc": float(acc[5:].mean())}
    print(f"\n{'selection':10s} {'size':>5s} {'tail share':>10s} {'dups':>5s} {'ood':>5s} {'mean acc':>9s} "
          f"{'tail acc (5-9)':>15s}")
    for name, r in rows.items():
        print(f"{name:10s} {a.select:5d} {r['tail_share']:10.3f} {r['duplicates']:5d} {r['ood']:5d} "
              f"{r['mean'] * 100:9.2f} {r['tail_acc'] * 100:15.2f}")
    print("per-class accuracy (%), class 0 = head ... 9 = tail:")
    for name, r in rows.items():
        print(f"  {name:8s} " + " ".join(f"{v * 100:5.1f}" for v in r["per_class"]))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    w = 0.4
    for j, (name, r) in enumerate(rows.items()):
        ax.bar(np.arange(10) + (j - 0.5) * w, r["per_class"] * 100, w, label=f"{name} (mean {r['mean'] * 100:.1f}%)")
    ax.set_xticks(range(10))
    ax.set_xlabel("class (0 = head ... 9 = tail of the long-tailed pool)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{a.select} of {len(labels)} pool images: curated vs random selection")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    os.makedirs(a.out, exist_ok=True)
    p = os.path.join(a.out, "curate_per_class.png")
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    print(f"wrote {p}")


if __name__ == "__main__":
    main()
