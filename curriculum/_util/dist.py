"""What torch.distributed says about this process, in one place."""

from __future__ import annotations

import torch

from . import checks as C


def initialized() -> bool:
    """Whether a torch.distributed process group is up."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world_size) from the arguments, else from an initialised torch.distributed, else (0, 1).

    Example:
        >>> dist_info(1, 4)
        (1, 4)
    """
    if world_size is None:
        if initialized():
            world_size = torch.distributed.get_world_size()
            rank = torch.distributed.get_rank() if rank is None else rank
        else:
            world_size = 1
    world_size = C.positive_int(world_size, "world_size")
    rank = 0 if rank is None else C.positive_int(rank, "rank", 0)
    if rank >= world_size:
        raise ValueError(f"rank: expected a value in [0, {world_size}), got {rank}")
    return rank, world_size


def _collective_device() -> torch.device:
    """Where collective tensors must live: the current CUDA device under NCCL, else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(parts: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Each tensor's rows from every rank, concatenated in rank order, by tensor collectives (one
    ``all_gather`` of the row counts, then one per tensor, padded to the longest rank); results
    are on the CPU. A part must be None on every rank or on none. Without a process group (or
    with one rank) the parts come back as they are.

    Example:
        >>> [t.tolist() for t in gather_rows([torch.tensor([1, 2])])]  # one process
        [[1, 2]]
    """
    if not initialized() or torch.distributed.get_world_size() == 1:
        return parts
    dist, world = torch.distributed, torch.distributed.get_world_size()
    dev = _collective_device()
    counts = torch.tensor([-1 if p is None else p.shape[0] for p in parts], dtype=torch.int64, device=dev)
    all_counts = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(all_counts, counts)
    table = torch.stack(all_counts).cpu()  # (world, parts)
    out: list[torch.Tensor | None] = []
    for j, p in enumerate(parts):
        col = table[:, j]
        if bool((col < 0).all()):
            out.append(None)
            continue
        if bool((col < 0).any()) or p is None:
            raise ValueError(f"gather_rows: part {j} is given on some ranks and None on others "
                             f"(rows per rank: {col.tolist()})")
        padded = torch.zeros((int(col.max()),) + tuple(p.shape[1:]), dtype=p.dtype, device=dev)
        padded[:p.shape[0]] = p.detach().to(dev)
        bufs = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(bufs, padded)
        out.append(torch.cat([b[:int(c)] for b, c in zip(bufs, col)]).cpu())
    return out
