"""plain_training.py turned into a curriculum: three added lines (marked +), nothing else changed.

    python examples/wrap_existing_loop.py [--steps 300]

The store embeds the training images (here: flattened pixels), knn_distance scores them, and
wrap() replaces only the sampling of the existing loader: easy (typical) images first, all
admitted after a root pacing of the whole run.
"""

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from curriculum.data import load_real
import curriculum as cl  # +

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=300)
args = ap.parse_args()
torch.manual_seed(0)
train, test = load_real(train=True), load_real(train=False)
x = torch.tensor(train.images[:20000], dtype=torch.float32).div(255).unsqueeze(1)
y = torch.from_numpy(train.labels[:20000])
train_set = TensorDataset(x, y)
loader = DataLoader(train_set, batch_size=128, shuffle=True, num_workers=0)
scores = cl.difficulty.knn_distance(cl.EmbeddingStore.from_model(torch.nn.Flatten(), train_set), k=10)  # +
loader = cl.wrap(loader, difficulty=scores, pacing=cl.pacing.Root(start=0.2, steps=args.steps))  # +
model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                            torch.nn.Flatten(), torch.nn.Linear(32 * (x.shape[-1] // 4) ** 2, 10))
opt = torch.optim.Adam(model.parameters(), lr=2e-3)
step = 0
while step < args.steps:
    for xb, yb in loader:
        loss = F.cross_entropy(model(xb), yb, reduction="none")
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        step += 1
        if step >= args.steps:
            break
xt = torch.tensor(test.images, dtype=torch.float32).div(255).unsqueeze(1)
with torch.no_grad():
    acc = (model(xt).argmax(1).numpy() == test.labels).mean()
print(f"test accuracy after {step} steps: {acc:.4f}")
