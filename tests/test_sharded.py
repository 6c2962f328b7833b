"""The sharded store over torch.distributed (gloo, 2 and 4 CPU processes spawned by the test).

Every rank adds a slice of one pool that is *not* its shard (rows are routed to their owners);
the results are compared with one process holding every row:
- exact search and the exact kNN graph: the same ids (distances to float rounding);
- the label-excluded graph (negatives table), the geometry scores gathered to every rank, the
  all-reduced k-means and curation: the same as one process (k-means: as one process's Lloyd
  from the same seeding; curation: the same ids);
- the miner: negatives (searched, or from the shard-wise table), positives, semi-hard and
  label-free negatives equal the one-process miner's for each rank's batch;
- the approximate graph (IVF shards) reaches its documented recall;
- writes route by id (update / remove then search equals one process after the same writes);
- a bad argument on one rank raises on every rank and changes nothing;
- save on 4 ranks, load on 2 (and on 1): same answers; a rank that dies mid-save leaves the
  previous manifest intact.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch

import curriculum as cl
from curriculum import difficulty as D
from curriculum.mining import HardNegativeMiner
from curriculum.neighbors import kmeans as KM
from curriculum.store import EmbeddingStore, ShardedStore
from curriculum.store.regions import CEILING_MARGIN, MAX_COPIES, OWNER_MAPS
from curriculum.store.sharded import id_priority, merge_topk

import _gloo

N, DIM, K = 1500, 12, 8
BIG = 44_000
SCORES = ("knn_distance", "label_disagreement", "label_entropy", "class_margin")


def pool(metric: str = "l2"):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, DIM)) * 4
    lab = rng.integers(0, 6, N)
    x = (centres[lab] + rng.normal(size=(N, DIM))).astype(np.float32)
    flip = rng.random(N) < 0.1
    lab = np.where(flip, rng.integers(0, 6, N), lab)
    ids = rng.permutation(N * 2)[:N]  # sparse, shuffled ids
    q = rng.normal(size=(40, DIM)).astype(np.float32) * 4
    return x, ids, lab, q


def one_process(metric: str) -> EmbeddingStore:
    x, ids, lab, _ = pool(metric)
    s = EmbeddingStore(DIM, metric=metric, index="flat")
    s.add(x, ids, lab)
    return s


def _init(rank, world, initfile):
    torch.distributed.init_process_group("gloo", init_method=f"file://{initfile}", rank=rank, world_size=world)


def _fill(rank, world, metric, index="flat"):
    x, ids, lab, _ = pool(metric)
    mine = np.arange(N)[rank::world]  # not this rank's shard: ids are routed to id % world
    s = ShardedStore(DIM, metric=metric, index=index, exact_threshold=100)
    s.add(x[mine], ids[mine], lab[mine])
    return s


def _queries(rank, world):
    q = pool()[3]
    return q[rank::world]


def _worker(rank, world, out, initfile, metric, save_to):
    _init(rank, world, initfile)
    s = _fill(rank, world, metric)
    res = {"local_ids": s.ids, "len": np.array([len(s)])}
    q = _queries(rank, world)
    res["search_d"], res["search_i"] = s.search(q, K)
    qlab = (np.arange(len(pool()[3])) % 6)[rank::world]
    res["neg_search_i"] = s.search(q, K, exclude_labels=qlab)[1]
    res["knn_d"], res["knn_i"] = s.knn(K, method="exact")
    res["self_d"], res["self_i"] = s.knn(K, method="exact", exclude_self=False)  # each row first in its own list
    res["dev_d"], res["dev_i"] = s.knn(K, method="exact", device="cpu")  # the exact ring scored by torch on a device
    res["dev_report"] = np.array([s.last_knn_report["method"], s.last_knn_report.get("device", "")])
    res["table_i"] = s.knn(K, method="exact", exclude_same_label=True)[1]
    res["index_table_i"] = s.knn(K, method="index", exclude_same_label=True)[1]  # flat shards: exact too
    for name in SCORES:
        g = s.gather(getattr(D, name)(s, k=K))
        res[f"{name}_ids"], res[f"{name}_scores"] = g.ids, g.scores
    km = s.kmeans(6, seed=3, niter=5)
    res["km_centroids"], res["km_assign"] = km.centroids, km.assignments
    res["curated"] = cl.curate(s, 150, seed=1)
    res["curated_random"], res["curated_near"], res["curated_far"] = (
        cl.curate(s, 150, seed=1, within=w) for w in ("random", "near", "far"))
    try:
        cl.curate(s, 150, within="farthest")
    except ValueError as exc:
        res["curated_bad_within"] = np.array([str(exc)])
    try:  # the choices run different collectives: a rank that differs is an error on all, not a hang
        cl.curate(s, 150, within="far" if rank == 0 else "unique")
    except ValueError as exc:
        res["curated_mixed_within"] = np.array([str(exc)])
    part = pool(metric)[1][::2][rank::world]  # each rank passes its part of the pool's ids
    res["curated_pool"] = cl.curate(s, 120, seed=1, ids=part, dedup_threshold=0.98)
    res["curated_unique_pool"] = cl.curate(s, 120, seed=1, ids=part, within="unique")  # twins among the pool's rows
    res["curated_ref"] = cl.curate(s, 150, seed=1, reference=pool(metric)[1][:40][rank::world])
    try:  # an option given on some ranks only is an error on all of them, not a hang
        cl.curate(s, 150, seed=1, ids=pool(metric)[1] if rank == 0 else None)
    except ValueError as exc:
        res["curated_half"] = np.array([str(exc)])
    res["curated_levels"] = cl.curate(s, 150, seed=1, levels=(24, 6))
    try:  # levels that differ between the ranks: an error everywhere
        cl.curate(s, 150, seed=1, levels=(24, 6) if rank == 0 else (24, 5))
    except ValueError as exc:
        res["curated_levels_differ"] = np.array([str(exc)])
    for name, nc in (("dups_exact", 1), ("dups_clustered", 6)):
        groups = D.near_duplicates(s, 0.98, n_clusters=nc)
        res[f"{name}_ids"] = np.concatenate(groups) if groups else np.zeros(0, np.int64)
        res[f"{name}_sizes"] = np.array([len(g) for g in groups], np.int64)
    miner = HardNegativeMiner(s, k=K)
    anchors = pool(metric)[1][rank::world][:30]  # stored ids, most of them on other ranks
    res["mined_ids_i"], res["mined_ids_d"] = (lambda m: (m.ids, m.distances))(miner.negatives(anchors))
    res["mined_fresh_i"] = miner.negatives(embeddings=q, labels=qlab).ids
    try:  # a bad argument on one rank raises on every rank (no rank is left waiting in the search)
        miner.negatives(anchors, k=0 if rank == 1 else K)
    except Exception as exc:  # noqa: BLE001
        res["mined_bad"] = np.array([f"{type(exc).__name__}: {exc}"])
    _mine_more(s, miner, anchors, q, qlab, res, rank, world, metric)
    if save_to:
        s.save(save_to)
    try:  # one rank's bad argument stops every rank; nothing changes
        s.add(np.ones((2, DIM + (rank == 1)), np.float32))
    except Exception as exc:  # noqa: BLE001
        res["bad_error"] = np.array([f"{type(exc).__name__}: {exc}"])
    res["len_after_bad"] = np.array([len(s)])
    res["local_world"] = np.array([s.comm.local_world()])
    x, ids, _, _ = pool(metric)
    s.update(ids[:20][rank::world], x[20:40][rank::world] + 0.5)
    s.remove(ids[40:60][rank::world])
    res["after_i"] = s.search(q, K)[1]
    np.savez(f"{out}.{rank}.npz", **res)
    torch.distributed.destroy_process_group()


def _mine_more(s, miner, anchors, q, qlab, res, rank, world, metric):
    """Positives, semi-hard negatives, the shard-wise negatives table, label-free mining with the
    near-duplicate filter: each rank's batch, to compare with the one-process miner's answers."""
    m = miner.positives(anchors)
    res["pos_i"], res["pos_d"], res["pos_steps"] = m.ids, m.distances, m.steps
    res["pos_fresh_i"] = miner.positives(embeddings=q, labels=qlab).ids
    res["semi_i"] = miner.semi_hard(anchors, _positives_for(anchors), margin=3.0).ids
    table = HardNegativeMiner(s, k=K).build_table()
    res["mined_table_i"], res["mined_table_d"] = (lambda m: (m.ids, m.distances))(table.negatives(anchors))
    x, ids, _, _ = pool(metric)
    mine = np.arange(N)[rank::world]
    unlabelled = ShardedStore(DIM, metric=metric, index="flat")
    unlabelled.add(x[mine], ids[mine])
    res["free_i"] = HardNegativeMiner(unlabelled, k=K, duplicate_threshold=0.9).negatives(anchors).ids
    try:  # a collective build cannot run in a thread beside the caller's collectives
        table.build_table(background=True)
    except ValueError as exc:
        res["table_bg"] = np.array([str(exc)])


def _positives_for(anchors):
    ids = pool()[1]
    return ids[(np.searchsorted(np.sort(ids), anchors) + 7) % N]  # some other stored id per anchor


def _load_worker(rank, world, out, initfile, path):
    _init(rank, world, initfile)
    s = ShardedStore.load(path)
    res = {"len": np.array([len(s)]), "local_ids": s.ids}
    res["search_d"], res["search_i"] = s.search(_queries(rank, world), K)
    res["knn_i"] = s.knn(K, method="exact")[1]
    np.savez(f"{out}.{rank}.npz", **res)
    torch.distributed.destroy_process_group()


def big_pool():
    from curriculum.cli.bench_distributed import pool_chunk

    return pool_chunk(0, 16, BIG)[0][:BIG], np.arange(BIG)


def _approx_worker(rank, world, out, initfile):
    _init(rank, world, initfile)
    x, ids = big_pool()
    s = ShardedStore(16, metric="l2")
    s.add(x[rank::world], ids[rank::world])
    d, i = s.knn(K, method="blocked", target_recall=0.95)  # shards of 22,000 rows: the planned blocked ring
    np.savez(f"{out}.{rank}.npz", ids=s.ids, knn_i=i, engine=np.array([s.last_knn_report["method"]]))
    torch.distributed.destroy_process_group()


MANIFOLD = 24_000


def manifold_pool():
    """One 12-dimensional Gaussian in 32-d: no k-means block structure, NN-descent's kind of data."""
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(MANIFOLD, 12)) @ rng.normal(size=(12, 32))).astype(np.float32)
    return x, rng.permutation(2 * MANIFOLD)[:MANIFOLD]


def _descent_ring_worker(rank, world, out, initfile):
    _init(rank, world, initfile)
    x, ids = manifold_pool()
    s = ShardedStore(32, metric="cosine")
    s.add(x[rank::world], ids[rank::world])
    d, i = s.knn(K, method="descent")
    rep = dict(s.last_knn_report)
    s.update(ids[rank::world][:1], x[rank::world][:1])  # a write: the graph is computed again
    again = s.knn(K, method="descent")[1]  # the same merges
    lop = ShardedStore(32, metric="l2")  # lopsided: the other ranks hold 3 rows each (fewer than k + 1)
    rows = np.arange(2000) if rank == 0 else np.arange(2000 + 3 * (rank - 1), 2000 + 3 * rank)
    lop.add(x[rows], rows)
    small = lop.knn(5, method="descent")[1]
    auto = s.knn(K)[1]  # auto: the blocked plan would leave it to the NN-descent ring; the regions do less
    np.savez(f"{out}.{rank}.npz", ids=s.ids, knn_i=i, knn_d=d, again=again, engine=np.array([rep["method"]]),
             estimate=rep["recall_estimate"], small_ids=lop.ids, small=small, auto=auto,
             auto_route=np.array([s.last_knn_report["method"] + " / " + s.last_knn_report.get("instead_of", "")]))
    torch.distributed.destroy_process_group()


def _region_worker(rank, world, out, initfile):
    _init(rank, world, initfile)
    x, ids = big_pool()
    s = ShardedStore(16, metric="l2")
    s.add(x[rank::world], ids[rank::world])
    d, i = s.knn(K)  # auto: the regions' ceiling clears the target on the modes pool
    rep = dict(s.last_knn_report)
    again = s.knn(K, method="region")[1]
    dev_i = s.knn(K, device="cpu")[1]  # the region route, each batch's graph exact on a torch device
    dev_rep = dict(s.last_knn_report)
    m = ShardedStore(64, metric="l2")  # isotropic noise: neighbours anywhere, auto leaves the region route
    mx = np.random.default_rng(5).normal(size=(6000, 64)).astype(np.float32)
    m.add(mx[rank::world], np.arange(6000)[rank::world])
    m.knn(K)
    np.savez(f"{out}.{rank}.npz", ids=s.ids, knn_i=i, knn_d=d, again=again, engine=np.array([rep["method"]]),
             estimate=rep["recall_estimate"], ceiling=rep["region_ceiling"], copies=rep["copies_per_row"],
             owners=np.array([rep["region_owners"]]), batches=np.array([rep["batch_rows_max"], rep["batch_rows_min"]]),
             dev_i=dev_i, dev_route=np.array([dev_rep["method"], dev_rep["batch_engine"]]),
             dev_estimate=dev_rep["recall_estimate"],
             noise_engine=np.array([m.last_knn_report["method"]]),
             noise_ceilings=np.array(list(m.last_knn_report["region_ceilings"].values())),
             noise_copies=np.array(list(m.last_knn_report["region_copies"].values())))
    torch.distributed.destroy_process_group()


def big_labels():
    return np.random.default_rng(9).integers(0, 4, BIG)  # labels mixed inside the modes


def _region_table_worker(rank, world, out, initfile):
    _init(rank, world, initfile)
    x, ids = big_pool()
    lab = big_labels()
    s = ShardedStore(16, metric="l2")
    s.add(x[rank::world], ids[rank::world], lab[rank::world])
    miner = HardNegativeMiner(s, k=K, exclude_batch=False).build_table(k=2 * K)  # by the region route
    info = dict(miner.table_info)
    d, i = s.knn(2 * K, exclude_same_label=True)  # the same, cached
    rep = dict(s.last_knn_report)
    mined = miner.negatives(s.ids[:50])
    np.savez(f"{out}.{rank}.npz", ids=s.ids, tab_i=i, tab_d=d, route=np.array([info["method"], rep["batch_engine"]]),
             estimate=rep["recall_estimate"], mined=mined.ids, info_estimate=info["recall_estimate"])
    torch.distributed.destroy_process_group()


def plane_labels(x):
    return (x[:, 0] > 0) + 2 * (x[:, 1] > 0) + 4 * (x[:, 2] > 0)  # classes that follow the geometry


def _label_ring_worker(rank, world, out, initfile):
    _init(rank, world, initfile)
    x, ids = big_pool()
    lab = plane_labels(x)
    s = ShardedStore(16, metric="l2")
    s.add(x[rank::world], ids[rank::world], lab[rank::world])
    miner = HardNegativeMiner(s, k=K, exclude_batch=False).build_table(k=2 * K, method="blocked")  # the ring
    d, i = s.knn(2 * K, exclude_same_label=True, method="blocked")  # the same, cached
    rep = dict(s.last_knn_report)
    np.savez(f"{out}.{rank}.npz", ids=s.ids, tab_i=i, tab_d=d, route=np.array([rep["method"]]),
             estimate=rep["recall_estimate"], nprobe=rep["nprobe"], mined=miner.negatives(s.ids[:50]).ids,
             info_method=np.array([miner.table_info["method"]]))
    torch.distributed.destroy_process_group()


def _dying_worker(rank, world, out, initfile, path):
    _init(rank, world, initfile)
    s = _fill(rank, world, "l2")
    s.save(path)
    s.remove(pool()[1][:100][rank::world])
    if rank == 1:
        EmbeddingStore.save = lambda self, p, extra=None: os._exit(7)  # dies in the middle of the save
    s.save(path)


def _results(prefix, world):
    return [dict(np.load(f"{prefix}.{r}.npz")) for r in range(world)]


@pytest.fixture(scope="module", params=[(2, "l2"), (4, "cosine")], ids=["2ranks-l2", "4ranks-cosine"])
def sharded(request, tmp_path_factory):
    world, metric = request.param
    tmp = tmp_path_factory.mktemp(f"sharded{world}")
    save_to = str(tmp / "saved") if world == 4 else ""
    prefix = _gloo.spawn(_worker, world, tmp, metric, save_to)
    return world, metric, _results(prefix, world), save_to


def _by_rank(res, key):
    return np.concatenate([r[key] for r in res])


def test_shards_partition_the_pool_by_id(sharded):
    world, metric, res, _ = sharded
    ids = pool(metric)[1]
    for r, got in enumerate(res):
        np.testing.assert_array_equal(np.sort(got["local_ids"]), np.sort(ids[ids % world == r]))
        assert int(got["len"][0]) == N


def test_every_rank_counts_the_ranks_on_its_host(sharded):
    world, _, res, _ = sharded
    assert all(int(r["local_world"][0]) == world for r in res)  # all spawned on this machine


def test_more_threads_raises_the_counts_for_the_block_and_restores_them():
    import faiss
    import numba

    from curriculum._util.dist import more_threads

    before = (torch.get_num_threads(), faiss.omp_get_max_threads(), numba.get_num_threads())
    cpus = len(os.sched_getaffinity(0))
    with pytest.raises(RuntimeError, match="inside"):
        with more_threads(64) as n:
            assert n == min(cpus, before[0] * 64) == torch.get_num_threads() == faiss.omp_get_max_threads()
            assert numba.get_num_threads() == min(n, numba.config.NUMBA_NUM_THREADS)
            raise RuntimeError("inside")
    assert (torch.get_num_threads(), faiss.omp_get_max_threads(), numba.get_num_threads()) == before


def test_exact_search_equals_one_process(sharded):
    world, metric, res, _ = sharded
    one = one_process(metric)
    q = pool(metric)[3]
    d, i = one.search(q, K)
    order = np.concatenate([np.arange(len(q))[r::world] for r in range(world)])
    np.testing.assert_array_equal(_by_rank(res, "search_i"), i[order])
    np.testing.assert_allclose(_by_rank(res, "search_d"), d[order], rtol=1e-5, atol=1e-5)
    neg = one.search(q, K, exclude_labels=np.arange(len(q)) % 6)[1]
    np.testing.assert_array_equal(_by_rank(res, "neg_search_i"), neg[order])


def test_exact_graph_and_negatives_table_equal_one_process(sharded):
    world, metric, res, _ = sharded
    one = one_process(metric)
    d, i = one.knn(K, method="exact")
    sd, si = one.knn(K, method="exact", exclude_self=False)
    vec, lab = one.vectors(), one.labels
    for got in res:
        rows = one.rows_of(got["local_ids"])
        np.testing.assert_array_equal(got["knn_i"], i[rows])
        np.testing.assert_array_equal(got["self_i"], si[rows])
        assert (got["self_i"][:, 0] == got["local_ids"]).all() and (got["self_d"][:, 0] == 0).all()
        np.testing.assert_allclose(got["knn_d"], d[rows], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["dev_i"], i[rows])  # on a torch device: the same graph
        np.testing.assert_allclose(got["dev_d"], d[rows], rtol=1e-4, atol=1e-4)
        assert got["dev_report"].tolist() == ["exact", "cpu"]
        # negatives table: brute force over the rows of another label
        for row, table in zip(rows[:50], got["table_i"][:50]):
            other = np.flatnonzero(lab != lab[row])
            dist = np.linalg.norm(vec[other] - vec[row], axis=1) if metric == "l2" else 1 - vec[other] @ vec[row]
            np.testing.assert_array_equal(table, one.ids[other[np.argsort(dist, kind="stable")[:K]]])
        np.testing.assert_array_equal(got["index_table_i"], got["table_i"])  # each shard's label-filtered search


def test_hard_negatives_over_shards_equal_one_process(sharded):
    """Each rank mines for its own batch (stored anchors fetched from their owners, or fresh
    embeddings with labels); the answers equal the one-process miner's for that batch."""
    world, metric, res, _ = sharded
    one = HardNegativeMiner(one_process(metric), k=K)
    q, qlab = pool(metric)[3], np.arange(len(pool(metric)[3])) % 6
    for r, got in enumerate(res):
        ref = one.negatives(pool(metric)[1][r::world][:30])
        np.testing.assert_array_equal(got["mined_ids_i"], ref.ids)
        np.testing.assert_allclose(got["mined_ids_d"], ref.distances, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["mined_fresh_i"], one.negatives(embeddings=q[r::world], labels=qlab[r::world]).ids)
        assert "k: expected" in str(got["mined_bad"][0])  # rank 1's own error, or "rank 1 failed: ..."


def test_positives_semi_hard_table_and_label_free_mining_over_shards_equal_one_process(sharded):
    """The rest of the miner, collective: farthest positives (stored or fresh anchors), semi-hard
    negatives, negatives from the shard-wise table and label-free mining with the duplicate
    filter - each rank's answers equal the one-process miner's for that rank's batch."""
    world, metric, res, _ = sharded
    one_store = one_process(metric)
    one = HardNegativeMiner(one_store, k=K)
    table = HardNegativeMiner(one_store, k=K).build_table(nprobe=10_000)  # exact: every block probed
    x, ids, _, q = pool(metric)
    free = EmbeddingStore(DIM, metric=metric, index="flat")
    free.add(x, ids)
    free_miner = HardNegativeMiner(free, k=K, duplicate_threshold=0.9)
    qlab = np.arange(len(q)) % 6
    for r, got in enumerate(res):
        anchors = ids[r::world][:30]
        ref = one.positives(anchors)
        np.testing.assert_array_equal(got["pos_i"], ref.ids)
        np.testing.assert_allclose(got["pos_d"], ref.distances, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["pos_steps"], ref.steps)
        fresh = one.positives(embeddings=q[r::world], labels=qlab[r::world])
        np.testing.assert_array_equal(got["pos_fresh_i"], fresh.ids)
        semi = one.semi_hard(anchors, _positives_for(anchors), margin=3.0).ids
        assert (semi >= 0).sum() > 30
        np.testing.assert_array_equal(got["semi_i"], semi)
        ref = table.negatives(anchors)
        np.testing.assert_array_equal(got["mined_table_i"], ref.ids)
        np.testing.assert_allclose(got["mined_table_d"], ref.distances, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got["free_i"], free_miner.negatives(anchors).ids)
        assert "background: not on a ShardedStore" in str(got["table_bg"][0])


def test_near_duplicates_over_shards(sharded):
    """Every rank gets all the groups; compared with all pairs (one cluster) they are exactly the
    one-process groups, and clustered first they stay within those groups."""
    world, metric, res, _ = sharded
    exact = D.near_duplicates(one_process(metric), 0.98, n_clusters=1)
    assert len(exact) > 5
    for got in res:
        groups = np.split(got["dups_exact_ids"], np.cumsum(got["dups_exact_sizes"])[:-1])
        assert len(groups) == len(exact) and all(np.array_equal(a, b) for a, b in zip(groups, exact))
        np.testing.assert_array_equal(got["dups_clustered_ids"], res[0]["dups_clustered_ids"])  # same everywhere
        whole = {int(i): n for n, g in enumerate(exact) for i in g}
        clustered = np.split(got["dups_clustered_ids"], np.cumsum(got["dups_clustered_sizes"])[:-1])
        assert all(len({whole[int(i)] for i in g}) == 1 for g in clustered)  # a subset of one exact group


def test_scores_gathered_on_every_rank_equal_one_process(sharded):
    world, metric, res, _ = sharded
    one = one_process(metric)
    for name in SCORES:
        ref = getattr(D, name)(one, k=K)
        ref_by_id = dict(zip(ref.ids.tolist(), ref.scores.tolist()))
        for got in res:  # every rank holds all N scores
            assert sorted(got[f"{name}_ids"].tolist()) == sorted(ref.ids.tolist())
            # class_margin's widened searches and the one-process per-class brute force round the
            # float32 distances differently (1e-5 at distances ~5)
            tol = dict(rtol=1e-4, atol=1e-4) if name == "class_margin" else dict(rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got[f"{name}_scores"], [ref_by_id[i] for i in got[f"{name}_ids"].tolist()],
                                       **tol)


def test_kmeans_is_one_process_lloyd_from_the_same_seeding(sharded):
    world, metric, res, _ = sharded
    one = one_process(metric)
    alone = ShardedStore(DIM, metric=metric)
    alone.add(one.vectors(), one.ids, one.labels)
    x = one.vectors()
    sample = x[np.argsort(id_priority(one.ids, 3))][:6 * 256]
    cent = KM.kmeans(x, 6, spherical=metric == "cosine", seed=3, niter=5,
                     init=KM.kmeans_pp_init(sample, 6, seed=3), points_per_centroid=0, tol=0.0)
    for got in res:
        np.testing.assert_allclose(got["km_centroids"], cent, rtol=1e-4, atol=1e-4)
    km = alone.kmeans(6, seed=3, niter=5)
    np.testing.assert_allclose(km.centroids, cent, rtol=1e-4, atol=1e-4)
    rows = one.rows_of(_by_rank(res, "local_ids"))
    np.testing.assert_array_equal(_by_rank(res, "km_assign"), km.assignments[rows])


def test_curation_selects_the_ids_one_process_selects(sharded):
    world, metric, res, _ = sharded
    ref = cl.curate(one_process(metric), 150, seed=1)
    got = np.sort(_by_rank(res, "curated"))
    np.testing.assert_array_equal(got, ref)
    for r, part in enumerate(res):
        assert (part["curated"] % world == r).all()


def test_curation_picking_at_random_nearest_or_farthest_first_selects_the_ids_one_process_selects(sharded):
    world, metric, res, _ = sharded
    for within in ("random", "near", "far"):  # the default ("unique") is "curated" above
        ref = cl.curate(one_process(metric), 150, seed=1, within=within)
        np.testing.assert_array_equal(np.sort(_by_rank(res, f"curated_{within}")), ref)
    assert not np.array_equal(np.sort(_by_rank(res, "curated")), np.sort(_by_rank(res, "curated_near")))
    assert not np.array_equal(np.sort(_by_rank(res, "curated")), np.sort(_by_rank(res, "curated_far")))
    assert all("within: expected one of" in str(r["curated_bad_within"][0]) for r in res)
    assert all("within: expected the same within on every rank" in str(r["curated_mixed_within"][0]) for r in res)


def test_curation_of_a_part_of_the_pool_and_with_a_reference_selects_what_one_process_selects(sharded):
    world, metric, res, _ = sharded
    ref = cl.curate(one_process(metric), 120, seed=1, ids=pool(metric)[1][::2], dedup_threshold=0.98)
    np.testing.assert_array_equal(np.sort(_by_rank(res, "curated_pool")), ref)
    ref = cl.curate(one_process(metric), 120, seed=1, ids=pool(metric)[1][::2], within="unique")
    np.testing.assert_array_equal(np.sort(_by_rank(res, "curated_unique_pool")), ref)
    ref = cl.curate(one_process(metric), 150, seed=1, reference=pool(metric)[1][:40])
    np.testing.assert_array_equal(np.sort(_by_rank(res, "curated_ref")), ref)
    assert all("ids: expected on every rank or on none" in str(r["curated_half"][0]) for r in res)


def test_curation_with_given_levels_selects_what_one_process_selects(sharded):
    world, metric, res, _ = sharded
    ref = cl.curate(one_process(metric), 150, seed=1, levels=(24, 6))
    np.testing.assert_array_equal(np.sort(_by_rank(res, "curated_levels")), ref)
    assert all("levels: expected the same levels on every rank" in str(r["curated_levels_differ"][0]) for r in res)


def test_writes_route_by_id(sharded):
    world, metric, res, _ = sharded
    one = one_process(metric)
    x, ids, _, q = pool(metric)
    one.update(ids[:20], x[20:40] + 0.5)
    one.remove(ids[40:60])
    order = np.concatenate([np.arange(len(q))[r::world] for r in range(world)])
    np.testing.assert_array_equal(_by_rank(res, "after_i"), one.search(q, K)[1][order])


def test_a_bad_argument_on_one_rank_raises_on_every_rank_and_changes_nothing(sharded):
    world, _, res, _ = sharded
    for r, got in enumerate(res):
        msg = str(got["bad_error"][0])
        assert "vectors" in msg and str(DIM) in msg, msg
        if r != 1:
            assert "rank 1 failed" in msg
        assert int(got["len_after_bad"][0]) == N


def test_save_on_four_ranks_loads_on_two_and_on_one(sharded, tmp_path):
    world, metric, res, path = sharded
    if world != 4:
        pytest.skip("saved by the 4-rank run")
    prefix = _gloo.spawn(_load_worker, 2, tmp_path, path)
    two = _results(prefix, 2)
    ids = pool(metric)[1]
    q = pool(metric)[3]
    d, i = one_process(metric).search(q, K)
    for r, got in enumerate(two):
        assert int(got["len"][0]) == N
        np.testing.assert_array_equal(np.sort(got["local_ids"]), np.sort(ids[ids % 2 == r]))
        np.testing.assert_array_equal(got["search_i"], i[r::2])
    alone = ShardedStore.load(path)  # no process group: a world of one
    np.testing.assert_array_equal(alone.search(q, K)[1], i)
    np.testing.assert_array_equal(np.sort(alone.ids), np.sort(ids))


def test_approximate_graph_meets_its_recall(tmp_path):
    prefix = _gloo.spawn(_approx_worker, 2, tmp_path)
    from curriculum.neighbors import brute_knn

    x, _ = big_pool()
    truth = brute_knn(x, x, K + 1, "l2")[1][:, 1:]
    hits = 0
    for got in _results(prefix, 2):
        assert str(got["engine"][0]) == "blocked (global plan)"
        hits += sum(len(np.intersect1d(a, b)) for a, b in zip(got["knn_i"], truth[got["ids"]]))
    assert hits / (BIG * K) >= 0.93  # target 0.95: the plans' estimates on 512 sampled rows


@pytest.mark.parametrize("world", [2, 3, 4])  # even worlds: the last step's pairs meet once
def test_descent_ring_meets_its_recall_where_blocks_fail(tmp_path, world):
    prefix = _gloo.spawn(_descent_ring_worker, world, tmp_path)
    from curriculum.neighbors import brute_knn, normalize

    x, ids = manifold_pool()
    xn = normalize(x)
    truth_d, truth = brute_knn(xn, xn, K + 1, "cosine")
    hits, got_all = 0, _results(prefix, world)
    for got in got_all:
        assert str(got["engine"][0]) == "descent (shard pairs merged)"
        rows = np.searchsorted(np.sort(ids), got["ids"])
        order = np.argsort(ids)
        want = ids[truth[order[rows]][:, 1:]]
        hits += sum(len(np.intersect1d(a, b)) for a, b in zip(got["knn_i"], want))
        # each listed neighbour at its true distance, nearest first, never the row itself
        pos = order[np.searchsorted(ids[order], got["knn_i"])]
        own = order[rows]
        true_d = 1 - (xn[own][:, None, :] * xn[pos]).sum(-1)
        np.testing.assert_allclose(got["knn_d"], true_d, atol=2e-5)
        assert (np.diff(got["knn_d"], axis=1) >= 0).all() and (got["knn_i"] != got["ids"][:, None]).all()
        assert all(len(set(r)) == K for r in got["knn_i"].tolist())  # every pair of shards met once
        np.testing.assert_array_equal(got["again"], got["knn_i"])  # deterministic
    recall = hits / (MANIFOLD * K)
    auto_hits = 0
    for got in got_all:
        rows = np.searchsorted(np.sort(ids), got["ids"])
        want = ids[truth[np.argsort(ids)[rows]][:, 1:]]
        auto_hits += sum(len(np.intersect1d(a, b)) for a, b in zip(got["auto"], want))
        assert str(got["auto_route"][0]).startswith("region"), got["auto_route"]
    assert auto_hits / (MANIFOLD * K) >= 0.93
    n_small = 2000 + 3 * (world - 1)
    truth_small = brute_knn(x[:n_small], x[:n_small], 6, "l2")[1][:, 1:]
    small = np.concatenate([g["small"] for g in got_all])[np.argsort(np.concatenate([g["small_ids"] for g in got_all]))]
    assert np.mean([np.isin(a, b).mean() for a, b in zip(small, truth_small)]) >= 0.95
    assert recall >= 0.93, recall
    assert abs(float(got_all[0]["estimate"]) - recall) < 0.03  # the sampled estimate, agreed by every rank
    assert len({float(g["estimate"]) for g in got_all}) == 1


@pytest.mark.parametrize("world", [2, 4])
def test_region_route_meets_its_recall_and_is_taken_only_where_it_can(tmp_path, world):
    """Rows regrouped by k-means region (one all-to-all each way): recall against brute force at
    the target, exact distances, no id twice (a row sent to two ranks merges its lists), every
    rank agreeing on the sampled estimate; on isotropic noise, where no overlap clears the target
    with few enough copies of a row, auto takes another route."""
    prefix = _gloo.spawn(_region_worker, world, tmp_path)
    from curriculum.neighbors import brute_knn

    x, _ = big_pool()
    truth_d, truth = brute_knn(x, x, K + 1, "l2")
    hits, dev_hits, got_all = 0, 0, _results(prefix, world)
    for got in got_all:
        assert str(got["engine"][0]) == "region (rows regrouped by k-means region)"
        assert 1.0 < float(got["copies"]) < 2.0  # boundary rows go to two ranks, most to one
        assert str(got["owners"][0]) in OWNER_MAPS
        assert got["dev_route"].tolist() == ["region (rows regrouped by k-means region)", "exact"]
        dev_hits += sum(len(np.intersect1d(a, b)) for a, b in zip(got["dev_i"], truth[got["ids"]][:, 1:]))
        assert got["batches"][0] >= got["batches"][1] > 0
        hits += sum(len(np.intersect1d(a, b)) for a, b in zip(got["knn_i"], truth[got["ids"]][:, 1:]))
        true_d = np.sqrt(((x[got["ids"]][:, None, :] - x[got["knn_i"]]) ** 2).sum(-1))
        np.testing.assert_allclose(got["knn_d"], true_d, rtol=1e-4, atol=1e-4)
        assert (np.diff(got["knn_d"], axis=1) >= 0).all() and (got["knn_i"] != got["ids"][:, None]).all()
        assert all(len(set(r)) == K for r in got["knn_i"].tolist())
        np.testing.assert_array_equal(got["again"], got["knn_i"])  # deterministic
        assert str(got["noise_engine"][0]) != "region (rows regrouped by k-means region)"
        # declined: no overlap whose ceiling clears the target sends few enough copies of a row
        assert all(c < 0.95 + CEILING_MARGIN or copies > MAX_COPIES
                   for c, copies in zip(got["noise_ceilings"], got["noise_copies"]))
    recall = hits / (BIG * K)
    assert recall >= 0.93, recall
    # exact batches: only the pairs that meet on no rank are lost - the recall is the ceiling's
    assert dev_hits / (BIG * K) >= max(recall, float(got_all[0]["ceiling"]) - 0.02), (dev_hits, recall)
    assert abs(float(got_all[0]["dev_estimate"]) - dev_hits / (BIG * K)) < 0.03
    assert abs(float(got_all[0]["estimate"]) - recall) < 0.03
    assert len({float(g["estimate"]) for g in got_all}) == 1
    assert float(got_all[0]["ceiling"]) >= 0.97


@pytest.mark.parametrize("world", [2, 4])
def test_negatives_table_by_the_region_route_meets_its_recall(tmp_path, world):
    """The sharded negatives table: rows regrouped by k-means region where the sampled ceiling of
    their other-label neighbours clears the target, each rank's batch table by the one-process
    engine: recall against brute force, exact distances, never the row's label, the miner reading
    it, every rank agreeing on the estimate."""
    prefix = _gloo.spawn(_region_table_worker, world, tmp_path)
    x, _ = big_pool()
    lab = big_labels()
    got_all = _results(prefix, world)
    for got in got_all:
        assert got["route"].tolist() == ["region (rows regrouped by k-means region)", "negatives table (blocked)"]
        np.testing.assert_array_equal(got["mined"], got["tab_i"][:50, :K])  # the miner answers from it
    recall = _check_table(got_all, x, lab, 2 * K)
    assert recall >= 0.93, recall
    assert abs(float(got_all[0]["estimate"]) - recall) < 0.05
    assert len({float(g["estimate"]) for g in got_all} | {float(g["info_estimate"]) for g in got_all}) == 1


def _check_table(got_all, x, lab, k, rows=300):
    """Each rank's negatives table against brute force over the rows of another label: exact
    distances, ascending, never the row's label, no repeats; returns the recall of ``rows`` rows per rank."""
    hits = 0
    for got in got_all:
        ids, tab = got["ids"], got["tab_i"]
        assert (lab[tab] != lab[ids][:, None]).all() and all(len(set(r)) == k for r in tab.tolist())
        true_d = np.sqrt(((x[ids][:, None, :] - x[tab]) ** 2).sum(-1))
        np.testing.assert_allclose(got["tab_d"], true_d, rtol=1e-4, atol=1e-4)
        assert (np.diff(got["tab_d"], axis=1) >= 0).all()
        for row, t in zip(ids[:rows], tab[:rows]):
            other = np.flatnonzero(lab != lab[row])
            truth = other[np.argsort(((x[other] - x[row]) ** 2).sum(1), kind="stable")[:k]]
            hits += len(np.intersect1d(t, truth))
    return hits / (rows * len(got_all) * k)


@pytest.mark.parametrize("world", [2, 4])
def test_negatives_table_by_the_labelled_blocked_ring_meets_its_recall(tmp_path, world):
    """Classes that follow the geometry (where the region route's ceiling falls short): the blocked
    ring on a global plan for other-label neighbours, each visiting block probing the nearest blocks
    that hold another label on any shard - recall against brute force, exact distances, never the
    row's label, every rank agreeing on the plan and its estimate."""
    prefix = _gloo.spawn(_label_ring_worker, world, tmp_path)
    x, _ = big_pool()
    lab = plane_labels(x)
    got_all = _results(prefix, world)
    assert {g["route"][0] for g in got_all} | {g["info_method"][0] for g in got_all} == \
        {"blocked (global plan, other labels)"}
    for got in got_all:
        np.testing.assert_array_equal(got["mined"], got["tab_i"][:50, :K])  # the miner answers from it
    recall = _check_table(got_all, x, lab, 2 * K)
    assert recall >= 0.93, recall
    assert abs(float(got_all[0]["estimate"]) - recall) < 0.05
    assert len({(float(g["estimate"]), int(g["nprobe"])) for g in got_all}) == 1


def test_region_bisection_balances_contiguous_groups():
    from curriculum.store.regions import bisect_regions

    rng = np.random.default_rng(0)
    c = rng.normal(size=(200, 3)).astype(np.float32)
    counts = rng.integers(1, 100, 200).astype(float)
    for world in (1, 2, 3, 5, 8):
        owner = bisect_regions(c, counts, world)
        load = np.bincount(owner, weights=counts, minlength=world)
        assert set(owner.tolist()) == set(range(world))
        assert load.max() <= load.mean() * 1.3 and load.min() >= load.mean() * 0.7, load
    owner = bisect_regions(np.array([[0.], [1], [2], [10], [11], [12]], np.float32), np.array([1, 1, 1, 1, 1, 3.]), 2)
    assert owner.tolist() in ([0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 0, 0])  # cut at the count's half, along the axis


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_region_refinement_stops_where_no_single_move_helps(n_reg, world, seed):
    from curriculum.store.regions import BALANCE_POWER, batch_sizes, refine_owners

    rng = np.random.default_rng(seed)
    first = rng.integers(0, n_reg, 300)
    second = (first + rng.integers(1, n_reg, 300)) % n_reg  # two distinct regions a row
    start = rng.integers(0, world, n_reg)
    owner = refine_owners(start, first, second, world)
    scale = max(batch_sizes(start, first, second, world).mean(), 1.0)

    def cost(o):  # recounted from the rows, not the refinement's running sizes
        return float(((batch_sizes(o, first, second, world) / scale) ** BALANCE_POWER).sum())

    assert cost(owner) <= cost(start) + 1e-9
    for g in range(n_reg):  # a local minimum: every single move, recounted, costs at least as much
        for r in range(world):
            moved = owner.copy()
            moved[g] = r
            assert cost(moved) >= cost(owner) * (1 - 1e-9) - 1e-9, (g, r)


def test_region_refinement_shrinks_the_largest_batch_of_clustered_regions():
    from curriculum.neighbors import brute_knn
    from curriculum.store.regions import batch_sizes, bisect_regions, fit_regions, refine_owners

    x = pool_chunk_rows(40_000)
    for world in (4, 8):
        fitted = fit_regions(x, 32 * world, "l2", world)  # centroids, then the refined and the bisected ranks
        cent = np.ascontiguousarray(fitted[:, :-2])
        owner, bisect = fitted[:, -2].astype(int), fitted[:, -1].astype(int)
        near = brute_knn(x, cent, 2, "l2")[1]
        np.testing.assert_array_equal(bisect, bisect_regions(cent, np.bincount(near.ravel(), minlength=len(cent)), world))
        refined = batch_sizes(owner, near[:, 0], near[:, 1], world)
        bisected = batch_sizes(bisect, near[:, 0], near[:, 1], world)
        assert (refined > 0).all()
        assert refined.max() < 0.95 * bisected.max(), (refined, bisected)
        np.testing.assert_array_equal(refine_owners(owner, near[:, 0], near[:, 1], world), owner)  # a fixed point


def test_region_outlook_takes_a_map_and_overlap_that_clear_with_the_smallest_largest_batch():
    from curriculum.store.regions import CEILING_MARGIN, MAX_COPIES, OVERLAPS, OWNER_MAPS, region_outlook

    x = pool_chunk_rows(20_000)
    for world in (2, 4, 8):
        out = region_outlook(x, K, "l2", world)
        assert out["owners"] in OWNER_MAPS
        for ov in OVERLAPS:  # a batch is at least the mean, the mean is the copies
            assert out["largest"][ov] >= out["copies"][ov] - 1e-9 and 1.0 <= out["copies"][ov] <= ov
        if out["overlap"] is not None:
            ov = out["overlap"]
            assert out["ceilings"][ov] >= 0.95 + CEILING_MARGIN and out["copies"][ov] <= MAX_COPIES
            smaller = [ov for ov in OVERLAPS if out["largest"][ov] < out["largest"][out["overlap"]]]
            assert all(out["ceilings"][ov] < 0.95 + CEILING_MARGIN for ov in smaller)  # none cheaper clears


def pool_chunk_rows(n):
    """The distributed bench's pool (100 long-tailed modes), ``n`` rows of 32 dimensions."""
    from curriculum.cli.bench_distributed import pool_chunk

    return pool_chunk(0, 32, n)[0]


def test_a_rank_dying_mid_save_leaves_the_previous_manifest(tmp_path):
    import torch.multiprocessing as mp

    path = str(tmp_path / "saved")
    with pytest.raises(mp.ProcessExitedException):
        mp.spawn(_dying_worker, args=(2, str(tmp_path / "out"), str(tmp_path / "init"), path), nprocs=2, join=True)
    back = ShardedStore.load(path)  # the first save: all N rows, none of the removal
    assert len(back) == N
    np.testing.assert_array_equal(back.search(pool()[3], K)[1], one_process("l2").search(pool()[3], K)[1])
    back.save(path)  # the next save removes the dead save's leftovers
    assert sorted(os.listdir(path)) == ["manifest.json", "shard-g000001-r00000-of00001.store"]


def test_merge_topk_and_priority_match_references():
    d = np.array([[0.5, 0.1, np.inf, 0.1], [1.0, 2.0, 0.0, np.inf]])
    i = np.array([[4, 9, -1, 3], [1, 2, 3, -1]])
    md, mi = merge_topk(d, i, 3)
    assert mi.tolist() == [[3, 9, 4], [3, 1, 2]]  # ties by id
    p = id_priority(np.arange(10_000), 5)
    assert len(np.unique(p)) == 10_000 and (p >= 0).all()
    np.testing.assert_array_equal(p, id_priority(np.arange(10_000), 5))
    assert not np.array_equal(p, id_priority(np.arange(10_000), 6))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 30), m=st.integers(1, 40), k=st.integers(1, 45), levels=st.integers(1, 6),
       seed=st.integers(0, 10**6), wide=st.booleans())
def test_merge_topk_orders_by_distance_then_id_as_a_lexsort(n, m, k, levels, seed, wide):
    # few distinct distances (ties), padding (inf / -1) anywhere, float32 or float64
    rng = np.random.default_rng(seed)
    d = rng.integers(0, levels, (n, m)).astype(np.float64 if wide else np.float32)
    ids = rng.permutation(10 * m * max(n, 1))[:n * m].reshape(n, m)
    pad = rng.random((n, m)) < 0.2
    d[pad], ids[pad] = np.inf, -1
    order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), d), axis=-1)[:, :k]
    md, mi = merge_topk(d, ids, k)
    np.testing.assert_array_equal(mi, np.take_along_axis(ids, order, 1))
    np.testing.assert_array_equal(md, np.take_along_axis(d, order, 1))
    assert md.dtype == d.dtype and md.shape == (n, min(k, m))


def test_without_a_process_group_it_is_a_world_of_one():
    s = ShardedStore(DIM, metric="l2", index="flat")
    x, ids, lab, q = pool()
    s.add(x, ids, lab)
    one = one_process("l2")
    np.testing.assert_array_equal(s.search(q, K)[1], one.search(q, K)[1])
    np.testing.assert_array_equal(s.knn(K, method="exact")[1], one.knn(K, method="exact")[1][one.rows_of(s.ids)])
    with pytest.raises(ValueError, match="ids: expected ids not yet in the store"):
        s.add(x[:2], ids[:2])
    with pytest.raises(KeyError, match="ids not in the store"):
        s.remove([N * 5])
    with pytest.raises(ValueError, match="k: expected at most"):
        s.knn(N)
    assert len(s) == N


def test_a_world_of_one_builds_the_one_process_negatives_table():
    from curriculum.neighbors import pair_distances
    from curriculum.neighbors.negatives import negatives_table

    x, _ = big_pool()
    x, ids, lab = x[:8000], np.arange(8000) * 3 + 1, plane_labels(x[:8000])
    s = ShardedStore(16, metric="l2")  # no process group; past the exact threshold
    s.add(x, ids, lab)
    d, i = s.knn(12, exclude_same_label=True)
    assert s.last_knn_report["method"] == "one shard: negatives table (blocked)"
    rows = negatives_table(x, lab, 12, "l2")[0]
    np.testing.assert_array_equal(i, ids[rows])
    np.testing.assert_allclose(d, pair_distances(x, x[rows], "l2"), rtol=1e-5, atol=1e-5)


def test_miner_on_a_world_of_one_and_its_clear_errors():
    x, ids, lab, q = pool("l2")
    s = ShardedStore(DIM, metric="l2", index="flat")  # no process group: a world of one
    s.add(x, ids, lab, step=4)
    miner = HardNegativeMiner(s, k=3)
    one = HardNegativeMiner(one_process("l2"), k=3)
    got = miner.negatives(ids[:5])
    np.testing.assert_array_equal(got.ids, one.negatives(ids[:5]).ids)
    assert (got.steps == 4).all()
    np.testing.assert_array_equal(miner.positives(ids[:5]).ids, one.positives(ids[:5]).ids)
    np.testing.assert_array_equal(miner.semi_hard(ids[:5], ids[5:10], margin=5.0).ids,
                                  one.semi_hard(ids[:5], ids[5:10], margin=5.0).ids)
    assert miner.build_table().table_info["method"] == "exact (other labels)"  # flat: every pair
    np.testing.assert_array_equal(miner.negatives(ids[:5]).ids, one.negatives(ids[:5]).ids)
    with pytest.raises(ValueError, match="labels: fresh embeddings"):
        miner.negatives(embeddings=q[:3])
    with pytest.raises(ValueError, match="nprobe: not on a ShardedStore"):
        miner.build_table(nprobe=4)
    with pytest.raises(ValueError, match="method: 'descent' runs in one process"):
        miner.build_table(method="descent")
    with pytest.raises(ValueError, match="positive_ids: expected 5"):
        miner.semi_hard(ids[:5], ids[5:9])
    with pytest.raises(ValueError, match="margin"):
        miner.semi_hard(ids[:5], ids[5:10], margin=-1.0)


def test_sharded_curation_drops_what_the_reference_does_not_cover():
    x, ids, lab, _ = pool("l2")
    junk = (np.random.default_rng(3).normal(size=(200, DIM)) + 40).astype(np.float32)  # a far, junk mode
    jids = np.arange(10**6, 10**6 + 200)
    one, s = one_process("l2"), ShardedStore(DIM, metric="l2", index="flat")  # a world of one
    s.add(x, ids, lab)
    for store in (one, s):
        store.add(junk, jids, np.zeros(200, np.int64))
    ref = np.random.default_rng(4).choice(ids, 100, replace=False)  # trusted rows: none of the junk
    # balancing gives the junk one mode's share of 7 (the pool's 6 and the junk), more than its rows' share
    assert np.isin(cl.curate(s, 150, seed=1), jids).sum() >= 150 // 7 > 150 * 200 / 1700
    got = cl.curate(s, 150, seed=1, reference=ref)
    np.testing.assert_array_equal(got, cl.curate(one, 150, seed=1, reference=ref))
    assert not np.isin(got, jids).any()
    with pytest.raises(ValueError, match="reference: expected ids of the pool"):
        cl.curate(s, 150, reference=[10**7])


def test_region_method_on_a_world_of_one_and_its_clear_errors():
    rng = np.random.default_rng(2)
    s = ShardedStore(4, metric="l2")
    s.add(rng.normal(size=(300, 4)).astype(np.float32), labels=rng.integers(0, 3, 300))
    one = EmbeddingStore(4, metric="l2")
    one.add(s.vectors(), s.ids, s.labels)
    np.testing.assert_array_equal(s.knn(3, method="region")[1], one.knn(3)[1])  # one rank: the store's own engine
    version = s.local.version
    for graph_only in ("region", "descent"):
        with pytest.raises(ValueError, match=f"method: '{graph_only}' builds the all-points graph"):
            s.knn(3, method=graph_only, exclude_same_label=True)
    with pytest.raises(ValueError, match="method"):
        s.knn(3, method="regions")
    for bad, match in (({"method": "blocked"}, "device: scores the exact ring or the region route's batches"),
                       ({"exclude_same_label": True}, "device: scores the exact ring"),
                       ({"device": "nonsense"}, "device: expected a torch device")):
        with pytest.raises(ValueError, match=match):
            s.knn(3, **{"device": "cpu", **bad})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device: 'cuda' needs a CUDA GPU"):
            s.knn(3, device="cuda")
    np.testing.assert_array_equal(s.knn(3, device="cpu")[1], one.knn(3, method="exact")[1])  # one rank: exact there
    assert s.local.version == version
