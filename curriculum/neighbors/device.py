"""The exact all-points kNN graph on a torch device (a GPU): row chunks scored against every row
with one matrix product each and reduced by ``torch.topk`` on the device, so only the ``(N, k)``
result comes back. On a GPU the product is the whole cost (1M x 128: ~2.6e14 flops, seconds on a
data-centre GPU), which is why no blocking or descent is layered on it; on a CPU device the same
code runs (that is how it is tested without a GPU), slower than the CPU engines.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._util import checks as C
from .kernels import NEAR_EXTRA
from .metric import get_metric

SCORE_BYTES = 1 << 28  # one chunk's (rows x N) score matrix stays under this many bytes (256 MB)


def device_knn(x: Any, k: int, metric: str, device: Any = "cuda", exclude_self: bool = True,
               chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` nearest rows of every row of ``x`` (numpy or a torch tensor), computed on
    ``device``: ``(distances, rows)`` as numpy, ascending, the row itself left out with
    ``exclude_self``. ``chunk`` rows are scored at a time (default: a 256 MB score matrix).

    Example:
        >>> import numpy as np
        >>> x = np.array([[0.], [1.], [3.], [7.]], np.float32)
        >>> d, rows = device_knn(x, 2, "l2", device="cpu")
        >>> rows.tolist(), d[0].tolist()
        ([[1, 2], [0, 2], [1, 0], [2, 1]], [1.0, 3.0])
    """
    import torch

    xt = torch.as_tensor(x).detach()
    if xt.ndim != 2 or xt.shape[0] < 1:
        raise ValueError(f"x: expected a non-empty 2-D matrix, got shape {tuple(xt.shape)}")
    n = int(xt.shape[0])
    k = C.positive_int(k, "k")
    if k > n - int(bool(exclude_self)):
        raise ValueError(f"k: expected at most {n - int(bool(exclude_self))} (rows of x"
                         f"{' minus self' if exclude_self else ''}), got {k}")
    xt = on_device(xt, metric, device)
    return device_topk(xt, xt, k, metric, device, chunk, skip_diagonal=bool(exclude_self))


def on_device(x: Any, metric: str, device: Any = "cuda") -> Any:
    """Rows (numpy or a torch tensor) as float32 on ``device``, prepared for ``metric``
    (L2-normalised under cosine): numpy's checks and one copy from the host, or, for rows already
    on a GPU, the normalisation there (no round trip).

    Example:
        >>> import numpy as np
        >>> on_device(np.array([[3., 4.]]), "cosine", "cpu").tolist()
        [[0.6000000238418579, 0.800000011920929]]
    """
    import torch

    met, dev = get_metric(metric), torch.device(device)
    xt = torch.as_tensor(x).detach()
    if xt.device.type == "cpu":
        return torch.from_numpy(met.prepare(xt.float().numpy(), "x")).to(dev)
    return _prepared_on_device(xt.to(dev).float(), met)


def device_topk(q: Any, base: Any, k: int, metric: str, device: Any = "cuda", chunk: int | None = None,
                skip_diagonal: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` nearest rows of ``base`` for every row of ``q``, scored on ``device`` (both
    as :func:`on_device` gives them; numpy is moved there): ``(distances, rows)`` as numpy,
    ascending, ``-1`` padding where ``base`` has fewer than ``k`` rows; with ``skip_diagonal``
    (``q`` is ``base``) a row never lists itself. ``chunk`` query rows are scored at a time
    (default: a 256 MB score matrix); for l2, :data:`~curriculum.neighbors.kernels.NEAR_EXTRA`
    more pairs than ``k`` are chosen by the product and the ``k`` nearest kept by direct distances.

    Example:
        >>> import numpy as np
        >>> d, rows = device_topk(np.array([[0.9]]), np.array([[0.], [1.], [3.]]), 2, "l2", "cpu")
        >>> rows.tolist(), [round(float(v), 2) for v in d[0]]
        ([[1, 0]], [0.1, 0.9])
        >>> device_topk(np.array([[0.9]]), np.array([[0.], [1.]]), 3, "l2", "cpu")[1].tolist()
        [[1, 0, -1]]
    """
    import torch

    met, dev = get_metric(metric), torch.device(device)
    qt, bt = on_device(q, metric, dev), on_device(base, metric, dev)  # on the device already: no host copy
    n = int(bt.shape[0])
    step = chunk or max(1, SCORE_BYTES // (4 * max(n, 1)))
    sq = (bt * bt).sum(1) if met.squared_norms else None
    out_v, out_i = [], []
    for s in range(0, int(qt.shape[0]), step):
        e = min(int(qt.shape[0]), s + step)
        score = met.score(qt[s:e], bt, sq)
        if skip_diagonal:
            score[torch.arange(e - s, device=dev), torch.arange(s, e, device=dev)] = torch.inf
        wide = min(k + NEAR_EXTRA, n) if met.squared_norms else min(k, n)
        v, i = torch.topk(score, wide, dim=1, largest=False, sorted=True)
        if met.squared_norms:  # l2: the expanded form rounds small distances away: k + NEAR_EXTRA pairs rescored
            v, i = (t[:, :min(k, n)] for t in _rescored_l2(qt[s:e], bt, v, i))
        out_v.append(v.cpu())
        out_i.append(i.cpu())
    raw = torch.cat(out_v).numpy()
    d = np.sqrt(raw) if met.squared_norms else met.from_score(raw)
    d, rows = np.ascontiguousarray(d, np.float32), torch.cat(out_i).numpy().astype(np.int64)
    pad = ((0, 0), (0, k - rows.shape[1]))  # fewer rows in base than k: -1 pads, as brute_knn's
    return np.pad(d, pad, constant_values=np.inf), np.pad(rows, pad, constant_values=-1)


def _rescored_l2(q: Any, base: Any, score: Any, rows: Any) -> tuple[Any, Any]:
    """Squared l2 distances of the selected pairs computed as ``||q - x||^2`` (the expanded
    ``||x||^2 - 2 q.x + ||q||^2`` loses ~``sqrt(eps) ||x||`` to rounding: 2.4e-4 for unit-scale rows
    1.6e-5 apart), re-sorted; pairs scored ``inf`` (a row's own) stay last."""
    import torch

    exact = ((q[:, None, :] - base[rows]) ** 2).sum(-1)
    exact = torch.where(torch.isinf(score), torch.full_like(exact, float("inf")), exact)
    exact, order = torch.sort(exact, dim=1, stable=True)
    return exact, torch.gather(rows, 1, order)


def checked_device(device: Any) -> Any:
    """``device`` as a ``torch.device`` this process can use; a clear error for anything else (a
    CUDA device where torch sees no GPU included).

    Example:
        >>> checked_device("cpu")
        device(type='cpu')
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: expected a torch device such as 'cuda' or 'cpu', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} needs a CUDA GPU, and torch sees none here")
    return dev


def _prepared_on_device(xt: Any, met: Any) -> Any:
    """Float32 rows already on the device, L2-normalised there under cosine (no round trip)."""
    import torch

    if met.normalised:
        norms = torch.linalg.vector_norm(xt, dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise ValueError(f"x: expected non-zero vectors for the cosine metric, got "
                             f"{int((norms == 0).sum())} zero row(s)")
        return xt / norms
    return xt


__all__ = ["SCORE_BYTES", "device_knn", "device_topk", "on_device", "checked_device"]
