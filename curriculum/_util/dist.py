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
