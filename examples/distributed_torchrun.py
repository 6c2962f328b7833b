"""Distributed curriculum with torchrun on the gloo backend (CPU).

    torchrun --nproc_per_node 2 examples/distributed_torchrun.py
    python examples/distributed_torchrun.py --spawn 2        # the same without torchrun

Every rank wraps the same DataLoader: the curriculum draw is sharded by rank (disjoint, equal
shares of one global draw), and ``feedback`` gathers every rank's per-sample losses so that all
ranks end with identical training-dynamics scores. A DDP model trains on the batches.
"""

import argparse
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import curriculum as cl
from curriculum.data import load_real


def main(rank: int | None = None, world: int | None = None) -> None:
    if rank is not None:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", "29533"))
    dist.init_process_group("gloo")
    r, w = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    ds = load_real()
    x = torch.tensor(ds.images[:8000], dtype=torch.float32).div(255).unsqueeze(1)
    y = torch.from_numpy(ds.labels[:8000])
    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(x[0].numel(), 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = cl.Recorder(len(y), 10, labels=y.numpy())
    scores = np.random.default_rng(0).random(len(y))  # any difficulty; here replaced by dynamics below
    loader = cl.wrap(DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True), difficulty=scores,
                     pacing=cl.pacing.Linear(0.3, 60), recorder=rec, rescore_every=20)
    drawn = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        for xb, yb in loader:
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, reduction="none")
            loader.feedback(loss=loss.detach(), logits=logits.detach())
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
            drawn += loader.last_indices.tolist()
    loader.wait_rescore()
    ema = torch.from_numpy(np.nan_to_num(rec.loss_ema, nan=-1.0))
    all_ema = [torch.zeros_like(ema) for _ in range(w)]
    dist.all_gather(all_ema, ema)
    same = all(torch.equal(all_ema[0], e) for e in all_ema)
    if r == 0:
        print(f"{w} ranks: each drew {len(drawn)} samples in 2 epochs; recorders identical on every rank: {same}; "
              f"samples with dynamics: {int(rec.seen.sum())} of {len(y)}")
    dist.destroy_process_group()


def _spawned(i: int, n: int) -> None:
    main(i, n)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--spawn", type=int, default=0, help="start N local processes instead of using torchrun")
    a = ap.parse_args()
    if a.spawn:
        torch.multiprocessing.spawn(_spawned, args=(a.spawn,), nprocs=a.spawn)
    else:
        main()
