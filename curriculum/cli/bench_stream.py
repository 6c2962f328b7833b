"""``curriculum bench --sections stream``: ``StreamSelector`` throughput against the size of its
memory, and what it selects from a real-embedding stream with planted near-repeat bursts.

Throughput: a stream of d = 128 embeddings (200 Gaussian modes; the embedding is a lookup, so
the selector's own cost is measured), window 1024, keep 25%, after the memory was primed full
with 1k / 10k / 100k / 1M emitted embeddings; the 100k memory also with the exact search of the
first wave (``index="exact"``); and real embeddings (Fashion-MNIST CNN features, 1.02M rows) with
100k / 1M memories. Median of 3 runs of 40 windows (after 3 untimed ones).

Quality: streams of bursts (each a random item of a labelled long-tailed set, repeated 1-6
times with a little noise), keep 25%: distinct items emitted and the share of the rarest 10% of
the classes, beside a random 25% of the same stream; means over 3 streams.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

WINDOW = 1024
KEEP = 0.25
WARM = 3  # untimed windows before the throughput is measured


def _modes(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, dim)).astype(np.float32) * 2
    return centres[rng.integers(0, 200, n)] + rng.standard_normal((n, dim), np.float32)


def throughput(memory: int, dim: int = 128, windows: int = 40, index: str = "auto", reps: int = 3,
               pool: np.ndarray | None = None, metric: str = "l2") -> float:
    """Items per second of ``StreamSelector`` (novelty, top-k) with a memory primed full: of
    synthetic d-dim modes, or with ``pool`` (real embeddings) a random part of it as the stream
    (at most ``windows`` windows) and ``memory`` other rows in the memory.

    Example:
        >>> throughput(1_000, dim=8, windows=5, reps=1) > 0
        True
    """
    from ..selection.stream import StreamSelector

    times = []
    for r in range(reps):
        if pool is None:
            stream, primed = _modes(windows * WINDOW, dim, 1), _modes(memory, dim, 2 + r)
        else:
            order = np.random.default_rng(r).permutation(len(pool))
            cut = min(windows, (len(pool) - memory) // WINDOW) * WINDOW
            stream, primed = pool[np.sort(order[:cut])], pool[order[cut:cut + memory]]
        sel = StreamSelector(range(len(stream)), embed=lambda idx: stream[np.asarray(idx)], window=WINDOW, keep=KEEP,
                             store_size=memory, index=index, seed=r, metric=metric)
        sel.prime(primed)
        it = iter(sel)
        while sel.windows_seen < WARM:  # the first windows fault in the ring and load the kernels
            next(it)
        t = time.perf_counter()
        for _ in it:
            pass
        times.append((len(stream) - WARM * WINDOW) / (time.perf_counter() - t))
    return float(np.median(times))


def repeat_stream(x: np.ndarray, y: np.ndarray, items: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(embeddings, source item, label)`` of a stream of bursts: a random item of ``x`` repeated
    1-6 times, each copy moved by noise of 5% of the rows' typical norm.

    Example:
        >>> e, src, lab = repeat_stream(np.eye(4, dtype=np.float32), np.arange(4), 50)
        >>> e.shape, bool((np.diff(src) == 0).any())
        ((50, 4), True)
    """
    rng = np.random.default_rng(seed)
    bursts = rng.integers(0, len(x), items)
    src = np.repeat(bursts, rng.integers(1, 7, items))[:items]
    scale = 0.05 * float(np.median(np.linalg.norm(x, axis=1))) / np.sqrt(x.shape[1])
    emb = x[src] + rng.normal(scale=scale, size=(items, x.shape[1])).astype(np.float32)
    return emb.astype(np.float32), src, y[src]


VARIANTS = ("novelty (default)", "novelty + quota (64 clusters)", "loss (linear probe)", "loss + novelty (w = 0.5)",
            "loss + novelty + quota")


def quality(x: np.ndarray, y: np.ndarray, metric: str, items: int, seeds: int = 3) -> list[dict[str, Any]]:
    """Distinct items and rare-class share of each score vs a random 25% of the same stream, as
    means (the rare share's standard deviation beside it) over ``seeds`` streams. Random: the
    rare share it expects (the stream's own) and the distinct items of 5 draws."""
    sizes = np.bincount(y)
    rare = np.argsort(sizes, kind="stable")[:max(1, int(round(len(sizes) / 10)))]
    runs: dict[str, list[dict[str, Any]]] = {"random 25%": []}
    for seed in range(seeds):
        emb, src, lab = repeat_stream(x, y, items, seed=seed)
        for name, pick, secs in _picks(emb, lab, metric):
            runs.setdefault(name, []).append({**_judge(pick, src, lab, rare), "emitted": len(pick),
                                              "us_per_item": secs / items * 1e6})
        n = runs[VARIANTS[0]][-1]["emitted"]
        distinct = np.mean([len(np.unique(src[np.random.default_rng(d).choice(items, n, replace=False)]))
                            for d in range(5)])
        runs["random 25%"].append({"distinct_items": distinct, "emitted": n, "rare_share": float(np.isin(lab, rare).mean())})
    return [_mean_row(name, got, runs["random 25%"]) for name, got in runs.items()]


def _picks(emb: np.ndarray, lab: np.ndarray, metric: str) -> list[tuple[str, np.ndarray, float]]:
    """``(variant, ids emitted, seconds)`` of each score of :data:`VARIANTS` on one stream."""
    from ..selection.stream import StreamSelector

    loss = _loss_scorer(emb, lab)
    kws = ({}, {"quota_clusters": 64}, {"scorer": loss}, {"scorer": loss, "mix_novelty": 0.5},
           {"scorer": loss, "mix_novelty": 0.5, "quota_clusters": 64})
    out = []
    for name, kw in zip(VARIANTS, kws):
        sel = StreamSelector(range(len(emb)), embed=lambda idx: emb[np.asarray(idx)], window=WINDOW, keep=KEEP,
                             metric=metric, store_size=1_000_000, **kw)
        t = time.perf_counter()
        pick = np.fromiter(sel, np.int64)
        out.append((name, pick, time.perf_counter() - t))
    return out


def _mean_row(name: str, runs: list[dict[str, Any]], base: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the streams and the ratios to random's."""
    mean = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    row = {"method": name, "streams": len(runs), "emitted": round(mean["emitted"]),
           "distinct_items": round(mean["distinct_items"]), "rare_share": round(mean["rare_share"], 5),
           "rare_share_sd": round(float(np.std([r["rare_share"] for r in runs])), 5),
           "distinct_x_random": round(mean["distinct_items"] / np.mean([b["distinct_items"] for b in base]), 3),
           "rare_x_random": round(mean["rare_share"] / np.mean([b["rare_share"] for b in base]), 3)}
    if "us_per_item" in mean:
        row["us_per_item"] = round(mean["us_per_item"], 1)
    print(f"    {name:32s} distinct {row['distinct_items']:>7,} ({row['distinct_x_random']:.2f}x)  rare "
          f"{row['rare_share']:.3%} +- {row['rare_share_sd']:.3%} ({row['rare_x_random']:.2f}x)", flush=True)
    return row


def _judge(pick: np.ndarray, src: np.ndarray, lab: np.ndarray, rare: np.ndarray) -> dict[str, Any]:
    return {"distinct_items": int(len(np.unique(src[pick]))), "rare_share": float(np.isin(lab[pick], rare).mean())}


def _loss_scorer(emb: np.ndarray, lab: np.ndarray, fit: int = 5_000) -> Any:
    """``scorer(items, embeddings)``: cross-entropy of a linear probe fitted on the stream's first
    ``fit`` items (the "cheap forward pass" of online hard selection)."""
    import torch

    x, y = torch.from_numpy(emb[:fit]), torch.from_numpy(lab[:fit])
    w = torch.zeros(emb.shape[1], int(lab.max()) + 1, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=50)

    def closure() -> Any:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w, y) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w = w.detach()

    def scorer(items: list[int], e: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(torch.from_numpy(e) @ w, torch.from_numpy(lab[np.asarray(items)]),
                                                     reduction="none").numpy()

    return scorer


def stream_section(quick: bool = False, data: str | None = None) -> list[dict[str, Any]]:
    """Rows for the bench: throughput per memory size, then selection quality."""
    rows: list[dict[str, Any]] = []
    memories = (1_000, 100_000) if quick else (1_000, 10_000, 100_000, 1_000_000)
    for memory in memories:
        rate = throughput(memory, windows=10 if quick else 40, reps=1 if quick else 3)
        rows.append({"section": "stream", "what": "throughput, d=128", "memory": memory, "index": "auto",
                     "items_per_s": round(rate)})
        print(f"  memory {memory}: {rate:,.0f} items/s", flush=True)
    if not quick:
        rate = throughput(100_000, index="exact")
        rows.append({"section": "stream", "what": "throughput, d=128", "memory": 100_000, "index": "exact (first wave)",
                     "items_per_s": round(rate)})
        rows.extend(_real_throughput(data))
    name, x, y, metric = _quality_set(quick, data)
    for r in quality(x, y, metric, 20_000 if quick else 100_000):
        rows.append({"section": "stream", "what": f"quality: {name}, bursts of 1-6 near-repeats, keep 25%", **r})
    return rows


def _real_throughput(data: str | None) -> list[dict[str, Any]]:
    """Throughput on real embeddings: Fashion-MNIST CNN-128 features of 60k images and 16
    augmented copies of each (1.02M rows, cosine), memories of 100k and 1M."""
    from . import real_embeddings as R
    from .data import load_real

    try:
        ds = load_real(data)
    except FileNotFoundError as exc:
        print(f"  real-embedding throughput skipped: {exc}")
        return []
    pool, _ = R.cnn_features(ds.images, ds.labels, augment=16)
    rows = []
    for memory in (100_000, 1_000_000):
        rate = throughput(memory, pool=pool, metric="cosine")
        rows.append({"section": "stream", "what": f"throughput, Fashion-MNIST CNN-128 features ({len(pool):,}, cosine)",
                     "memory": memory, "index": "auto", "items_per_s": round(rate)})
        print(f"  CNN features, memory {memory}: {rate:,.0f} items/s", flush=True)
    return rows


def _quality_set(quick: bool, data: str | None) -> tuple[str, np.ndarray, np.ndarray, str]:
    from . import real_embeddings as R
    from .data import load_real, pixel_pca

    if not quick:
        try:
            x, y = R.text_embeddings()
            return "Debian descriptions MiniLM-384", x, np.unique(y, return_inverse=True)[1], "cosine"
        except FileNotFoundError as exc:
            print(f"  text set skipped: {exc}")
    ds = load_real(data)
    return f"{ds.source.split(' from ')[0]} pixel-PCA-64", pixel_pca(ds.images, 64), ds.labels, "l2"


__all__ = ["VARIANTS", "throughput", "repeat_stream", "quality", "stream_section"]
