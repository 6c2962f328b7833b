"""Loss helpers for self-supervised training with mined negatives.

* :func:`info_nce` - the plain InfoNCE loss with explicit negatives.
* :func:`hard_negative_nce` - Robinson et al. 2021 ("Contrastive learning with hard negative
  samples"): negatives reweighted by ``exp(beta * sim)`` (concentration ``beta``) and debiased for
  false negatives with class prior ``tau_plus``. With ``beta = 0`` and ``tau_plus = 0`` it equals
  :func:`info_nce` (for unit vectors, where the clamp below is inactive).
* :func:`mochi` - MoCHi (Kalantidis et al. 2020): synthetic hard negatives mixed from the hardest
  ones, and from the query with the hardest ones.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._util import checks as C


def _check(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> None:
    if anchor.ndim != 2 or positive.shape != anchor.shape:
        raise ValueError(f"anchor, positive: expected equal (B, d) shapes, got {tuple(anchor.shape)} and "
                         f"{tuple(positive.shape)}")
    if negatives.ndim != 3 or negatives.shape[0] != anchor.shape[0] or negatives.shape[2] != anchor.shape[1]:
        raise ValueError(f"negatives: expected shape (B={anchor.shape[0]}, N, d={anchor.shape[1]}), got "
                         f"{tuple(negatives.shape)}")
    for name, t in (("anchor", anchor), ("positive", positive), ("negatives", negatives)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}: expected finite values, got NaN or inf")


def _sims(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    a = F.normalize(anchor, dim=1)
    pos = (a * F.normalize(positive, dim=1)).sum(1)
    neg = torch.einsum("bd,bnd->bn", a, F.normalize(negatives, dim=2))
    return pos, neg


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
             temperature: float = 0.5) -> torch.Tensor:
    """``-log(e^{s+/t} / (e^{s+/t} + sum_i e^{s_i/t}))`` per anchor (cosine similarities).

    Example:
        >>> a = torch.tensor([[1., 0]]); p = torch.tensor([[1., 0]]); n = torch.tensor([[[0., 1]]])
        >>> round(info_nce(a, p, n, temperature=1.0).item(), 4)   # -log(e / (e + 1))
        0.3133
    """
    _check(anchor, positive, negatives)
    t = C.finite_float(temperature, "temperature", 0.0, low_open=True)
    pos, neg = _sims(anchor, positive, negatives)
    logits = torch.cat([pos[:, None], neg], dim=1) / t
    return -torch.log_softmax(logits, dim=1)[:, 0]


def hard_negative_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor,
                      temperature: float = 0.5, beta: float = 1.0, tau_plus: float = 0.1) -> torch.Tensor:
    """Per-anchor hard-negative contrastive loss of Robinson et al. 2021.

    With ``pos = e^{s+/t}``, ``neg_i = e^{s_i/t}`` and ``N`` negatives:
    ``imp_i = neg_i^beta``, ``R = N * sum(imp_i neg_i) / sum(imp_i)``,
    ``Ng = max((R - tau_plus N pos) / (1 - tau_plus), N e^{-1/t})``,
    ``loss = -log(pos / (pos + Ng))``.

    Example:
        >>> a, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 16, 8)
        >>> torch.allclose(hard_negative_nce(a, p, n, beta=0.0, tau_plus=0.0), info_nce(a, p, n))
        True
    """
    _check(anchor, positive, negatives)
    t = C.finite_float(temperature, "temperature", 0.0, low_open=True)
    beta = C.finite_float(beta, "beta", 0.0)
    tau_plus = C.finite_float(tau_plus, "tau_plus", 0.0, 1.0, high_open=True)
    s_pos, s_neg = _sims(anchor, positive, negatives)
    n = s_neg.shape[1]
    # in log space for stability: log neg_i = s_i / t
    log_neg = s_neg / t
    log_imp = beta * log_neg
    log_r = math.log(n) + torch.logsumexp(log_imp + log_neg, 1) - torch.logsumexp(log_imp, 1)
    pos = torch.exp(s_pos / t)
    ng = (torch.exp(log_r) - tau_plus * n * pos) / (1.0 - tau_plus)
    ng = torch.clamp(ng, min=n * math.exp(-1.0 / t))
    return -torch.log(pos / (pos + ng))


def mochi(query: torch.Tensor, negatives: torch.Tensor, n_hard: int = 16, s: int = 8, s_prime: int = 4,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """MoCHi synthetic negatives (Kalantidis et al. 2020), L2-normalised, shape ``(B, s + s_prime, d)``.

    The ``n_hard`` negatives most similar to each query are mixed pairwise, ``h = a n_i + (1-a) n_j``
    with ``a ~ U(0, 1)`` (``s`` of them), and with the query, ``h' = b q + (1-b) n_j`` with
    ``b ~ U(0, 0.5)`` so the query never dominates (``s_prime`` of them).

    Example:
        >>> q = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
        >>> negs = torch.nn.functional.normalize(torch.randn(2, 32, 8), dim=2)
        >>> mochi(q, negs, n_hard=8, s=4, s_prime=2, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([2, 6, 8])
    """
    if query.ndim != 2 or negatives.ndim != 3 or negatives.shape[0] != query.shape[0]:
        raise ValueError(f"query, negatives: expected (B, d) and (B, N, d), got {tuple(query.shape)} and "
                         f"{tuple(negatives.shape)}")
    q = F.normalize(query, dim=1)
    neg = F.normalize(negatives, dim=2)
    b, n, d = neg.shape
    h = min(C.positive_int(n_hard, "n_hard"), n)
    sim = torch.einsum("bd,bnd->bn", q, neg)
    hard = torch.gather(neg, 1, sim.topk(h, dim=1).indices[:, :, None].expand(b, h, d))
    i = torch.randint(0, h, (b, s), generator=generator)
    j = torch.randint(0, h, (b, s), generator=generator)
    a = torch.rand(b, s, 1, generator=generator)
    take = lambda idx: torch.gather(hard, 1, idx[:, :, None].expand(b, idx.shape[1], d))  # noqa: E731
    mixed = a * take(i) + (1 - a) * take(j)
    jj = torch.randint(0, h, (b, s_prime), generator=generator)
    bb = 0.5 * torch.rand(b, s_prime, 1, generator=generator)
    mixed_q = bb * q[:, None, :] + (1 - bb) * take(jj)
    return F.normalize(torch.cat([mixed, mixed_q], dim=1), dim=2)


__all__ = ['info_nce', 'hard_negative_nce', 'mochi']
