"""The sections of ``curriculum bench`` besides the kNN graph (and the bodies of ``benchmarks/``).

Each section returns a list of row dicts and prints its table as it goes:

* :func:`scores_section` - every geometry difficulty score end to end, at each N;
* :func:`global_mining_section` - hard negatives for 256 anchors against the whole store, at each N;
* :func:`inbatch_section` - in-batch miners at several batch sizes, next to
  pytorch-metric-learning's miners when installed (time, and whether the outputs agree);
* :func:`sampler_section` - the sampler's indices per second;
* :func:`loader_section` - the wrapped DataLoader's throughput as a share of the plain one.

The scores and mining sections run on :func:`fixed_mode_pool` (real CNN features, or synthetic
modes whose number stays fixed as N grows). Peak memory is the growth of the resident set over
the section's start (Linux: the ``/proc/self/clear_refs`` high-water reset), so each method is
measured on its own.
"""

from __future__ import annotations

import importlib.util
import itertools
import time
from typing import Any, Callable

import numpy as np

from .._util.arrays import sorted_unique


# ---------------------------------------------------------------------------------------- helpers
def _rss_kb(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


class PeakRSS:
    """Context manager: ``.mb`` = peak resident memory above the level at entry (MiB), or ``None``
    where the kernel offers no high-water reset."""

    def __enter__(self) -> "PeakRSS":
        self.mb: float | None = None
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self._base = _rss_kb("VmRSS")
        except OSError:
            self._base = -1
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._base >= 0:
            self.mb = max(0.0, (_rss_kb("VmHWM") - self._base) / 1024.0)


def median_time(fn: Callable[[], Any], reps: int) -> float:
    """Median seconds of ``reps`` calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def _say(row: dict[str, Any]) -> None:
    """One progress line per measured row."""
    print("  " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                           if k != "section"), flush=True)


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> str:
    """Print ``rows`` as an aligned text table (and return the text)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(x, widths)) for x in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


# ----------------------------------------------------------------------------------- geometry scores
FIXED_MODES = 100   # modes of the synthetic fallback pool at every N (modes growing with N flatter a blocked engine)
PROTOTYPES = 1_000  # prototype_distance's clusters at every N (so its cost grows with N alone)


def fixed_mode_pool(n: int, dim: int = 128, data: str | None = None, real: bool = True,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """``(vectors, labels, name)``: ``n`` rows whose number of modes stays the same at every N, so a
    cost measured at several N grows with the rows alone. With ``real`` (and the Fashion-MNIST
    images found): the CNN-128 features of :mod:`.real_embeddings` - 10 classes, N reached with
    augmented copies of the 60k images, labels the classes; else :data:`FIXED_MODES` clustered
    low-rank modes in ``dim`` dimensions, labels the mode modulo 10.

    Example:
        >>> x, y, name = fixed_mode_pool(2_000, 16, real=False)
        >>> x.shape, int(y.max()) + 1, name
        ((2000, 16), 10, 'clustered low-rank, 100 modes, 16-d')
    """
    if real:
        from . import real_embeddings as R
        from .data import load_real

        try:
            ds = load_real(data)
        except FileNotFoundError as exc:
            print(f"  CNN features unavailable ({exc}): synthetic modes instead", flush=True)
        else:
            aug = max(0, int(np.ceil(n / len(ds.images))) - 1)
            x, y = R.cnn_features(ds.images, ds.labels, augment=aug, progress=progress)
            return np.ascontiguousarray(x[:n]), np.asarray(y[:n]), "Fashion-MNIST CNN-128 (10 classes)"
    from .data import clustered

    x, lab = clustered(n, dim, n_clusters=FIXED_MODES, seed=0)
    return x, lab % 10, f"clustered low-rank, {FIXED_MODES} modes, {dim}-d"


def scores_section(sizes: int | list[int], dim: int = 128, k: int = 10, progress: bool = True,
                   data: str | None = None, real: bool = True) -> list[dict[str, Any]]:
    """Each geometry score end to end on a cosine store of each size in ``sizes``, on
    :func:`fixed_mode_pool` (the same modes at every N)."""
    rows: list[dict[str, Any]] = []
    for n in ([sizes] if isinstance(sizes, int) else sizes):
        x, lab, name = fixed_mode_pool(n, dim, data, real, progress)
        rows += _scores_at(x, lab, name, k, progress)
        del x, lab
    return rows


def _scores_at(x: np.ndarray, lab: np.ndarray, name: str, k: int, progress: bool) -> list[dict[str, Any]]:
    from .. import EmbeddingStore
    from ..difficulty import (class_margin, knn_distance, label_disagreement, label_entropy, near_duplicates,
                             prototype_distance)

    n = len(x)
    store = EmbeddingStore(x.shape[1], metric="cosine")
    store.add(x, labels=lab)
    rows: list[dict[str, Any]] = []

    def run(what: str, fn: Callable[[], Any], graph_s: float = 0.0) -> float:
        with PeakRSS() as mem:
            t = time.perf_counter()
            fn()
            s = time.perf_counter() - t
        rows.append({"section": "scores", "data": name, "N": n, "what": what, "seconds": s,
                     "end_to_end_s": s + graph_s, "peak_extra_mb": mem.mb})
        print(f"  N={n:,} {what}: {s:.2f} s (end to end {s + graph_s:.2f} s)", flush=True)
        return s

    t_graph = run(f"kNN graph k={k} (store.knn auto)", lambda: store.knn(k, progress=progress))
    rep = store.last_knn_report
    rows[-1]["what"] += f" -> {rep.get('method', 'exact')}"
    rows[-1]["recall_estimate"] = rep.get("recall_estimate")
    for what, fn in ((f"knn_distance(k={k})", lambda: knn_distance(store, k)),
                     (f"label_disagreement(k={k})", lambda: label_disagreement(store, k)),
                     (f"label_entropy(k={k})", lambda: label_entropy(store, k)),
                     (f"class_margin(k={k})", lambda: class_margin(store, k))):
        run(what, fn, t_graph)  # the graph is cached: each score's own time + the shared graph
    n_proto = min(PROTOTYPES, max(2, n // 100))
    run(f"prototype_distance(n_clusters={n_proto})", lambda: prototype_distance(store, n_proto))
    run("near_duplicates(0.95)", lambda: near_duplicates(store, 0.95, progress=progress))
    return rows


# ------------------------------------------------------------------------------------ global mining
def global_mining_section(sizes: list[int], dim: int = 128, k: int = 20, anchors: int = 256,
                          nprobes: tuple[int | None, ...] = (None, 16),
                          tables: tuple[tuple[str, int | None], ...] = (("descent", None), ("blocked", None),
                                                                        ("blocked", 64)),
                          data: str | None = None, real: bool = True) -> list[dict[str, Any]]:
    """Latency of ``HardNegativeMiner.negatives`` for a batch of anchors (median of 10 batches)
    and the recall of its negatives against exact search with the same label filter: through the
    store's index at each of ``nprobes`` (``None``: the store's default), then through a
    negatives table (:meth:`~curriculum.HardNegativeMiner.build_table`) built by each of
    ``tables`` (method, nprobe; ``None``: for recall 0.95) - its build seconds reported beside
    the per-batch latency. The pool at every size is :func:`fixed_mode_pool` (the same modes)."""

    from .. import EmbeddingStore, HardNegativeMiner

    rows: list[dict[str, Any]] = []
    for n in sizes:
        x, labels, name = fixed_mode_pool(n, dim, data, real)
        store = EmbeddingStore(x.shape[1], metric="cosine")
        store.add(x, labels=labels)
        miner = HardNegativeMiner(store, k=k)
        t = time.perf_counter()
        miner.negatives(np.arange(anchors))  # builds the index past the exact threshold
        first = time.perf_counter() - t
        exact = HardNegativeMiner(_flat_copy(store, x, labels), k=k)
        batches = [np.random.default_rng(100 + r).choice(n, anchors, replace=False) for r in range(10)]
        refs = [exact.negatives(b).ids for b in batches[:3]]

        def measure(what: str, **extra: Any) -> None:
            ts = []
            for b in batches:
                t = time.perf_counter()
                miner.negatives(b)
                ts.append(time.perf_counter() - t)
            rec = np.mean([len(set(a[a >= 0].tolist()) & set(r.tolist())) / k
                           for b, ref in zip(batches, refs) for a, r in zip(miner.negatives(b).ids, ref)])
            rows.append({"section": "global mining", "data": name, "N": n,
                         "what": f"{anchors} anchors, k={k}, {what}",
                         "ms": float(np.median(ts)) * 1e3, "recall_vs_exact": float(rec), **extra})
            _say(rows[-1])

        default = store.index_info.get("nprobe")
        for npb in nprobes:
            if npb is not None and default is None:
                continue
            if default is not None:
                store.set_search_params(nprobe=default if npb is None else npb)
            nprobe_now = store.index_info.get("nprobe")
            measure(f"{store.active_index}{'' if nprobe_now is None else f' nprobe={nprobe_now}'}", first_call_s=first)
        if default is not None:
            store.set_search_params(nprobe=default)
        for method, npb in tables:
            miner.build_table(nprobe=npb, method=method)
            measure(f"negatives table ({_table_how(miner.table_info, npb)})", first_call_s=miner.table_info["seconds"])
        miner.drop_table()
        del store, exact, x
    return rows


def _table_how(info: dict[str, Any], nprobe: int | None) -> str:
    """How a negatives table was built, for the bench's row label."""
    if info["method"] == "descent":
        how = f"seeded nprobe={info['nprobe']}, {info['rounds']} rounds, estimate {info['recall_estimate']:.3f}"
    else:
        how = f"nprobe={info['nprobe']}" if nprobe is not None else \
            f"auto nprobe={info['nprobe']}, estimate {info['recall_estimate']:.3f}"
    return f"{info['method']}, {how}, k={info['k']}"


def _flat_copy(store: Any, x: np.ndarray, labels: np.ndarray) -> Any:
    from .. import EmbeddingStore

    s = EmbeddingStore(store.dim, metric=store.metric, index="flat")
    s.add(x, labels=labels)
    return s


# ----------------------------------------------------------------------------------- in-batch miners
def inbatch_section(batches: list[int], dim: int = 128, device: str = "cpu",
                    reps: int | None = None) -> list[dict[str, Any]]:
    """Ours vs pytorch-metric-learning (when installed) at each batch size: median ms, peak extra
    memory and whether the two return the same tuples (batch-hard, multi-similarity: same
    definitions; semi-hard: every semi-hard triplet on L2-normalised embeddings, as PML's
    ``TripletMarginMiner(type_of_triplets="semihard")`` returns them). ``device="cuda"`` mines
    CUDA batches (timed to completion with ``torch.cuda.synchronize``). ``reps``: timed calls
    after the warm-up (default 5 up to B = 1,024, else 2)."""
    import torch

    from ..mining import BatchHardMiner, MultiSimilarityMiner, SemiHardMiner

    pml = importlib.util.find_spec("pytorch_metric_learning") is not None
    rows: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(0)
    for b in batches:
        emb = torch.randn(b, dim, generator=g).to(device)
        lab = torch.randint(0, max(2, b // 8), (b,), generator=g).to(device)
        sync = torch.cuda.synchronize if emb.is_cuda else (lambda: None)
        ours = {"batch-hard": BatchHardMiner(), "semi-hard": SemiHardMiner(0.2, distance="l2", all_negatives=True),
                "multi-similarity": MultiSimilarityMiner(0.1)}
        theirs: dict[str, Any] = {}
        if pml:
            from pytorch_metric_learning import miners

            theirs = {"batch-hard": miners.BatchHardMiner(),
                      "semi-hard": miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard"),
                      "multi-similarity": miners.MultiSimilarityMiner(epsilon=0.1)}
        n_reps = reps or (5 if b <= 1024 else 2)
        if b > 2048:  # every semi-hard triplet of B=4096 is ~1e8 triplets: PML's miner ran out of 24 GB
            ours["semi-hard"] = SemiHardMiner(0.2, distance="l2")  # FaceNet: one negative per pair
        for name, miner in ours.items():
            x = torch.nn.functional.normalize(emb, dim=1) if name == "semi-hard" else emb
            with PeakRSS() as mem:
                ms = median_time(lambda: (miner(x, lab), sync()), n_reps) * 1e3
            row: dict[str, Any] = {"section": "in-batch", "what": f"{name} B={b}" + ("" if device == "cpu" else f" {device}"),
                                   "ms": ms, "peak_extra_mb": mem.mb}
            if pml and b > 2048 and name == "semi-hard":
                row["what"] += " (closest semi-hard per pair)"
                row["pml_ms"] = "skipped: all semi-hard triplets at this B exhaust memory"
            elif pml:
                other = theirs[name]
                row["pml_ms"] = median_time(lambda: (other(emb, lab), sync()), n_reps) * 1e3
                row["same_output"] = _same_tuples(miner(x, lab), other(emb, lab))
            else:
                row["pml_ms"] = "skipped: pytorch-metric-learning not installed"
            rows.append(row)
            _say(rows[-1])
    return rows


def _same_tuples(a: tuple, b: tuple) -> bool:
    """Whether two miners' outputs hold the same set of tuples (order and repeats aside): each
    tuple packed into one integer (indices below 2**20), compared as sorted unique arrays (by a sort,
    :func:`~curriculum._util.arrays.sorted_unique`: ``np.unique``'s hashing took 7 s for 5M such keys)."""
    def as_keys(t: tuple) -> np.ndarray:
        cols = [np.asarray(x.cpu().numpy(), np.int64) for x in t]
        if len(cols) == 4:  # pairs: (a1, p, a2, n), tagged positive / negative
            cols = [np.concatenate([cols[0], cols[2]]), np.concatenate([cols[1], cols[3]]),
                    np.repeat([0, 1], [len(cols[0]), len(cols[2])])]
        key = np.zeros(len(cols[0]), np.int64)
        for c in cols:
            key = (key << 20) | c
        return sorted_unique(key)

    return bool(np.array_equal(as_keys(a), as_keys(b)))


# --------------------------------------------------------------------------------------- the sampler
def sampler_section(sizes: list[int], batch_size: int = 256) -> list[dict[str, Any]]:
    """Indices per second of every strategy: the vectorised epoch, the Python iterator a
    DataLoader consumes and the batch sampler (iterators timed on the first 1M indices)."""
    from .. import pacing
    from ..sampling.sampler import STRATEGIES, CurriculumBatchSampler, CurriculumSampler

    rows: list[dict[str, Any]] = []
    for n in sizes:
        scores = np.random.default_rng(0).random(n)
        labels = np.random.default_rng(1).integers(0, 100, n)
        steps = n // batch_size
        for strategy, balance in [(s, None) for s in STRATEGIES] + [("threshold", "class")]:
            kw = dict(strategy=strategy, batch_size=batch_size, balance=balance, groups=labels if balance else None)
            t = time.perf_counter()
            s = CurriculumSampler(scores, pacing.Root(0.1, steps), **kw)
            t_init = time.perf_counter() - t
            t = time.perf_counter()
            idx = s.epoch_indices(0)
            t_epoch = time.perf_counter() - t
            m = min(n, 1_000_000)
            t = time.perf_counter()
            for _ in itertools.islice(iter(s), m):
                pass
            t_iter = time.perf_counter() - t
            bs = CurriculumBatchSampler(scores, pacing.Root(0.1, steps), **kw)
            t = time.perf_counter()
            nb = sum(1 for _ in itertools.islice(iter(bs), m // batch_size))
            t_batch = time.perf_counter() - t
            rows.append({"section": "sampler", "N": n, "what": strategy + (f"+{balance}" if balance else ""),
                         "setup_s": t_init, "epoch_indices_per_s": len(idx) / t_epoch,
                         "iter_indices_per_s": m / t_iter, "batch_sampler_indices_per_s": nb * batch_size / t_batch})
            _say(rows[-1])
    return rows


# ---------------------------------------------------------------------------------------- the loader
class _Images:
    """Images as a map-style dataset with the usual per-item tensor transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch

        x = torch.from_numpy(self.images[i]).float().div_(255.0).sub_(0.5).div_(0.5).unsqueeze(0)
        return x, int(self.labels[i])


def _consume(loader: Any, n_batches: int, feedback: bool, step: Callable[[Any, Any], Any] | None) -> float:
    """Batches per second of a loop computing a per-sample value from each batch (a real CNN
    training step's loss with ``step``) and, with ``feedback``, reporting it to the loader."""
    t = time.perf_counter()
    done = 0
    while done < n_batches:
        for x, y in loader:
            per_sample = step(x, y) if step is not None else x.mean(dim=(1, 2, 3))
            if feedback:
                loader.feedback(loss=per_sample)
            done += 1
            if done >= n_batches:
                break
    return n_batches / (time.perf_counter() - t)


def loader_section(batches: int = 200, batch_size: int = 256, workers: int = 2, rounds: int = 5,
                   data: str | None = None) -> list[dict[str, Any]]:
    """Wrapped vs plain DataLoader on Fashion-MNIST (digits when absent), rounds interleaved;
    median batches/s and its ratio to the matching plain loader."""
    import torch
    from torch.utils.data import DataLoader

    from .. import Recorder, pacing, wrap
    from .data import load_real

    ds = load_real(data)
    dataset = _Images(ds.images, ds.labels)
    n = len(dataset)
    scores = np.random.default_rng(0).random(n)

    def plain() -> Any:
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                          persistent_workers=workers > 0)

    def wrapped(recorder: bool = False, rescore: bool = False) -> Any:
        rec = Recorder(n, 10) if recorder else None
        return wrap(plain(), difficulty=scores, pacing=pacing.Root(0.2, 1000), recorder=rec,
                    rescore_every=25 if rescore else None)

    torch.manual_seed(0)
    side = ds.images.shape[-1] // 4
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * side * side, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def train_step(x: Any, y: Any) -> Any:
        loss = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        return loss.detach()

    variants = {  # name: (make loader, feedback, training step, baseline)
        "plain DataLoader": (plain, False, None, None),
        "wrap (root pacing)": (wrapped, False, None, "plain DataLoader"),
        "wrap + feedback(loss)": (lambda: wrapped(recorder=True), True, None, "plain DataLoader"),
        "wrap + feedback + rescore every 25": (lambda: wrapped(True, True), True, None, "plain DataLoader"),
        "plain + CNN training step": (plain, False, train_step, None),
        "wrap + feedback + rescore + CNN step": (lambda: wrapped(True, True), True, train_step,
                                                 "plain + CNN training step"),
    }
    loaders = {k: v[0]() for k, v in variants.items()}
    for k, (_, fb, st, _) in variants.items():  # warm-up: start the workers
        _consume(loaders[k], 5, fb, st)
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for k, (_, fb, st, _) in variants.items():
            rates[k].append(_consume(loaders[k], batches // (4 if st else 1), fb, st))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k}={v[-1]:.1f}" for k, v in rates.items()), flush=True)
    rows = []
    for k, v in rates.items():
        base = float(np.median(rates[variants[k][3] or k]))
        rows.append({"section": "loader", "what": k, "batches_per_s": float(np.median(v)),
                     "ratio_to_plain": float(np.median(v)) / base, "spread": f"{min(v):.1f}-{max(v):.1f}",
                     "data": ds.source})
    return rows


__all__ = ['PeakRSS', 'median_time', 'print_table', 'fixed_mode_pool', 'scores_section', 'global_mining_section',
           'inbatch_section', 'sampler_section', 'loader_section']
