"""The embedding store sharded over the ranks of a torchrun job (gloo on CPU; NCCL the same way).

    torchrun --nproc_per_node 2 examples/sharded_store_torchrun.py
    python examples/sharded_store_torchrun.py --spawn 2        # the same without torchrun

Each rank embeds only its part of the dataset and adds it to a ``ShardedStore``: rows are routed to
their owner rank (``id % world``), which keeps them in its own faiss index. The difficulty scores
are computed where the rows live (the kNN graph regroups the rows by region, or passes each
shard's rows around the ring of ranks) and gathered as one float per sample; the curriculum loader
reads them as it would in one process. Curation picks a balanced subset, each rank selecting from
its own shard. The example checks the sharded scores against one process holding every row: the
same on every row where both graphs are exact (below 5,000 rows), on most rows above, where both
are approximate (recall >= 0.95, each its own way).
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
from curriculum.difficulty import label_disagreement
from curriculum.store import EmbeddingStore, ShardedStore


def main(rank: int | None = None, world: int | None = None, n: int = 6000, steps: int = 30) -> None:
    if rank is not None:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", "29541"))
    dist.init_process_group("gloo")
    r, w = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    ds = load_real()
    x = torch.tensor(ds.images[:n], dtype=torch.float32).div(255).unsqueeze(1)
    y = torch.from_numpy(ds.labels[:n].astype(np.int64))
    embed = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 5, stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 12 * 12, 64))  # stands in for your encoder

    # every rank embeds its part only (any split); the store routes the rows to their owners
    part = np.arange(n)[r::w]
    with torch.no_grad():
        emb = embed(x[part]).numpy()
    store = ShardedStore(dim=64, metric="cosine")
    store.add(emb, ids=part, labels=y[part].numpy())
    scores = store.gather(label_disagreement(store, k=10))   # every rank: all n scores
    graph = store.last_knn_report["method"]
    picked = cl.curate(store, target_size=n // 10)          # this rank's share of one balanced subset
    n_picked = int(store.comm.all_reduce(np.array([len(picked)]))[0])

    model = torch.nn.parallel.DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = cl.wrap(DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True), difficulty=scores,
                     pacing=cl.pacing.Root(0.3, steps))
    for step, (xb, yb) in zip(range(steps), loader):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()

    if r == 0:  # the check: one process holding every row gives the same scores
        with torch.no_grad():
            one = EmbeddingStore(64, metric="cosine")
            one.add(embed(x).numpy(), labels=y.numpy())
        ref = label_disagreement(one, k=10)
        same = np.isclose(ref.scores[np.argsort(ref.ids)], scores.scores[np.argsort(scores.ids)]).mean()
        print(f"{w} ranks: shard of rank 0 holds {len(store.ids)} of {len(store)} rows; graph: "
              f"{graph}; sharded scores equal one process's on {same:.1%} of rows; curated {n_picked} rows; "
              f"{steps} training steps, last loss {loss.item():.3f}; bytes sent by rank 0: {store.bytes_sent:,}")
    dist.destroy_process_group()


def _spawned(i: int, n: int, rows: int, steps: int) -> None:
    main(i, n, rows, steps)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--spawn", type=int, default=0, help="start N local processes instead of using torchrun")
    ap.add_argument("--rows", type=int, default=6000, help="Fashion-MNIST images to use (default 6000)")
    ap.add_argument("--steps", type=int, default=30, help="training steps (default 30)")
    a = ap.parse_args()
    if a.spawn:
        torch.multiprocessing.spawn(_spawned, args=(a.spawn, a.rows, a.steps), nprocs=a.spawn)
    else:
        main(n=a.rows, steps=a.steps)
