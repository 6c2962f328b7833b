"""``curriculum bench``: how fast the all-points kNN graph (the workload under every geometry
score) is built, and how close to exact, next to what users would otherwise run.

For each data set - Fashion-MNIST pixel-PCA embeddings (real), clustered embeddings with low-rank
within-cluster variation (realistic), isotropic Gaussians (the hard case) - and each N, it
measures in one run, interleaved per data set: ``store.knn`` (blocked engine) at several recall
knobs, faiss IVF and HNSW at a few settings (queries timed on a sample and extrapolated), and the
peers hnswlib, pynndescent and scikit-learn when installed (``pip install curriculum[bench]``;
a missing peer is reported as skipped). Exact ground truth is faiss flat on a fixed query
sample (its full time extrapolated). Reports build / query / total seconds, recall@10, effective
GFLOP/s (the 2 N^2 d FLOPs of exact search divided by the time) and the machine's SGEMM rate
measured first; writes ``bench.json`` and ``recall_vs_time.png`` under ``--out``.

Every method's peak memory above the data (``peak_extra_mb``) is recorded, and for ours the
SGEMM-bound time of the distance evaluations it actually performs (``sgemm_bound_s``: pairs
scored x 2d / the measured SGEMM rate). Past 200k rows, a graph that ``store.plan_knn`` predicts
must be exact (isotropic data) is reported from the plan and a timed share of the exact engine
rather than run whole.

The other sections (:mod:`curriculum.bench_sections`): geometry scores end to end, global
hard-negative mining latency, in-batch miners against pytorch-metric-learning, the sampler's
draws per second and the wrapped loader's throughput; :mod:`curriculum.cli.bench_noise` finds flipped
labels beside cleanlab; :mod:`curriculum.cli.bench_curation` balances long-tailed pools beside random
subsets and the anchor's implementation; :mod:`curriculum.cli.bench_stream` times stream selection against
its memory size; :mod:`curriculum.cli.bench_distributed` runs the sharded store on ``--world`` gloo ranks
against one process. ``--sections`` picks among them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from typing import Any, Callable

import numpy as np

from .._util.blas import faiss_blas_core
from .bench_curation import curation_section, plot_curation
from .bench_distributed import NODE_CORES, distributed_section, projection
from .bench_noise import REPS, noise_section
from .bench_stream import stream_section
from .bench_sections import PeakRSS, print_table
from .data import clustered, load_real, pixel_pca
from ..neighbors import brute_knn, descent_knn
from .._util.progress import progress_bar
from ..store import EmbeddingStore
from ..store.index import auto_nlist as _auto_nlist


def sgemm_gflops() -> float:
    a = np.random.default_rng(0).random((2048, 128), dtype=np.float32)
    b = np.random.default_rng(1).random((128, 32768), dtype=np.float32)
    a @ b
    t = time.perf_counter()
    for _ in range(5):
        a @ b
    return 2 * 2048 * 128 * 32768 * 5 / (time.perf_counter() - t) / 1e9


def datasets(n: int, dim: int, data: str | None = None, real: bool = False) -> dict[str, np.ndarray]:
    """The kNN section's data sets at ``n`` rows: Fashion-MNIST pixel-PCA, clustered low-rank,
    isotropic Gaussian and, with ``real``, the real embeddings of :mod:`curriculum.cli.real_embeddings`
    (a set smaller than ``n`` is left out rather than tiled; the CNN features reach ``n`` with
    augmented copies of the images, which are distinct points)."""
    out: dict[str, np.ndarray] = _real_sets(n, data) if real else {}
    try:
        ds = load_real(data)
        imgs = ds.images
        if len(imgs) < n:  # tile with small noise to reach N (documented in the output name)
            reps = int(np.ceil(n / len(imgs)))
            imgs = np.concatenate([imgs] * reps)[:n]
        z = pixel_pca(imgs[:n], dim=min(dim, imgs[0].size))
        if z.shape[1] < dim:
            z = np.pad(z, ((0, 0), (0, dim - z.shape[1])))
        z += np.random.default_rng(0).normal(scale=1e-3, size=z.shape).astype(np.float32)
        out[f"{ds.source.split(' from ')[0]} pixel-PCA"] = np.ascontiguousarray(z, np.float32)
    except FileNotFoundError:
        pass
    out["clustered low-rank"] = clustered(n, dim, n_clusters=max(10, n // 1000), intrinsic_dim=16, seed=1)[0]
    out["isotropic Gaussian"] = np.random.default_rng(2).normal(size=(n, dim)).astype(np.float32)
    return out


def _real_sets(n: int, data: str | None) -> dict[str, np.ndarray]:
    from . import real_embeddings as R

    out: dict[str, np.ndarray] = {}
    try:
        x, _ = R.text_embeddings()
        if n <= len(x):
            rows = np.sort(np.random.default_rng(0).choice(len(x), n, replace=False)) if n < len(x) else slice(None)
            out[f"Debian descriptions MiniLM-384 (real text, of {len(x):,})"] = np.ascontiguousarray(x[rows])
        else:
            print(f"  text set: {len(x):,} rows, fewer than N={n:,}: left out (not tiled)")
    except FileNotFoundError as exc:
        print(f"  text set skipped: {exc}")
    try:
        ds = load_real(data)
        aug = max(0, int(np.ceil(n / len(ds.images))) - 1)
        x, _ = R.cnn_features(ds.images, ds.labels, augment=aug)
        if aug:  # the name stays the same at every N (peers are skipped by their time at a smaller N)
            print(f"  CNN features: {len(ds.images):,} images + {aug} augmented copies of each")
        out["Fashion-MNIST CNN-128 (real images)"] = np.ascontiguousarray(x[:n])
    except FileNotFoundError as exc:
        print(f"  CNN features skipped: {exc}")
    return out


def _faiss_index_run(x: np.ndarray, spec: str, params: dict[str, int], sample: np.ndarray,
                     k: int) -> tuple[float, float, np.ndarray]:
    """faiss alone, as its users run it (not through the store, whose IVF centroids and list
    assignment are our own): ``index_factory``, ``train`` (faiss's own k-means and sampling),
    ``add``, then ``k`` neighbours of the ``sample`` rows at ``params``. Returns ``(build s,
    query s extrapolated to every row, ids)``."""
    import faiss

    t = time.perf_counter()
    index = faiss.index_factory(x.shape[1], spec, faiss.METRIC_L2)
    index.train(x)
    index.add(x)
    b = time.perf_counter() - t
    ps = faiss.ParameterSpace()
    for name, value in params.items():
        ps.set_index_parameter(index, name, value)
    t = time.perf_counter()
    _, ids = index.search(np.ascontiguousarray(x[sample]), k)
    return b, (time.perf_counter() - t) * len(x) / len(sample), ids.astype(np.int64)


QUICK_SKIP = "skipped: --quick (numba compiles pynndescent for about a minute in every new process)"


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a[:k].tolist()) & set(b.tolist())) / k for a, b in zip(found, exact)]))


def _peers(x: np.ndarray, k: int, sample: np.ndarray) -> list[tuple[str, Callable[[], tuple[float, float, np.ndarray]]]]:
    """(name, run) for each installed peer; run -> (build s, query s extrapolated, ids of sample rows)."""
    n, d = x.shape
    peers: list[tuple[str, Any]] = []
    if importlib.util.find_spec("hnswlib"):
        def run_hnswlib(ef: int = 200) -> tuple[float, float, np.ndarray]:
            import hnswlib
            t = time.perf_counter()
            p = hnswlib.Index(space="l2", dim=d)
            p.init_index(max_elements=n, ef_construction=200, M=16)
            p.add_items(x, num_threads=os.cpu_count() or 1)
            b = time.perf_counter() - t
            p.set_ef(ef)
            t = time.perf_counter()
            ids, _ = p.knn_query(x[sample], k=k + 1, num_threads=os.cpu_count() or 1)
            return b, (time.perf_counter() - t) * n / len(sample), ids.astype(np.int64)
        peers.append(("hnswlib M16 ef200", run_hnswlib))
    else:
        peers.append(("hnswlib", None))
    if importlib.util.find_spec("pynndescent"):
        warm: list[bool] = []

        def run_nnd(nn: int) -> tuple[float, float, np.ndarray]:
            import pynndescent
            if not warm:  # numba compiles on first use (~30 s here), some paths only at realistic sizes:
                # warm up on 20,000 rows of the same data, outside the timing
                pynndescent.NNDescent(np.ascontiguousarray(x[:20_000]), n_neighbors=k + 1, random_state=0).neighbor_graph
                warm.append(True)
            t = time.perf_counter()
            idx = pynndescent.NNDescent(x, n_neighbors=nn, random_state=0)
            g, _ = idx.neighbor_graph
            return time.perf_counter() - t, 0.0, g[sample, :k + 1].astype(np.int64)
        for nn in (k + 1, 2 * k, 3 * k):  # its recall knob: more neighbours per node
            peers.append((f"pynndescent n_neighbors={nn}", lambda nn=nn: run_nnd(nn)))
    else:
        peers.append(("pynndescent", None))
    if importlib.util.find_spec("sklearn"):
        def run_sk() -> tuple[float, float, np.ndarray]:
            from sklearn.neighbors import NearestNeighbors
            t = time.perf_counter()
            nn = NearestNeighbors(n_neighbors=k + 1, n_jobs=-1).fit(x)
            b = time.perf_counter() - t
            t = time.perf_counter()
            ids = nn.kneighbors(x[sample], return_distance=False)
            return b, (time.perf_counter() - t) * n / len(sample), ids.astype(np.int64)
        peers.append(("scikit-learn NearestNeighbors", run_sk if n <= 200_000 else None))
    else:
        peers.append(("scikit-learn", None))
    return peers


SECTIONS = ("knn", "scores", "mining", "inbatch", "sampler", "loader", "noise", "curation", "stream", "distributed")


def check_bench_args(sizes: list[int], sections: tuple[str, ...]) -> None:
    """Raise a ``ValueError`` naming a section that does not exist or an N under 100."""
    bad = [x for x in sections if x not in SECTIONS]
    if bad or not sections:
        raise ValueError(f"sections: expected some of {', '.join(SECTIONS)}, got {', '.join(bad) or 'none'}")
    if not sizes or any(int(n) < 100 for n in sizes):
        raise ValueError(f"sizes: expected N values of at least 100, got {list(sizes)}")


def run_bench(sizes: list[int], dim: int = 128, k: int = 10, out: str = "bench-results", queries: int = 1000,
              data: str | None = None, quick: bool = False, sections: tuple[str, ...] = SECTIONS,
              scores_n: list[int] | None = None, max_method_s: float = 600.0, peers: bool = True,
              only: str | None = None, world: int = 4) -> dict[str, Any]:
    """Run the benchmark sections; print the tables, write ``bench.json`` (after every step, so a
    long run keeps what it measured) and the PNG; return the results."""
    from . import bench_sections as bs

    check_bench_args(sizes, sections)
    gf = sgemm_gflops()
    print(f"SGEMM: {gf:.1f} GFLOP/s on {os.cpu_count()} cores; faiss BLAS kernels: {faiss_blas_core()}")
    os.makedirs(out, exist_ok=True)
    res: dict[str, Any] = {"sgemm_gflops": gf, "cpus": os.cpu_count(), "faiss_blas_core": faiss_blas_core(),
                           "k": k, "dim": dim, "rows": [],
                           "sections": {}}

    def save() -> None:
        with open(os.path.join(out, "bench.json"), "w") as f:
            json.dump(res, f, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))

    if "knn" in sections:
        def save_knn(rows: list[dict[str, Any]]) -> None:
            res["rows"] = rows
            save()

        res["rows"] = _knn_section(sizes, dim, k, queries, data, quick, gf, save_knn, max_method_s, peers, only)
        png = _plot(res["rows"], out)
        print_table(res["rows"], ["data", "N", "method", "build_s", "query_s", "total_s", "recall@10",
                                  "gflops_effective", "sgemm_bound_s", "peak_extra_mb", "note"],
                    f"All-points kNN graph, k={k}, d={dim} (SGEMM {gf:.0f} GFLOP/s)")
        print(f"wrote {png}")
    extra = {
        "scores": lambda: bs.scores_section(scores_n or ([20_000] if quick else [min(sizes)]), dim, data=data,
                                            real=not quick),
        "mining": lambda: bs.global_mining_section([20_000] if quick else sizes, dim, data=data, real=not quick),
        "inbatch": lambda: bs.inbatch_section([256, 1024] if quick else [256, 1024, 4096], dim,
                                              reps=1 if quick else None),
        "sampler": lambda: bs.sampler_section([100_000] if quick else [1_000_000]),
        "loader": lambda: bs.loader_section(batches=30 if quick else 200, rounds=1 if quick else 5, data=data),
        "noise": lambda: noise_section(4_000 if quick else 20_000, 0 if quick else 24_000, data=data,
                                       reps=1 if quick else REPS),
        "curation": lambda: curation_section(quick, data=data),
        "stream": lambda: stream_section(quick, data=data),
        "distributed": lambda: distributed_section(2 if quick else world, 20_000 if quick else max(sizes), dim),
    }
    for name in sections:
        if name == "knn":
            continue
        print(f"== section {name}", flush=True)
        res["sections"][name] = extra[name]()
        save()
        cols = sorted({c for r in res["sections"][name] for c in r}, key=lambda c: (c != "section", c != "what", c))
        print_table(res["sections"][name], cols, f"section: {name}")
        if name == "distributed":
            proj = projection(res["sections"][name], os.cpu_count() or 1)
            res["sections"]["distributed_projection"] = proj
            save()
            print_table(proj, list(dict.fromkeys(c for r in proj for c in r)), f"projection: {NODE_CORES}-core nodes at this machine's per-core speed")
        if name == "curation":
            print(f"wrote {plot_curation(res['sections'][name], os.path.join(out, 'curation.png'))}")
    save()
    print(f"wrote {os.path.join(out, 'bench.json')}")
    return res


def _knn_section(sizes: list[int], dim: int, k: int, queries: int, data: str | None, quick: bool, gf: float,
                 save: Callable[[list[dict[str, Any]]], None], max_method_s: float = 600.0,
                 peers: bool = True, only: str | None = None) -> list[dict[str, Any]]:
    bench = _KnnBench(k, queries, gf, save, max_method_s)
    bar = progress_bar(total=(3 if quick else 5) * len(sizes), desc="bench data sets")
    for n in sizes:
        for name, x in datasets(n, dim, data, real=not quick).items():
            bar.update(1)
            if only is not None and only.lower() not in name.lower():
                continue
            bench.start(name, x)
            bench.ours((4, 8) if quick else (4, 8, 16, 32))
            bench.auto()
            if peers:
                bench.faiss_peers(quick)
                bench.other_peers(quick)
    bar.close()
    return bench.rows


class _KnnBench:
    """The kNN section's rows: per data set, exact ground truth on a fixed query sample, then each
    method timed and scored against it; a method whose smaller-N run predicts more than
    ``max_method_s`` is reported as skipped."""

    def __init__(self, k: int, queries: int, gf: float, save: Callable[[list[dict[str, Any]]], None],
                 max_method_s: float) -> None:
        self.k, self.queries, self.gf, self.save, self.max_method_s = k, queries, gf, save, max_method_s
        self.rows: list[dict[str, Any]] = []
        self.seen: dict[tuple[str, str], tuple[int, float]] = {}  # (data, method) -> (N, total s) measured

    def start(self, name: str, x: np.ndarray) -> None:
        """A new data set: its query sample and exact neighbours (faiss flat, time extrapolated)."""
        from .real_embeddings import intrinsic_dimension

        self.name, self.x = name, x
        n = len(x)
        self.intrinsic = intrinsic_dimension(x, sample=1000)
        print(f"  {name}: N={n:,} d={x.shape[1]} intrinsic dimension (TwoNN) {self.intrinsic:.1f}", flush=True)
        self.sample = np.random.default_rng(3).choice(n, min(self.queries, n), replace=False)
        _, ex = brute_knn(x[self.sample], x, self.k + 1, "l2")  # the truth: our exact search, untimed
        self.exact = self._drop_self(ex)
        import faiss

        t = time.perf_counter()  # the peer: faiss's own brute force (not brute_knn, which runs torch products)
        _, fx = faiss.knn(np.ascontiguousarray(x[self.sample]), x, self.k + 1, metric=faiss.METRIC_L2)
        exact_s = (time.perf_counter() - t) * n / len(self.sample)
        self.add("faiss Flat (exact)", 0.0, exact_s, self._drop_self(fx), "extrapolated from the query sample",
                 pairs=n * n)

    def _drop_self(self, ids: np.ndarray) -> np.ndarray:
        return np.array([r[r != q][:self.k] for r, q in zip(ids, self.sample)])

    def add(self, method: str, build: float, query: float, found: np.ndarray | None, note: str = "",
            mem: float | None = None, pairs: int | None = None) -> None:
        n, dim = self.x.shape
        total = build + query
        row = {"data": self.name, "N": n, "method": method, "build_s": build, "query_s": query, "total_s": total,
               "recall@10": None if found is None else _recall(found, self.exact),
               "gflops_effective": 2.0 * n * n * dim / total / 1e9 if total > 0 else None, "note": note,
               "peak_extra_mb": mem,
               "sgemm_bound_s": None if pairs is None else pairs * 2.0 * dim / (self.gf * 1e9),
               "intrinsic_dim": round(self.intrinsic, 1)}
        self.rows.append(row)
        self.save(self.rows)
        rec = "skipped" if found is None else f"{row['recall@10']:.4f}"
        print(f"  {self.name:28s} N={n:<8d} {method:36s} total {total:9.2f} s  recall@10 {rec} {note}", flush=True)

    def too_slow(self, method: str) -> str | None:
        """A note when the run at a smaller N predicts more than ``max_method_s`` at this N."""
        n = len(self.x)
        prev = self.seen.get((self.name, method))
        if prev is None or prev[0] >= n:
            return None
        pred = prev[1] * (n / prev[0]) * 1.3  # n log n growth of index builds and searches
        return None if pred <= self.max_method_s else f"skipped: predicted {pred:.0f} s from the N={prev[0]} run"

    def ours(self, nprobes: tuple[int, ...]) -> None:
        """The blocked engine at fixed nprobes, then the NN-descent engine by name (``knn(auto)``
        routes to it where blocks fail), on one store; with a CUDA GPU, the exact graph on it."""
        store = EmbeddingStore(self.x.shape[1], metric="l2", index="flat")
        store.add(self.x)
        descent_knn(self.x[:2000], self.k, "l2")  # load the compiled kernels outside the timing, as pynndescent's
        for npb in nprobes:
            self._timed(store, f"curriculum store.knn nprobe={npb}", method="blocked", nprobe=npb)
        self._timed(store, "curriculum store.knn method=descent", lambda r: f"{r['iterations']} rounds on {r['dim']} dims",
                    method="descent")
        import torch

        if torch.cuda.is_available():  # the exact graph on the GPU (a lent GPU machine; never CI)
            self._timed(store, "curriculum store.knn device=cuda (exact)", lambda r: r["device"], device="cuda")

    def _timed(self, store: EmbeddingStore, label: str, note: Callable[[dict[str, Any]], str] | None = None,
               **kw: Any) -> None:
        with PeakRSS() as mem:
            t = time.perf_counter()
            _, ids = store.knn(self.k, progress=True, **kw)
            el = time.perf_counter() - t
        rep = store.last_knn_report
        self.add(label, 0.0, el, ids[self.sample], note(rep) if note else "", mem=mem.mb, pairs=rep["pairs_scored"])

    def auto(self) -> None:
        """The default path, recall-checked; a plan for exact past 200k rows is reported from a timed share."""
        n = len(self.x)
        auto = EmbeddingStore(self.x.shape[1], metric="l2", exact_threshold=0)
        auto.add(self.x)
        plan = auto.plan_knn(self.k)
        if plan["method"] == "exact" and n > 200_000:
            est = _exact_estimate(self.x, self.k)
            self.add("curriculum store.knn auto", 0.0, est["seconds"], self.exact,
                     f"plan: exact (blocked recall at nprobe {plan['nprobe']}: {plan['recall_estimate']:.3f}); "
                     f"not run whole - extrapolated (x(N/m)^2) from the exact engine on a random "
                     f"{est['share']:.0%} of the rows", pairs=est["pairs"])
            return
        with PeakRSS() as mem:
            t = time.perf_counter()
            _, ids = auto.knn(self.k, progress=True)
            el = time.perf_counter() - t
        rep = auto.last_knn_report
        self.add("curriculum store.knn auto", 0.0, el, ids[self.sample],
                 f"chose {rep.get('method')} nprobe={rep.get('nprobe', '-')}", mem=mem.mb, pairs=rep.get("pairs_scored"))

    def faiss_peers(self, quick: bool) -> None:
        n, dim = self.x.shape
        for spec, params in ((f"IVF{_auto_nlist(n)},Flat", {"nprobe": 16}), (f"IVF{_auto_nlist(n)},Flat", {"nprobe": 64}),
                             ("HNSW32", {"efSearch": 64}), ("HNSW32", {"efSearch": 256})):
            if quick and params in ({"nprobe": 64}, {"efSearch": 256}):
                continue
            key = f"faiss {spec.split(',')[0].rstrip('0123456789')} {params}"
            skip = self.too_slow(key)
            if skip:
                self.add(f"faiss {spec} {params}", 0.0, 0.0, None, skip)
                continue
            with PeakRSS() as mem:
                b, q, ids = _faiss_index_run(self.x, spec, params, self.sample, self.k + 1)
            self.add(f"faiss {spec} {params}", b, q, self._drop_self(ids), "queries extrapolated", mem=mem.mb)
            self.seen[(self.name, key)] = (n, b + q)

    def other_peers(self, quick: bool = False) -> None:
        for pname, fn in _peers(self.x, self.k, self.sample):
            if fn is None:
                self.add(pname, 0.0, 0.0, None, "skipped: not installed (pip install curriculum[bench]) or too large")
                continue
            skip = self.too_slow(pname) or (QUICK_SKIP if quick and pname.startswith("pynndescent") else None)
            if skip:
                self.add(pname, 0.0, 0.0, None, skip)
                continue
            with PeakRSS() as mem:
                b, q, ids = fn()
            self.add(pname, b, q, self._drop_self(ids), "queries extrapolated" if q else "", mem=mem.mb)
            self.seen[(self.name, pname)] = (len(self.x), b + q)


def _exact_estimate(x: np.ndarray, k: int, m: int = 100_000) -> dict[str, float]:
    """Seconds of the exact graph engine on ``x``, extrapolated from a run on ``m`` random rows:
    its cost is per scored pair (both ~n^2/2 on data it cannot prune), so it scales by (n/m)^2."""
    from ..neighbors import exact_knn_graph

    n = len(x)
    sub = np.sort(np.random.default_rng(0).choice(n, min(m, n), replace=False))
    t = time.perf_counter()
    st = exact_knn_graph(np.ascontiguousarray(x[sub]), k, "l2", progress=True, return_stats=True)[2]
    el = time.perf_counter() - t
    scale = (n / len(sub)) ** 2
    return {"seconds": el * scale, "share": len(sub) / n, "pairs": int(st["pairs_scored"] * scale)}


def _plot(rows: list[dict[str, Any]], out: str) -> str:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({(r["data"], r["N"]) for r in rows})
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4.3), squeeze=False)
    for ax, (name, n) in zip(axes[0], sets):
        pts = [r for r in rows if r["data"] == name and r["N"] == n and r["recall@10"] is not None]
        fams: dict[str, list[dict[str, Any]]] = {}
        for r in pts:
            fam = r["method"].split(" nprobe")[0].split(" {")[0]
            if r["method"].endswith(" auto"):
                fam = "curriculum store.knn auto (recall-checked)"
            fams.setdefault(fam, []).append(r)
        for fam, rs in fams.items():
            rs = sorted(rs, key=lambda r: r["total_s"])
            ax.plot([r["total_s"] for r in rs], [r["recall@10"] for r in rs], marker="o", label=fam)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("all-points kNN graph, total seconds (log)")
        ax.set_ylabel("recall@10 vs exact")
        ax.set_title(f"{name}, N={n}")
        ax.axhline(0.95, color="grey", ls=":", lw=1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    from .report import save_figure

    return save_figure(fig, out, "recall_vs_time.png")


__all__ = ['sgemm_gflops', 'datasets', 'SECTIONS', 'check_bench_args', 'run_bench']
