"""What torch.distributed says about this process, in one place."""

from __future__ import annotations

import os
import socket
import zlib
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
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


class Comm:
    """Collectives on numpy arrays over a torch.distributed process group (gloo on CPU, NCCL with
    the tensors moved to the current CUDA device), counting the bytes this rank sends. Without a
    process group it is a world of one and every collective returns its input.

    Example:
        >>> import numpy as np
        >>> comm = Comm()                       # no process group: world of one
        >>> comm.world, comm.all_reduce(np.array([1, 2])).tolist()
        (1, [1, 2])
        >>> [a.tolist() for a in comm.exchange([np.array([[1.0, 2.0]])])]
        [[[1.0, 2.0]]]
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.rank, self.world = (torch.distributed.get_rank(group), torch.distributed.get_world_size(group)) \
            if initialized() else (0, 1)
        self.bytes_sent = 0
        self._local: int | None = 1 if self.world == 1 else None

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(_collective_device())

    def all_reduce(self, a: np.ndarray, op: str = "sum") -> np.ndarray:
        """Element-wise ``sum`` / ``max`` / ``min`` of ``a`` over the ranks."""
        if self.world == 1:
            return np.array(a, copy=True)
        t = self._tensor(np.asarray(a))
        ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX,
               "min": torch.distributed.ReduceOp.MIN}
        torch.distributed.all_reduce(t, op=ops[op], group=self.group)
        self.bytes_sent += t.numel() * t.element_size()
        return t.cpu().numpy()

    def all_gather(self, a: np.ndarray) -> list[np.ndarray]:
        """Every rank's ``a`` (any number of rows, same trailing shape and dtype), in rank order."""
        if self.world == 1:
            return [np.asarray(a)]
        return self.exchange([np.asarray(a)] * self.world)

    def exchange(self, buckets: list[np.ndarray]) -> list[np.ndarray]:
        """All-to-all: ``buckets[j]`` goes to rank ``j``; returns what each rank sent to this one.
        Buckets share a dtype and a trailing shape; their row counts may differ (one
        ``all_to_all_single`` of the counts, then one of the rows)."""
        if len(buckets) != self.world:
            raise ValueError(f"buckets: expected one array per rank ({self.world}), got {len(buckets)}")
        if self.world == 1:
            return [np.asarray(buckets[0])]
        parts = [np.ascontiguousarray(b) for b in buckets]
        tail, dtype = parts[0].shape[1:], parts[0].dtype
        send = np.array([len(p) for p in parts], np.int64)
        recv = self._tensor(np.zeros(self.world, np.int64))
        torch.distributed.all_to_all_single(recv, self._tensor(send), group=self.group)
        recv_rows = recv.cpu().numpy()
        width = int(np.prod(tail, dtype=np.int64))
        flat = np.concatenate([p.reshape(len(p), width) for p in parts]) if width else np.zeros((int(send.sum()), 0))
        out = self._tensor(np.zeros((int(recv_rows.sum()), width), dtype))
        torch.distributed.all_to_all_single(out, self._tensor(flat.astype(dtype, copy=False)),
                                            output_split_sizes=recv_rows.tolist(),
                                            input_split_sizes=send.tolist(), group=self.group)
        self.bytes_sent += int((send.sum() - send[self.rank]) * width * np.dtype(dtype).itemsize) + send.nbytes
        got = out.cpu().numpy()
        return [g.reshape((len(g),) + tail) for g in np.split(got, np.cumsum(recv_rows)[:-1])]

    def gather(self, a: np.ndarray, root: int = 0) -> list[np.ndarray] | None:
        """Every rank's ``a`` on rank ``root`` (in rank order); ``None`` on the other ranks."""
        a = np.asarray(a)
        buckets = [a[:0]] * self.world
        buckets[root] = a
        got = self.exchange(buckets)
        return got if self.rank == root else None

    def broadcast(self, a: np.ndarray | None, dtype: Any, root: int = 0) -> np.ndarray:
        """Rank ``root``'s array (any shape, cast to ``dtype``) on every rank; the others pass None."""
        if self.world == 1:
            return np.asarray(a, dtype)
        head = np.full(9, -1, np.int64)
        if self.rank == root:
            a = np.ascontiguousarray(a, dtype)
            head[0], head[1:1 + a.ndim] = a.ndim, a.shape
        t = self._tensor(head)
        torch.distributed.broadcast(t, src=root, group=self.group)
        head = t.cpu().numpy()
        shape = tuple(int(v) for v in head[1:1 + int(head[0])])
        buf = self._tensor(a if self.rank == root else np.zeros(shape, dtype))
        torch.distributed.broadcast(buf, src=root, group=self.group)
        if self.rank == root:
            self.bytes_sent += buf.numel() * buf.element_size() * (self.world - 1)
        return buf.cpu().numpy()

    def shift(self, a: np.ndarray) -> np.ndarray:
        """Ring step: send ``a`` to the next rank, return the previous rank's."""
        if self.world == 1:
            return np.asarray(a)
        empty = np.zeros((0,) + np.asarray(a).shape[1:], np.asarray(a).dtype)
        buckets = [empty] * self.world
        buckets[(self.rank + 1) % self.world] = np.asarray(a)
        return self.exchange(buckets)[(self.rank - 1) % self.world]

    def local_world(self) -> int:
        """How many ranks of the group run on this host (this one included): the cores a rank may
        borrow while the others wait in a collective (:func:`more_threads`). Collective on the
        first call (one all-gather of a hash of the host name), cached after."""
        if self._local is None:
            host = zlib.crc32(socket.gethostname().encode()) & 0x7FFF_FFFF
            self._local = sum(int(h[0]) == host for h in self.all_gather(np.array([host], np.int64)))
        return self._local

    def agree(self, error: BaseException | None) -> None:
        """Raise on every rank when any rank failed: the failing rank re-raises its own error, the
        others a ``RuntimeError`` that names the rank and its message. Collective state stays in
        step because every rank reaches the same decision."""
        if self.world == 1:
            if error is not None:
                raise error
            return
        msg = b"" if error is None else f"{type(error).__name__}: {error}".encode()[:2000]
        flags = self.all_gather(np.array([len(msg) > 0 or error is not None], np.int64))
        if not any(int(f[0]) for f in flags):
            return
        texts = self.all_gather(np.frombuffer(msg, np.uint8).copy())
        if error is not None:
            raise error
        first = next(r for r, f in enumerate(flags) if int(f[0]))
        raise RuntimeError(f"rank {first} failed, so this collective call stopped on every rank: "
                           f"{bytes(texts[first]).decode(errors='replace')}")


@contextmanager
def more_threads(factor: int) -> Iterator[int]:
    """Run the block with torch's, faiss's and numba's thread counts ``factor`` times their current
    value (at most the CPUs this process may use), then put them back; yields the count. Rank 0
    fits the store's samples this way while the other ranks of its host wait for the result in a
    collective (a waiting gloo rank uses no CPU): under torchrun each rank has a few threads (one
    by default), so rank 0 alone would leave the host's other cores idle.

    Example:
        >>> before = torch.get_num_threads()
        >>> with more_threads(1) as n:
        ...     n == before
        True
    """
    import faiss

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    prev = (torch.get_num_threads(), faiss.omp_get_max_threads(), _numba_threads())
    want = max(1, min(cpus, prev[0] * max(1, int(factor))))
    _set_threads(want, want, want)
    try:
        yield want
    finally:
        _set_threads(*prev)


def _numba_threads() -> int | None:
    try:
        import numba
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return int(numba.get_num_threads())


def _set_threads(torch_n: int, faiss_n: int, numba_n: int | None) -> None:
    import faiss

    torch.set_num_threads(torch_n)
    faiss.omp_set_num_threads(faiss_n)
    if numba_n is not None:
        import numba

        numba.set_num_threads(min(numba_n, numba.config.NUMBA_NUM_THREADS))
