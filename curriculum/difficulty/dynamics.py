"""Training-dynamics difficulty: a ``Recorder`` fed from the training loop.

Per sample it keeps, vectorised in torch (no Python loop over samples):

* ``loss`` (last) and ``loss_ema`` (exponential moving average, decay ``ema_decay``);
* ``margin`` = logit of the labelled class minus the largest other logit, and its running mean,
  the *area under the margin* (AUM, Pleiss et al. 2020);
* ``el2n`` = ``||softmax(logits) - onehot(y)||_2`` (Paul et al. 2021), last value;
* ``entropy`` of the predicted distribution (nats), last value;
* ``forgetting`` events = correct -> incorrect transitions (Toneva et al. 2019);
* dataset cartography (Swayamdipta et al. 2020): ``confidence`` = mean p_y, ``variability`` =
  std of p_y (population std over the updates), ``correctness`` = share of correct predictions.

Samples never seen are reported through masks, never as easy. Repeated indices within one
``update`` call are applied in order of appearance, exactly as if ``update`` had been called
once per occurrence.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._util import checks as C
from .base import Difficulty

_FIELDS_F = ("loss_last", "loss_ema", "margin_last", "margin_sum", "el2n_last", "entropy_last", "py_sum", "py_sqsum",
             "correct_sum")
_FIELDS_I = ("loss_count", "logit_count", "forgetting", "prev_correct", "ever_correct")

#: score name -> (how to turn the statistic into "higher = harder", which count marks it observed)
SCORES = {
    "loss": "loss", "loss_ema": "loss", "margin": "logit", "aum": "logit", "el2n": "logit", "entropy": "logit",
    "forgetting": "logit", "confidence": "logit", "variability": "logit", "correctness": "logit",
}


RECORDER_STATE_FORMAT = "curriculum.recorder"

class Recorder:
    """Per-sample training dynamics, updated from the loop with ``update(indices, loss, logits)``.

    Args:
        num_samples: dataset size (indices must lie in ``0..num_samples-1``).
        num_classes: number of classes (needed for logits).
        labels: optional dataset labels, used when ``update`` is given logits but no labels.
        ema_decay: decay of the loss EMA: ``ema <- decay * ema + (1 - decay) * loss``.

    Example:
        >>> rec = Recorder(num_samples=4, num_classes=2)
        >>> rec.update([0, 1], logits=torch.tensor([[2.0, 0.0], [0.0, 1.0]]), labels=torch.tensor([0, 0]))
        >>> rec.margin[:2].tolist()
        [2.0, -1.0]
        >>> rec.difficulty("aum").observed.tolist()
        [True, True, False, False]
    """

    def __init__(self, num_samples: int, num_classes: int | None = None, labels: Any = None,
                 ema_decay: float = 0.9) -> None:
        self.num_samples = C.positive_int(num_samples, "num_samples")
        self.num_classes = None if num_classes is None else C.positive_int(num_classes, "num_classes", 2)
        self.ema_decay = C.finite_float(ema_decay, "ema_decay", 0.0, 1.0, high_open=True)
        self.labels: torch.Tensor | None = None
        if labels is not None:
            lab = C.as_labels(labels, "labels", self.num_samples)
            if self.num_classes is not None and lab.max(initial=0) >= self.num_classes:
                raise ValueError(f"labels: expected values < num_classes={self.num_classes}, got {int(lab.max())}")
            self.labels = torch.from_numpy(lab.copy())
        self.step = 0
        self._t: dict[str, torch.Tensor] = {}
        for f in _FIELDS_F:
            self._t[f] = torch.zeros(self.num_samples, dtype=torch.float64)
        for f in _FIELDS_I:
            self._t[f] = torch.zeros(self.num_samples, dtype=torch.int64)
        self._t["prev_correct"].fill_(-1)

    # ------------------------------------------------------------------ update
    def _validate(self, indices: Any, loss: Any, logits: Any, labels: Any) -> tuple:
        idx = indices.detach().cpu() if isinstance(indices, torch.Tensor) else torch.as_tensor(C.to_numpy(indices, "indices"))
        if idx.ndim != 1:
            raise ValueError(f"indices: expected a 1-D tensor of dataset indices, got shape {tuple(idx.shape)}")
        if idx.dtype.is_floating_point or idx.dtype == torch.bool:
            raise TypeError(f"indices: expected integer indices, got dtype {idx.dtype}")
        idx = idx.long()
        n = idx.numel()
        if n and (idx.min() < 0 or idx.max() >= self.num_samples):
            bad = idx[(idx < 0) | (idx >= self.num_samples)][:5].tolist()
            raise IndexError(f"indices: expected values in [0, {self.num_samples}), got {bad}")
        if loss is None and logits is None:
            raise ValueError("update: expected loss= and/or logits=, got neither")
        lo = lg = lab = None
        if logits is not None:
            lg = torch.as_tensor(C.as_real(logits, "logits")).double()
            if lg.ndim != 2 or lg.shape[0] != n:
                raise ValueError(f"logits: expected shape ({n}, num_classes), got {tuple(lg.shape)}")
            if self.num_classes is not None and lg.shape[1] != self.num_classes:
                raise ValueError(f"logits: expected {self.num_classes} columns, got {lg.shape[1]}")
            if lg.shape[1] < 2:
                raise ValueError(f"logits: expected at least 2 classes, got {lg.shape[1]}")
            if not torch.isfinite(lg).all():
                raise ValueError("logits: expected finite values, got NaN or inf")
            if labels is not None:
                lab = torch.as_tensor(C.as_labels(labels, "labels", n))
            elif self.labels is not None:
                lab = self.labels[idx]
            else:
                raise ValueError("labels: logits need labels - pass labels= here or to Recorder(labels=...)")
            if n and lab.max() >= lg.shape[1]:
                raise ValueError(f"labels: expected values < {lg.shape[1]} (the logits' width), got {int(lab.max())}")
        if loss is not None:
            lo = (loss.detach().to("cpu", torch.float64) if isinstance(loss, torch.Tensor)
                  else torch.as_tensor(C.as_real(loss, "loss")).double())
            if lo.ndim == 0:
                raise ValueError("loss: expected one loss per sample (use reduction='none'), got a scalar")
            if lo.ndim != 1 or lo.shape[0] != n:
                raise ValueError(f"loss: expected shape ({n},), got {tuple(lo.shape)}")
            if not torch.isfinite(lo).all():
                raise ValueError(f"loss: expected finite values, got {int((~torch.isfinite(lo)).sum())} NaN/inf")
        elif lg is not None:
            lo = torch.nn.functional.cross_entropy(lg, lab, reduction="none")
        return idx, lo, lg, lab

    def update(self, indices: Any, loss: Any = None, logits: Any = None, labels: Any = None) -> None:
        """Record one step's per-sample loss and/or logits for dataset ``indices``.

        Everything is validated before anything is written: a bad call raises and leaves the
        recorder unchanged. When only logits are given the loss is their cross-entropy.
        """
        idx, lo, lg, lab = self._validate(indices, loss, logits, labels)
        if idx.numel() == 0:
            return
        # occurrence number of every index within this call (0 for the first, 1 for a repeat...);
        # computed in numpy, which is cheaper than torch for one batch of indices
        ix = idx.numpy()
        o = np.argsort(ix, kind="stable")
        srt = ix[o]
        start = np.ones(len(srt), bool)
        start[1:] = srt[1:] != srt[:-1]
        if start.all():  # no repeats: one vectorised round
            self._apply(idx, lo, lg, lab)
            self.step += 1
            return
        pos = np.arange(len(srt))
        first = np.maximum.accumulate(np.where(start, pos, 0))
        occ_np = np.empty(len(ix), np.int64)
        occ_np[o] = pos - first
        occ = torch.from_numpy(occ_np)
        for r in range(int(occ_np.max()) + 1):
            m = occ == r
            self._apply(idx[m], None if lo is None else lo[m], None if lg is None else lg[m],
                        None if lab is None else lab[m])
        self.step += 1

    def _apply(self, idx: torch.Tensor, lo: torch.Tensor | None, lg: torch.Tensor | None,
               lab: torch.Tensor | None) -> None:
        # index_select / index_copy_ / index_add_: several times faster than advanced indexing
        # for one batch of (unique) indices, which keeps feedback cheap in the training loop
        t = self._t

        def get(key: str) -> torch.Tensor:
            return t[key].index_select(0, idx)

        def put(key: str, val: torch.Tensor) -> None:
            t[key].index_copy_(0, idx, val.to(t[key].dtype))

        def add(key: str, val: torch.Tensor) -> None:
            t[key].index_add_(0, idx, val.to(t[key].dtype))

        if lo is not None:
            first = get("loss_count") == 0
            put("loss_ema", torch.where(first, lo, self.ema_decay * get("loss_ema") + (1 - self.ema_decay) * lo))
            put("loss_last", lo)
            add("loss_count", torch.ones_like(idx))
        if lg is not None:
            p = torch.softmax(lg, dim=1)
            rows = torch.arange(len(idx))
            z_y = lg[rows, lab]
            other = lg.clone()
            other[rows, lab] = -torch.inf
            margin = z_y - other.max(dim=1).values
            onehot = torch.nn.functional.one_hot(lab, lg.shape[1]).double()
            p_y = p[rows, lab]
            correct = (lg.argmax(dim=1) == lab).long()
            prev = get("prev_correct")
            add("forgetting", ((prev == 1) & (correct == 0)).long())
            put("prev_correct", correct)
            put("margin_last", margin)
            add("margin_sum", margin)
            put("el2n_last", torch.linalg.vector_norm(p - onehot, dim=1))
            put("entropy_last", -(p * torch.log(p.clamp_min(1e-300))).sum(dim=1))
            add("py_sum", p_y)
            add("py_sqsum", p_y * p_y)
            add("correct_sum", correct)
            add("logit_count", torch.ones_like(idx))
            put("ever_correct", get("ever_correct") | correct)

    # ------------------------------------------------------------------ read-outs (numpy)
    @property
    def seen(self) -> np.ndarray:
        """Samples with at least one loss or logits record."""
        return ((self._t["loss_count"] > 0) | (self._t["logit_count"] > 0)).numpy()

    def _mean(self, key: str) -> np.ndarray:
        cnt = self._t["logit_count"].double()
        return torch.where(cnt > 0, self._t[key] / cnt.clamp_min(1), torch.nan).numpy()

    @property
    def loss(self) -> np.ndarray:
        """Last recorded loss per sample (NaN where never observed)."""
        return torch.where(self._t["loss_count"] > 0, self._t["loss_last"], torch.nan).numpy()

    @property
    def loss_ema(self) -> np.ndarray:
        """Exponential moving average of the loss per sample (decay ``ema_decay``; NaN where never observed)."""
        return torch.where(self._t["loss_count"] > 0, self._t["loss_ema"], torch.nan).numpy()

    def _last(self, key: str) -> np.ndarray:
        return torch.where(self._t["logit_count"] > 0, self._t[key], torch.nan).numpy()

    @property
    def margin(self) -> np.ndarray:
        """Last margin per sample: the true class's logit minus the largest other logit."""
        return self._last("margin_last")

    @property
    def aum(self) -> np.ndarray:
        """Area under the margin: the mean margin over every observation (Pleiss et al. 2020)."""
        return self._mean("margin_sum")

    @property
    def el2n(self) -> np.ndarray:
        """Last EL2N per sample: ``||softmax - onehot||_2`` (Paul et al. 2021)."""
        return self._last("el2n_last")

    @property
    def entropy(self) -> np.ndarray:
        """Last predictive entropy per sample (nats)."""
        return self._last("entropy_last")

    @property
    def forgetting(self) -> np.ndarray:
        """Forgetting events per sample (0 where unseen; see ``learned`` for never-learned ones)."""
        return self._t["forgetting"].numpy().copy()

    @property
    def learned(self) -> np.ndarray:
        """Samples predicted correctly at least once."""
        return self._t["ever_correct"].numpy().astype(bool)

    @property
    def confidence(self) -> np.ndarray:
        """Mean probability of the true class over observations (dataset cartography)."""
        return self._mean("py_sum")

    @property
    def variability(self) -> np.ndarray:
        """Standard deviation of the true class's probability over observations (cartography)."""
        m = self._mean("py_sum")
        sq = self._mean("py_sqsum")
        return np.sqrt(np.maximum(sq - m * m, 0.0))

    @property
    def correctness(self) -> np.ndarray:
        """Share of observations where the prediction was right (cartography)."""
        return self._mean("correct_sum")

    def difficulty(self, name: str = "loss_ema") -> Difficulty:
        """One statistic as a :class:`Difficulty` (higher = harder), with the ``observed`` mask.

        ``margin``/``aum``/``confidence``/``correctness`` are negated (1 - x for the shares) so that
        low-margin, low-confidence samples are hard; never-learned samples get one more forgetting
        event than the most-forgotten sample (Toneva et al. rank them hardest). Unobserved samples
        get the median observed score.
        """
        C.choice(name, "name", tuple(SCORES))
        obs = (self._t["loss_count" if SCORES[name] == "loss" else "logit_count"] > 0).numpy()
        if name == "forgetting":
            f = self.forgetting.astype(np.float64)
            never = obs & ~self.learned
            f[never] = (f[obs & ~never].max(initial=0.0) + 1.0) if never.any() else 0.0
            raw = f
        else:
            raw = getattr(self, name).astype(np.float64)
            if name in ("margin", "aum"):
                raw = -raw
            elif name in ("confidence", "correctness"):
                raw = 1.0 - raw
        fill = float(np.median(raw[obs])) if obs.any() else 0.0
        scores = np.where(obs, raw, fill)
        return Difficulty(scores, np.arange(self.num_samples), f"recorder.{name}", observed=obs)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (tensors are cloned)."""
        return {"format": RECORDER_STATE_FORMAT, "version": 1,
                "num_samples": self.num_samples, "num_classes": self.num_classes, "ema_decay": self.ema_decay,
                "step": self.step, "tensors": {k: v.clone() for k, v in self._t.items()},
                "labels": None if self.labels is None else self.labels.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (also one read with ``torch.load(weights_only=True)``)."""
        C.state_format(state, RECORDER_STATE_FORMAT, (1,), "Recorder")
        if state.get("num_samples") != self.num_samples:
            raise ValueError(f"state: recorded for num_samples={state.get('num_samples')}, this recorder has "
                             f"{self.num_samples}")
        self.num_classes, self.ema_decay, self.step = state["num_classes"], state["ema_decay"], state["step"]
        self._t = {k: v.clone() for k, v in state["tensors"].items()}
        self.labels = None if state.get("labels") is None else state["labels"].clone()


__all__ = ['SCORES', 'RECORDER_STATE_FORMAT', 'Recorder']
