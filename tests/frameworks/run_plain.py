"""Plain torch run: python run_plain.py OUT TAG --epochs E [--max-steps S] [--resume FILE] (under torchrun for DDP).

The loader is built before init_process_group (as many torchrun scripts do): the sampler reads rank
and world size when iteration starts. At --max-steps the loop saves ``loader.state_dict()`` with
``torch.save`` and stops; --resume reads it back with ``torch.load(weights_only=True)``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import curriculum as cl  # noqa: E402
from _fixture import BATCH, CLASSES, DIM, N, SCORES, X, Y, close_group_and_exit, pacing, parse_args, rank_world, write  # noqa: E402


def main():
    a = parse_args()
    ds = TensorDataset(torch.from_numpy(X), torch.from_numpy(Y))
    rec = cl.Recorder(N, CLASSES, labels=Y)
    loader = cl.wrap(DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=1), difficulty=SCORES,
                     pacing=pacing(), recorder=rec, seed=0)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        torch.distributed.init_process_group("gloo")
    torch.manual_seed(0)
    model = torch.nn.Linear(DIM, CLASSES)
    if torch.distributed.is_initialized():
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step, batches = 0, []
    if a.resume:
        ckpt = torch.load(a.resume, weights_only=True)
        loader.load_state_dict(ckpt["loader"])
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step = ckpt["step"]
    for epoch in range(loader.epoch, a.epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            batches.append(loader.last_indices.tolist())
            loss = F.cross_entropy(model(x), y, reduction="none")
            loader.feedback(loss=loss.detach())
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
            step += 1
            if step == a.max_steps:
                if rank_world()[0] == 0:
                    torch.save({"loader": loader.state_dict(), "model": model.state_dict(), "opt": opt.state_dict(),
                                "step": step}, os.path.join(a.out, f"{a.tag}.pt"))
                write(a.out, a.tag, batches, rec)
                return
    write(a.out, a.tag, batches, rec)


if __name__ == "__main__":
    main()
    close_group_and_exit()
