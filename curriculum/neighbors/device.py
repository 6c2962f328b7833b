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

    met = get_metric(metric)
    xt = torch.as_tensor(x).detach()
    if xt.ndim != 2 or xt.shape[0] < 1:
        raise ValueError(f"x: expected a non-empty 2-D matrix, got shape {tuple(xt.shape)}")
    n = int(xt.shape[0])
    k = C.positive_int(k, "k")
    if k > n - int(bool(exclude_self)):
        raise ValueError(f"k: expected at most {n - int(bool(exclude_self))} (rows of x"
                         f"{' minus self' if exclude_self else ''}), got {k}")
    dev = torch.device(device)
    if xt.device.type == "cpu":  # numpy's checks and normalisation, then one copy to the device
        xt = torch.from_numpy(met.prepare(xt.float().numpy(), "x")).to(dev)
    else:  # rows already on a GPU stay there
        xt = _prepared_on_device(xt.to(dev).float(), met)
    step = chunk or max(1, SCORE_BYTES // (4 * n))
    sq = (xt * xt).sum(1) if met.squared_norms else None
    out_v, out_i = [], []
    for s in range(0, n, step):
        e = min(n, s + step)
        score = met.score(xt[s:e], xt, sq)
        if exclude_self:
            score[torch.arange(e - s, device=dev), torch.arange(s, e, device=dev)] = torch.inf
        v, i = torch.topk(score, k, dim=1, largest=False, sorted=True)
        out_v.append(v.cpu())
        out_i.append(i.cpu())
    raw = torch.cat(out_v).numpy()
    q_sq = sq.cpu().numpy() if sq is not None else None
    return np.ascontiguousarray(met.from_score(raw, q_sq), np.float32), torch.cat(out_i).numpy().astype(np.int64)


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


__all__ = ["SCORE_BYTES", "device_knn"]
