"""A plain PyTorch training script (Fashion-MNIST, small CNN) - the "before" of wrap_existing_loop.py.

    python examples/plain_training.py [--steps 300]
"""

import argparse

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from curriculum.data import load_real

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=300)
args = ap.parse_args()
torch.manual_seed(0)
train, test = load_real(train=True), load_real(train=False)
x = torch.tensor(train.images[:20000], dtype=torch.float32).div(255).unsqueeze(1)
y = torch.from_numpy(train.labels[:20000])
train_set = TensorDataset(x, y)
loader = DataLoader(train_set, batch_size=128, shuffle=True, num_workers=0)
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
