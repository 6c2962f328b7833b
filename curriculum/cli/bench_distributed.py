"""``curriculum bench --sections distributed``: the sharded store on ``world`` gloo ranks against the
same code in one process (a :class:`~curriculum.store.ShardedStore` without a process group).

The pool has a fixed number of modes (100, as the curation section's 1M pool) whatever N, so a
larger pool is denser, not more spread out. Every rank generates its chunks of the pool (which
are *not* its shard: ``add`` routes them by id) and runs, between barriers: the routed ``add``,
each shard's index build,
``search`` of 1,024 queries per rank (k = 10; the one process asks them all), the all-points ``knn`` graph (k = 10, its recall
measured on 500 rows against brute force over every shard), the negatives table
(``HardNegativeMiner.build_table``, k = 20, each row labelled by its mode modulo 10 - classes that
follow the clusters; recall of the 20 nearest other-label rows on the same 500 rows), ``kmeans``
(100 clusters, 10 Lloyd steps over all rows), ``curate`` (10%), and an all-to-all of 32 MB per
rank for the bandwidth.
Per step: seconds (slowest rank), bytes sent (all ranks), peak resident memory (largest rank) -
and the ratio to one process. Threads per rank: cores / world (the one process gets all cores).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

import numpy as np

CHUNK = 50_000
MODES = 100
CLASSES = 10  # the negatives table's step labels each row by its mode modulo this
INTRINSIC = 16
K = 10
TABLE_K = 20  # the negatives table's miner: k = 20 (its table holds 2k + 8 per row)
QUERIES = 1024
BATCH_KEYS = ("batch_rows_max", "batch_rows_min", "batch_seconds_max", "batch_seconds_min")  # the region route's batches


def pool_chunk(c: int, dim: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk ``c`` of the fixed-modes pool: ``(vectors, ids)``, the same at any world size. 100
    long-tailed modes (Pareto sizes), each a 16-dimensional random subspace plus a little isotropic
    noise - the low intrinsic dimension of real embeddings, not isotropic Gaussian blobs.

    Example:
        >>> x, ids = pool_chunk(1, 8, 120_000); x.shape, int(ids[0])
        ((50000, 8), 50000)
    """
    centres, bases, sizes = _fixed_modes(dim)
    rng = np.random.default_rng([c, 7])
    lab = _draw_modes(rng, c, n, sizes)
    rows = len(lab)
    z = rng.standard_normal((rows, INTRINSIC), np.float32)
    x = centres[lab] + 0.1 * rng.standard_normal((rows, dim), np.float32)
    for m in np.unique(lab):
        at = np.flatnonzero(lab == m)
        x[at] += z[at] @ bases[m]
    return x.astype(np.float32), np.arange(c * CHUNK, c * CHUNK + rows, dtype=np.int64)


def pool_classes(c: int, dim: int, n: int) -> np.ndarray:
    """The class of each row of :func:`pool_chunk` ``(c, dim, n)``: its mode modulo :data:`CLASSES`
    (classes that follow the clusters, as the labels of real embeddings do).

    Example:
        >>> pool_classes(1, 8, 120_000).shape, int(pool_classes(1, 8, 120_000).max()) < CLASSES
        ((50000,), True)
    """
    return _draw_modes(np.random.default_rng([c, 7]), c, n, _fixed_modes(dim)[2]) % CLASSES


def _fixed_modes(dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pool's modes: centres, 16-dimensional bases and long-tailed sizes (the same for any chunk)."""
    fixed = np.random.default_rng(12345)
    centres = fixed.normal(size=(MODES, dim)).astype(np.float32) * 3
    bases = fixed.normal(size=(MODES, INTRINSIC, dim)).astype(np.float32) / np.sqrt(INTRINSIC)
    return centres, bases, fixed.pareto(1.0, MODES) + 1


def _draw_modes(rng: np.random.Generator, c: int, n: int, sizes: np.ndarray) -> np.ndarray:
    """The mode of each row of chunk ``c``: the first draw of the chunk's generator ``rng``."""
    return rng.choice(MODES, min(CHUNK, n - c * CHUNK), p=sizes / sizes.sum())


def _peak_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


class _Clock:
    """Seconds of each step on this rank, between barriers, with the bytes it sent."""

    def __init__(self, store: Any) -> None:
        self.store, self.rows = store, {}

    def step(self, name: str, fn: Any) -> Any:
        import torch.distributed as dist

        on = dist.is_available() and dist.is_initialized()
        if on:
            dist.barrier()
        b0, t = self.store.bytes_sent, time.perf_counter()
        out = fn()
        if on:
            dist.barrier()
        self.rows[name] = {"seconds": time.perf_counter() - t, "bytes": self.store.bytes_sent - b0,
                           "peak_mb": _peak_mb()}
        return out


def run_steps(n: int, dim: int, queries: int, seed: int = 0) -> dict[str, Any]:
    """Every step on this process's rank (or alone); returns per-step rows and the graph's recall.
    ``queries`` in all, split over the ranks (rank ``r`` asks rows ``r::world`` of one query set)."""
    import curriculum as cl
    from ..store import ShardedStore

    store = ShardedStore(dim, metric="l2")
    clock = _Clock(store)
    chunks = range(store.rank, -(-n // CHUNK), store.world)
    parts = [pool_chunk(c, dim, n) for c in chunks]
    x = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, dim), np.float32)
    ids = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    labels = np.concatenate([pool_classes(c, dim, n) for c in chunks]) if parts else np.zeros(0, np.int64)
    clock.step("add (routed by id)", lambda: store.add(x, ids, labels))
    x = parts = None  # the rows now live in the store
    clock.step("build each shard's index", lambda: store.build(progress=False))
    q = np.random.default_rng(seed).normal(size=(queries, dim)).astype(np.float32)[store.rank::store.world] * 3
    clock.step(f"search {queries} queries k={K}", lambda: store.search(q, K))
    knn = clock.step(f"knn graph k={K}", lambda: store.knn(K, progress=False))
    graph_report = dict(store.last_knn_report)
    pick = np.sort(np.random.default_rng(seed).choice(n, 500, replace=False))
    mine = np.flatnonzero(np.isin(store.ids, pick))
    recall = _sampled_recall(store, mine, knn[1][mine], K)
    miner = cl.HardNegativeMiner(store, k=TABLE_K, exclude_batch=False)
    clock.step(f"negatives table k={2 * TABLE_K + 8} (classes = modes % {CLASSES})",
               lambda: miner.build_table(progress=False))
    table_nprobe = store.last_knn_report.get("nprobe")  # the labelled blocked ring's
    table_recall = _sampled_recall(store, mine, miner.negatives(store.ids[mine]).ids, TABLE_K, other_label=True)
    clock.step(f"kmeans {MODES} clusters", lambda: store.kmeans(MODES, niter=10))
    clock.step("curate 10%", lambda: cl.curate(store, n // 10, progress=False))
    block = np.zeros((store.world, 32 * 2**20 // 4 // max(store.world, 1)), np.float32)
    clock.step("all-to-all 32 MB/rank", lambda: store.comm.exchange(list(block)))
    return {"rows": clock.rows, "recall": recall, "rank": store.rank, "world": store.world,
            "table_recall": table_recall, "table_method": " / ".join(
                str(miner.table_info[key]) for key in ("method", "batch_engine") if miner.table_info.get(key))
            + (f" nprobe={table_nprobe}" if table_nprobe else ""),
            "graph_method": graph_report.get("method", "exact"),
            "graph_nprobe": graph_report.get("nprobe"),
            "graph_copies": graph_report.get("copies_per_row"),
            "graph_batches": {key: graph_report[key] for key in BATCH_KEYS if key in graph_report}}


def _sampled_recall(store: Any, mine: np.ndarray, got: np.ndarray, k: int, other_label: bool = False) -> float:
    """Recall@k of this rank's sampled rows' lists ``got`` (rows ``mine`` of its shard) against
    brute force over every shard (``other_label``: over the rows of another label). Collective."""
    ids = np.concatenate(store.comm.all_gather(store.ids[mine]))
    vec = np.concatenate(store.comm.all_gather(store.vectors(store.ids[mine])))
    labels = np.concatenate(store.comm.all_gather(store.labels[mine])) if other_label else None
    truth = store.exact_neighbours(vec, ids, k, q_labels=labels)[1]
    got = np.concatenate(store.comm.all_gather(np.ascontiguousarray(got[:, :k], np.int64)))
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(got, truth)]))


def _worker(rank: int, world: int, initfile: str, out: str, n: int, dim: int) -> None:
    import faiss
    import torch

    threads = max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    try:  # the NN-descent and graph-search kernels: as many threads as torch's and faiss's
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover
        pass
    torch.distributed.init_process_group("gloo", init_method=f"file://{initfile}", rank=rank, world_size=world)
    res = run_steps(n, dim, QUERIES * world)
    with open(f"{out}.{rank}.json", "w") as f:
        json.dump(res, f)
    torch.distributed.destroy_process_group()


def _graph_work(n: float, world: int, route: str, copies: float = 1.0) -> float:
    """Rows' worth of graph work on one rank: its shard (the blocked ring), its shard and
    ``world / 2`` merged pairs (the NN-descent ring), or its batch - ``copies`` x its shard -
    (the region route)."""
    from ..store.sharded import MERGE_COST

    shard = n / world
    if route == "descent":
        return shard * (1 + MERGE_COST * 2 * (world // 2))
    return shard * copies if route == "region" else shard


def _route(engine: str) -> str:
    return next((r for r in ("region", "descent") if engine.startswith(r)), "blocked")


def graph_mb(n: float, world: int, dim: int, route: str, copies: float = 1.0) -> float:
    """MB a rank sends for one graph: the blocked ring passes every row through every rank
    (``N (4d + 12k + 24)``), the NN-descent ring half of them with their graphs and the lists the
    rest (``N / 2 (4d + 28k + 8)``), the region route its rows' copies once and their lists back
    (``copies N / W (4d + 12k + 16)``)."""
    if route == "region":
        return copies * n / world * (4 * dim + 12 * K + 16) / 2**20
    return (n / 2 * (4 * dim + 28 * K + 8) if route == "descent" else n * (4 * dim + 12 * K + 24)) / 2**20


def _engine(res: dict[str, Any]) -> str:
    return res["graph_method"] + (f" nprobe={res['graph_nprobe']}" if res.get("graph_nprobe") else "")


def distributed_section(world: int = 4, n: int = 1_000_000, dim: int = 128) -> list[dict[str, Any]]:
    """Rows of the section: each step on ``world`` ranks and in one process, with the ratios."""
    import torch.multiprocessing as mp

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        mp.spawn(_worker, args=(world, os.path.join(tmp, "init"), os.path.join(tmp, "out"), n, dim),
                 nprocs=world, join=True)
        print(f"  {world} ranks: {time.perf_counter() - t:.1f} s", flush=True)
        ranks = [json.load(open(os.path.join(tmp, f"out.{r}.json"))) for r in range(world)]
    t = time.perf_counter()
    alone = run_steps(n, dim, QUERIES * world)
    print(f"  one process: {time.perf_counter() - t:.1f} s", flush=True)
    rows = []
    for step, one in alone["rows"].items():
        per = [r["rows"][step] for r in ranks]
        s = max(p["seconds"] for p in per)
        sent = sum(p["bytes"] for p in per)
        row = {"section": "distributed", "what": step, "N": n, "dim": dim, "world": world, "seconds": s,
               "one_process_s": one["seconds"], "speedup": one["seconds"] / s, "bytes_sent": sent,
               "MB_per_s_per_rank": sent / world / s / 2**20,
               "peak_mb_per_rank": max(p["peak_mb"] for p in per), "one_process_peak_mb": one["peak_mb"]}
        if step.startswith("all-to-all"):
            row.update(one_process_s=None, speedup=None, one_process_peak_mb=None)
        if step.startswith("negatives table"):
            row.update(recall=min(r["table_recall"] for r in ranks), one_process_recall=alone["table_recall"],
                       engine=ranks[0]["table_method"], one_process_engine=alone["table_method"])
        if step.startswith("knn"):
            row.update(recall=min(r["recall"] for r in ranks), one_process_recall=alone["recall"],
                       engine=_engine(ranks[0]), one_process_engine=_engine(alone), copies=ranks[0]["graph_copies"],
                       **ranks[0]["graph_batches"])
            if _route(row["engine"]) == "region":
                row["region_outlook"] = _outlook(n, dim, OUTLOOK_WORLDS)
        rows.append(row)
    return rows


OUTLOOK_WORLDS = (8, 16, 64)  # the region route's ceiling and copies, computed in one process, at these worlds


def _outlook(n: int, dim: int, worlds: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """:func:`~curriculum.store.regions.region_outlook` of the pool at each world (for the projection)."""
    from ..store.regions import region_outlook

    parts = [pool_chunk(c, dim, n)[0] for c in range(-(-n // CHUNK))]
    x = np.concatenate(parts)
    out = {}
    for w in worlds:
        o = region_outlook(x, K, "l2", w)
        out[str(w)] = {"ceilings": {str(a): round(b, 4) for a, b in o["ceilings"].items()},
                       "copies": {str(a): round(b, 3) for a, b in o["copies"].items()},
                       "largest": {str(a): round(b, 3) for a, b in o["largest"].items()}, "overlap": o["cleared"],
                       "owners": o["owners"]}
        print(f"  region outlook at {w} ranks: {out[str(w)]}", flush=True)
    return out


NODE_CORES = 32           # the projection's node: 32 cores at this machine's per-core speed
NETWORK_MB_S = 10_000.0   # ... and a 100 Gb/s network (the measured loopback rate is also shown)


def projection(rows: list[dict[str, Any]], cores: int) -> list[dict[str, Any]]:
    """What the measured steps project to at 100M and 1B rows, 64 and 256 dims, on 8, 16 and 64 nodes.

    Per-rank compute is scaled from the measured slowest rank: work per core (the ranks here
    share ``cores`` cores) times the rows per rank and dims; the graph's blocked work grows with
    the rows per rank (nprobe held at the measured one: the pool's modes stay fixed), the NN-descent
    ring's with every shard a rank meets (its own, then ``world / 2`` merged pairs of twice its rows
    at ``store.sharded.MERGE_COST``: ``(1 + 1.4 world / 2) / world`` of the rows in all, so it does not shrink with
    more nodes), the region route's with its largest batch (in shards, from
    :func:`~curriculum.store.regions.region_outlook` of the pool at each node count: the owner
    map and overlap ``auto`` takes; the measured run's ranks share the cores, so its work is
    scaled at its mean batch, ``copies`` x the shard; where no overlap clears the target the row
    says a ring would run and projects nothing), search with queries x the square root of the shard (IVF lists), k-means with rows
    per rank. Bytes per rank follow the protocol: the blocked ring sends every row through every
    rank (``N (4d + 12k + 24)``), the NN-descent ring half of them with their graphs and the lists
    the rest (``N / 2 (4d + 16k + 8) + N / 2 12k``), the region route its copies once
    (:func:`graph_mb`), search gathers the queries, gathered scores are
    ``16 N``. Node-hours = nodes x hours.

    Example:
        >>> r = [{"what": "knn graph k=10", "N": 10**6, "dim": 128, "world": 4, "seconds": 100.0},
        ...      {"what": "all-to-all 32 MB/rank", "N": 10**6, "dim": 128, "world": 4, "seconds": 1.0,
        ...       "MB_per_s_per_rank": 200.0}]
        >>> p = {(x["N"], x["dim"], x["nodes"]): x for x in projection(r, cores=2)}
        >>> p[(10**9, 64, 64)]["graph_compute_s"] < p[(10**9, 64, 8)]["graph_compute_s"]
        True
    """
    m = {r["what"].split(" ")[0]: r for r in rows}
    g = m["knn"]
    n_m, d_m, w_m = g["N"], g["dim"], g["world"]
    core_share = min(1.0, cores / w_m)  # cores each measured rank had
    route, c_m = _route(str(g.get("engine", ""))), g.get("copies") or 1.0
    bw_here = next((r.get("MB_per_s_per_rank") for r in rows if r["what"].startswith("all-to-all")), None)
    out = []
    for n in (10**8, 10**9):
        for d in (64, 256):
            for nodes in (8, 16, 64):
                ns, speed = n / nodes, NODE_CORES / core_share  # rows per node; node speed over a measured rank
                look = (g.get("region_outlook") or {}).get(str(nodes), {})
                if route == "region" and look.get("overlap") is None:
                    out.append({"N": n, "dim": d, "nodes": nodes, "route": "a ring (region ceiling below target)"})
                    continue
                copies = look["copies"][str(look["overlap"])] if route == "region" else 1.0
                largest = look.get("largest", look.get("copies", {})).get(str(look.get("overlap")), copies)
                work = _graph_work(n, nodes, route, largest) / _graph_work(n_m, w_m, route, c_m)
                graph_cpu = g["seconds"] * work * (d / d_m) / speed
                ring_mb = graph_mb(n, nodes, d, route, copies)
                row = {"N": n, "dim": d, "nodes": nodes,
                       "route": route + (f" x{copies:.2f}, largest x{largest:.2f}" if route == "region" else ""),
                       "rows_per_node": int(ns),
                       "memory_gb_per_node": round(ns * (8 * d + 12 * K) / 2**30 + 16 * n / 2**30, 1),
                       "graph_compute_s": graph_cpu, "graph_MB_per_node": ring_mb,
                       "graph_s (100 Gb/s)": graph_cpu + ring_mb / NETWORK_MB_S,
                       "graph_node_hours (100 Gb/s)": nodes * (graph_cpu + ring_mb / NETWORK_MB_S) / 3600}
                if bw_here:
                    row["graph_s (loopback rate here)"] = graph_cpu + ring_mb / bw_here
                if "kmeans" in m:
                    km = m["kmeans"]
                    row["kmeans_10_iters_s"] = km["seconds"] * (ns / (n_m / w_m)) * (d / d_m) / speed
                if "search" in m:
                    s = m["search"]
                    row["search_4096_s"] = s["seconds"] * np.sqrt(ns / (n_m / w_m)) * (d / d_m) / speed
                out.append(row)
    return out

__all__ = ["pool_chunk", "run_steps", "distributed_section", "projection", "graph_mb", "NODE_CORES", "NETWORK_MB_S",
           "OUTLOOK_WORLDS"]
