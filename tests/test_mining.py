"""Miners: exact indices on hand-made embeddings, global == brute force, SSL helpers, refresh."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import curriculum as cl
from curriculum.data import clustered
from curriculum.contrastive import hard_negative_nce, info_nce, mochi
from curriculum.mining import (BatchHardMiner, CrossBatchMemory, HardNegativeMiner, MarginMiner, MultiSimilarityMiner,
                               SemiHardMiner, pairwise_distance)
from curriculum.neighbourhood import IndexRefresher, NeighbourhoodBatchSampler

# 1-D points: class 0 at 0, 1, 4; class 1 at 2, 2.5; class 2 alone at 10
EMB = torch.tensor([[0.0], [1.0], [4.0], [2.0], [2.5], [10.0]])
LAB = torch.tensor([0, 0, 0, 1, 1, 2])


def test_batch_hard_exact_indices():
    a, p, n = BatchHardMiner("l2")(EMB, LAB)
    # anchor 5 has no positive: dropped
    assert a.tolist() == [0, 1, 2, 3, 4]
    assert p.tolist() == [2, 2, 0, 4, 3]     # farthest same-class
    assert n.tolist() == [3, 3, 4, 1, 1]     # closest other-class (ties: lowest index)


def test_semi_hard_exact_indices():
    a, p, n = SemiHardMiner(margin=1.5, distance="l2")(EMB, LAB)
    got = sorted(zip(a.tolist(), p.tolist(), n.tolist()))
    # (0,1): d=1, negatives in (1, 2.5): 3 (2.0), 4 (2.5 excluded: not < 2.5) -> 3
    # (1,0): d=1, negatives in (1, 2.5): 3 (1.0 no), 4 (1.5) -> 4
    # (3,4): d=.5, negatives in (.5, 2): 1 (1.0) -> 1 ; (4,3): d=.5, in (.5,2): 1 (1.5), 2 (1.5) -> 1
    # pairs (0,2), (1,2), (2,0), (2,1) have no semi-hard negative: no triplet
    assert got == [(0, 1, 3), (1, 0, 4), (3, 4, 1), (4, 3, 1)]
    for ai, pi, ni in got:
        dap = abs(EMB[ai, 0] - EMB[pi, 0])
        dan = abs(EMB[ai, 0] - EMB[ni, 0])
        assert LAB[ni] != LAB[ai] and dap < dan < dap + 1.5


def test_margin_miner_equals_brute_force_triplets():
    torch.manual_seed(0)
    emb, lab = torch.randn(40, 5), torch.randint(0, 4, (40,))
    a, p, n = MarginMiner(0.3, "cosine", chunk=7)(emb, lab)
    d = pairwise_distance(emb, emb, "cosine")
    ref = {(i, j, m) for i in range(40) for j in range(40) for m in range(40)
           if i != j and lab[i] == lab[j] and lab[m] != lab[i] and d[i, j] - d[i, m] + 0.3 > 0}
    assert set(zip(a.tolist(), p.tolist(), n.tolist())) == ref


def test_multi_similarity_pairs():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.3]])
    lab = torch.tensor([0, 0, 1, 1])
    a1, p, a2, n = MultiSimilarityMiner(epsilon=0.1)(emb, lab)
    s = 1 - pairwise_distance(emb, emb, "cosine")
    for i, j in zip(a1.tolist(), p.tolist()):
        assert lab[i] == lab[j] and i != j
    for i, j in zip(a2.tolist(), n.tolist()):
        assert lab[i] != lab[j]
        assert s[i, j] + 0.1 > s[i][(lab == lab[i]) & (torch.arange(4) != i)].min()
    assert (0, 3) in set(zip(a2.tolist(), n.tolist()))  # the confusable negative is kept


def test_in_batch_bad_input():
    with pytest.raises(ValueError, match="labels"):
        BatchHardMiner()(EMB, LAB[:3])
    with pytest.raises(ValueError, match="finite"):
        BatchHardMiner()(torch.tensor([[float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="distance"):
        BatchHardMiner("manhattan")


def brute_negatives(x, lab, anchors, k, exclude):
    d = np.sqrt(((x[anchors][:, None] - x[None]) ** 2).sum(-1))
    out = []
    for r, a in enumerate(anchors):
        ok = (lab != lab[a]) & ~np.isin(np.arange(len(x)), exclude[r])
        cand = np.flatnonzero(ok)
        out.append(cand[np.argsort(d[r, cand], kind="stable")][:k].tolist())
    return out


def test_global_negatives_equal_brute_force_and_never_share_label():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    lab = rng.integers(0, 3, 500)
    store = cl.EmbeddingStore(8, metric="l2", index="flat")
    store.add(x, labels=lab)
    anchors = np.array([3, 10, 77, 400])
    miner = HardNegativeMiner(store, k=15)
    got = miner.negatives(anchors)
    ref = brute_negatives(x, lab, anchors, 15, [anchors] * 4)
    assert got.ids.tolist() == ref
    assert (lab[got.ids] != lab[anchors][:, None]).all()
    # fresh embeddings + labels, no batch exclusion
    got2 = HardNegativeMiner(store, k=5, exclude_batch=False).negatives(embeddings=x[anchors] + 0.01,
                                                                        labels=lab[anchors])
    assert (lab[got2.ids] != lab[anchors][:, None]).all()


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_labelled_blocked_engine_at_full_probe_equals_brute_force(metric):
    from curriculum.knn import blocked_knn

    rng = np.random.default_rng(1)
    x, lab = clustered(3000, 12, n_clusters=30, seed=2)
    x = x.astype(np.float32)
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = lab % 5
    labels[rng.choice(3000, 300, replace=False)] = rng.integers(0, 5, 300)  # mixed blocks too
    d, r = blocked_knn(x, 8, metric, nprobe=10_000, n_clusters=12, labels=labels)
    ip = x @ x.T
    ref = {"l2": np.sqrt(np.maximum((x * x).sum(1)[:, None] + (x * x).sum(1)[None] - 2 * ip, 0)),
           "cosine": 1 - ip, "ip": -ip}[metric]
    ref[labels[:, None] == labels[None, :]] = np.inf
    np.testing.assert_allclose(d, np.sort(ref, axis=1)[:, :8], rtol=1e-4, atol=1e-4)
    assert (labels[r] != labels[:, None]).all()
    d4, r4 = blocked_knn(x, 8, metric, nprobe=4, n_clusters=12, labels=labels)
    assert ((r4 < 0) | (labels[np.maximum(r4, 0)] != labels[:, None])).all()  # never the anchor's label


@settings(max_examples=25, deadline=None)
@given(metric=st.sampled_from(["l2", "cosine", "ip"]), labelled=st.booleans(), nprobe=st.integers(1, 12),
       k=st.integers(1, 30), seed=st.integers(0, 999))
@example(metric="ip", labelled=False, nprobe=2, k=8, seed=225)  # ties at the k-th: either row is right
@example(metric="ip", labelled=False, nprobe=2, k=7, seed=225)
def test_blocked_search_under_a_bound_keeps_what_beats_it(metric, labelled, nprobe, k, seed):
    """A ring visit passes each row's k-th distance found so far: the bounded search returns the
    unbounded one's neighbours that beat the bound (a little past it is allowed), and merged with
    the lists the bounds came from both give the same top-k."""
    from curriculum.neighbors import blocked_knn
    from curriculum.neighbors.blocked import block_plan
    from curriculum.store.sharded import merge_topk

    rng = np.random.default_rng(seed)
    x, lab = clustered(3000, 8, n_clusters=20, seed=seed)
    x = x.astype(np.float32)
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    q, base, other = x[:800], x[800:2000], x[2000:]  # other: where the earlier lists came from
    labels = (lab % 3) if labelled else None
    kw = dict(labels=labels[:800], base_labels=labels[800:2000]) if labelled else {}
    cent, assign = block_plan(base, 8, metric)
    full = blocked_knn(q, k, metric, nprobe=nprobe, base=base, centroids=cent, assign=assign, **kw)
    kw_o = dict(labels=labels[:800], base_labels=labels[2000:]) if labelled else {}
    prev = blocked_knn(q, k, metric, nprobe=nprobe, base=other, **kw_o)
    bound = prev[0][:, k - 1].astype(np.float64)
    bound[rng.random(800) < 0.2] = np.inf  # rows that found fewer than k so far
    d, r = blocked_knn(q, k, metric, nprobe=nprobe, base=base, centroids=cent, assign=assign, bound=bound, **kw)
    tol = 1e-4
    for i in range(800):  # (equal distances may be taken either way: compared by distance)
        kth = full[0][i][k - 1]
        assert (d[i][r[i] >= 0] <= kth + tol * max(1.0, abs(kth))).all()  # nothing worse than unbounded
        under = bound[i] - 1e-3 * max(1.0, abs(bound[i])) if np.isfinite(bound[i]) else np.inf
        edge = kth - tol * max(1.0, abs(kth)) if np.isfinite(kth) else np.inf
        inside = (full[0][i] < min(under, edge)) & (full[1][i] >= 0)
        assert set(full[1][i][inside].tolist()) <= set(r[i].tolist())  # what beats the bound is kept
    off = 10**6  # the earlier lists' rows, told apart
    prev_i = np.where(prev[1] >= 0, prev[1] + off, -1)
    a = merge_topk(np.concatenate([prev[0], full[0]], 1), np.concatenate([prev_i, full[1]], 1), k)
    b = merge_topk(np.concatenate([prev[0], d], 1), np.concatenate([prev_i, r], 1), k)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)  # the same merged top-k
    unbounded = np.isinf(bound)  # rows without a bound get everything: the same distances
    np.testing.assert_allclose(d[unbounded], full[0][unbounded], rtol=1e-5, atol=1e-5)


def test_a_bad_bound_is_a_clear_error():
    from curriculum.neighbors import blocked_knn

    x = np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"bound: expected one distance \(or inf\) per row of x \(300\)"):
        blocked_knn(x, 3, "l2", bound=np.ones(5))
    with pytest.raises(ValueError, match="with NaN"):
        blocked_knn(x, 3, "l2", bound=np.full(300, np.nan))


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_labelled_blocked_search_of_a_base_equals_brute_force(metric):
    """Queries and base apart (a shard's visitors, say), each with its labels: at full probe the
    other-label neighbours equal brute force; at few probes never the query's label, with the
    blocks' purity passed in (as a sharded store passes its all-reduced one) or computed from both."""
    from curriculum.neighbors import blocked_knn, brute_knn
    from curriculum.neighbors.blocked import assign_blocks, block_label_range, block_plan, purity_of_range

    x, lab = clustered(4000, 12, n_clusters=30, seed=3)
    x, labels = x.astype(np.float32), lab % 4
    labels[::37] = (labels[::37] + 1) % 4  # mixed blocks too
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    q, base, q_lab, b_lab = x[:1500], x[1500:], labels[:1500], labels[1500:]
    cent, assign = block_plan(base, 10, metric)
    d, r = blocked_knn(q, 6, metric, nprobe=10_000, base=base, centroids=cent, assign=assign, labels=q_lab,
                       base_labels=b_lab)
    for i in range(0, 1500, 7):
        other = np.flatnonzero(b_lab != q_lab[i])
        ref_d, ref_r = brute_knn(q[i:i + 1], base[other], 6, metric)
        np.testing.assert_allclose(d[i], ref_d[0], rtol=1e-4, atol=1e-5)
        assert set(r[i].tolist()) == set(other[ref_r[0]].tolist())
    q_assign = assign_blocks(q, cent, metric)
    (b_lo, b_hi), (q_lo, q_hi) = block_label_range(b_lab, assign, 10), block_label_range(q_lab, q_assign, 10)
    pure = purity_of_range(np.minimum(b_lo, q_lo), np.maximum(b_hi, q_hi))
    for given in (None, pure):
        d2, r2 = blocked_knn(q, 6, metric, nprobe=2, base=base, centroids=cent, assign=assign, query_assign=q_assign,
                             labels=q_lab, base_labels=b_lab, pure=given)
        assert ((r2 < 0) | (b_lab[np.maximum(r2, 0)] != q_lab[:, None])).all()
        assert (r2 >= 0).mean() > 0.9
    with pytest.raises(ValueError, match="base_labels"):
        blocked_knn(q, 6, metric, base=base, labels=q_lab)


def test_negatives_table_equals_search_and_follows_the_store():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 8)).astype(np.float32)
    lab = rng.integers(0, 4, 2000)
    store = cl.EmbeddingStore(8, metric="l2", index="flat")
    store.add(x, labels=lab)
    anchors = rng.choice(2000, 64, replace=False)
    plain = HardNegativeMiner(store, k=10).negatives(anchors)
    miner = HardNegativeMiner(store, k=10).build_table(nprobe=1000)  # every block probed: exact table
    assert miner.table_info["rows"] == 2000 and miner.table_info["k"] == 28
    got = miner.negatives(anchors)
    assert got.ids.tolist() == plain.ids.tolist()
    np.testing.assert_allclose(got.distances, plain.distances, rtol=1e-5)
    assert not np.isin(got.ids, anchors).any()  # the batch is excluded, as without a table
    # the table holds candidates; distances and labels are read at the current store
    a0, first = int(anchors[0]), int(got.ids[0, 0])
    store.update([first], x[first:first + 1] + 50.0)
    after = miner.negatives(anchors[:1])
    assert first not in after.ids[0].tolist()
    assert after.ids[0].tolist() == HardNegativeMiner(store, k=10).negatives(anchors[:1]).ids[0].tolist()
    store.update([int(after.ids[0, 0])], store.vectors([int(after.ids[0, 0])]), labels=[lab[a0]])
    assert int(after.ids[0, 0]) not in miner.negatives(anchors[:1]).ids[0].tolist()
    # anchors added after the build fall back to the index search
    new = store.add(rng.normal(size=(3, 8)).astype(np.float32), labels=[0, 1, 2])
    fresh = miner.negatives(new)
    assert fresh.ids.tolist() == HardNegativeMiner(store, k=10).negatives(new).ids.tolist()
    miner.drop_table()
    assert miner.table_info == {}


def test_negatives_table_builds_in_the_background_and_reports_failure(monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    lab = rng.integers(0, 4, 3000)
    store = cl.EmbeddingStore(8, metric="l2", index="flat")
    store.add(x, labels=lab)
    anchors = np.arange(32)
    plain = HardNegativeMiner(store, k=5).negatives(anchors).ids
    miner = HardNegativeMiner(store, k=5).build_table(nprobe=1000, background=True)
    during = miner.negatives(anchors).ids  # answered while the build runs (index or table)
    miner.wait_table()
    assert miner.table_info["rows"] == 3000
    assert during.tolist() == plain.tolist() == miner.negatives(anchors).ids.tolist()
    import curriculum.neighbors.negatives as neg_mod

    def broken(*a, **kw):
        raise MemoryError("no room for the table")

    monkeypatch.setattr(neg_mod, "negatives_table", broken)
    miner.build_table(background=True)
    with pytest.raises(RuntimeError, match="negatives table build failed"):
        miner.wait_table()
    assert miner.table_info["rows"] == 3000  # the previous table stays in use
    assert miner.negatives(anchors).ids.tolist() == plain.tolist()


def test_negatives_table_recall_on_a_clustered_set():
    x, lab = clustered(20_000, 32, n_clusters=40, seed=0)
    labels = lab % 10
    store = cl.EmbeddingStore(32, metric="cosine", index="flat")
    store.add(x, labels=labels)
    anchors = np.random.default_rng(3).choice(20_000, 256, replace=False)
    exact = HardNegativeMiner(store, k=20).negatives(anchors).ids
    miner = HardNegativeMiner(store, k=20).build_table()  # nprobe chosen for recall 0.95
    assert miner.table_info["recall_estimate"] >= 0.95
    got = miner.negatives(anchors).ids
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(got.tolist(), exact.tolist())])
    assert recall >= 0.94, (recall, miner.table_info)  # the estimate is a 512-row sample
    cheap = HardNegativeMiner(store, k=20).build_table(nprobe=2)
    recall2 = np.mean([len(set(a) & set(b)) / 20
                       for a, b in zip(cheap.negatives(anchors).ids.tolist(), exact.tolist())])
    assert recall2 < recall and cheap.table_info["recall_estimate"] is None


@settings(max_examples=12, deadline=None)
@given(st.integers(200, 1500), st.sampled_from([4, 16]), st.integers(2, 6), st.sampled_from(["l2", "cosine"]),
       st.integers(0, 99))
def test_descent_negatives_are_other_label_sorted_and_near_exact(n, dim, n_labels, metric, seed):
    from curriculum.neighbors import exact_topk, get_metric, pair_distances
    from curriculum.neighbors.negatives import descent_negatives

    x, lab = clustered(n, dim, n_clusters=8, seed=seed)
    lab = (lab + np.random.default_rng(seed).integers(0, 2, n)) % n_labels  # labels mix inside clusters
    k = 12
    rows, info = descent_negatives(x, lab, k, metric, target=1.0)
    ok = rows >= 0
    assert (lab[rows[ok]] != np.broadcast_to(lab[:, None], rows.shape)[ok]).all()  # never the row's label
    assert all(len(set(r[r >= 0].tolist())) == (r >= 0).sum() for r in rows)  # no row listed twice
    xp = get_metric(metric).prepare(x)
    true_d = exact_topk(xp, xp, k, metric, lab, lab)[0]
    found = np.where(ok, pair_distances(xp, xp[np.maximum(rows, 0)], metric), np.inf)
    assert (np.diff(found, axis=1) >= -1e-5).all()  # nearest first
    hit = found <= true_d[:, -1:] + 1e-5  # a row at no more than the true k-th distance is right
    assert hit.mean() >= 0.97 and info["recall_estimate"] >= 0.97, (hit.mean(), info)
    np.testing.assert_array_equal(rows, descent_negatives(x, lab, k, metric, target=1.0)[0])  # deterministic


def test_negatives_table_by_descent_and_the_automatic_choice(monkeypatch):
    import curriculum.neighbors.negatives as HN

    x, lab = clustered(20_000, 32, n_clusters=40, seed=0)
    store = cl.EmbeddingStore(32, metric="cosine", index="flat")
    store.add(x, labels=lab % 10)
    anchors = np.random.default_rng(3).choice(20_000, 256, replace=False)
    exact = HardNegativeMiner(store, k=20).negatives(anchors).ids
    miner = HardNegativeMiner(store, k=20).build_table(method="descent")
    info = miner.table_info
    assert info["method"] == "descent" and info["recall_estimate"] >= 0.95 and info["rounds"] >= 1
    recall = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(miner.negatives(anchors).ids.tolist(), exact.tolist())])
    assert recall >= 0.94, (recall, info)
    monkeypatch.setattr(HN, "DESCENT_FROM_ROWS", 10_000)  # auto: descent from this many rows ...
    assert HardNegativeMiner(store, k=5).build_table().table_info["method"] == "descent"
    assert HardNegativeMiner(store, k=5).build_table(nprobe=4).table_info["method"] == "blocked"  # ... unless probes
    monkeypatch.setattr(HN, "DESCENT_FROM_ROWS", 30_000)
    assert HardNegativeMiner(store, k=5).build_table().table_info["method"] == "blocked"


def test_negatives_table_by_descent_walks_the_stores_cached_graph():
    from curriculum.neighbors.negatives import descent_negatives

    x, lab = clustered(6000, 16, n_clusters=20, seed=1)
    lab = lab % 5
    ids = np.random.default_rng(0).permutation(6000) * 3 + 7  # ids are not row numbers
    store = cl.EmbeddingStore(16, metric="l2")
    store.add(x, ids=ids, labels=lab)
    assert store.cached_knn(10) is None
    assert HardNegativeMiner(store, k=10).build_table(method="descent").table_info["graph"] == "built"
    _, nb = store.knn(12, method="exact")
    miner = HardNegativeMiner(store, k=10, exclude_batch=False).build_table(method="descent", target_recall=1.0)
    assert miner.table_info["graph"] == "cached" and miner.table_info["rounds"] >= 1  # the rounds walk the graph
    row_of = np.empty(ids.max() + 1, np.int64)
    row_of[ids] = np.arange(6000)
    rows = descent_negatives(x, lab, 28, "l2", recall_k=10, target=1.0, graph=row_of[nb[:, :10]])[0]  # by hand
    np.testing.assert_array_equal(miner.negatives(ids[:300]).ids, ids[rows[:300, :10]])
    store.update(ids[:1], x[:1] + 0.5)  # a write: the cached graph is stale
    assert store.cached_knn(10) is None
    assert HardNegativeMiner(store, k=10).build_table(method="descent").table_info["graph"] == "built"


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_exact_topk_over_many_queries_equals_brute_force(metric):
    """More queries than one score block holds run in groups: the same answer as brute force."""
    from curriculum.neighbors import brute_knn, exact_topk
    from curriculum.neighbors.kernels import QUERY_GROUP

    rng = np.random.default_rng(4)
    q, x = rng.normal(size=(2 * QUERY_GROUP + 300, 6)).astype(np.float32), rng.normal(size=(5000, 6)).astype(np.float32)
    q_lab, x_lab = rng.integers(0, 3, len(q)), rng.integers(0, 3, len(x))
    d, rows = exact_topk(q, x, 7, metric)
    ref_d, ref_rows = brute_knn(q, x, 7, metric)
    np.testing.assert_array_equal(rows, ref_rows)
    np.testing.assert_allclose(d, ref_d, rtol=1e-4, atol=1e-5)
    d, rows = exact_topk(q, x, 7, metric, q_lab, x_lab)
    for label in range(3):
        at, other = np.flatnonzero(q_lab == label), np.flatnonzero(x_lab != label)
        np.testing.assert_array_equal(rows[at], other[brute_knn(q[at], x[other], 7, metric)[1]])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 60), st.integers(1, 9), st.integers(1, 7), st.sampled_from(["l2", "ip"]),
       st.booleans(), st.integers(0, 2**31 - 1))
def test_exact_topk_keeps_the_smaller_row_of_equal_distances(nq, n, k, chunk, metric, labelled, seed):
    """Small integer vectors (exact products, many ties), chunks of a few rows: the k first rows by
    (distance, row), as a full sort gives them; with labels only rows of another label; then -1."""
    from curriculum.neighbors import exact_topk

    rng = np.random.default_rng(seed)
    q, x = rng.integers(-2, 3, (nq, 3)).astype(np.float32), rng.integers(-2, 3, (n, 3)).astype(np.float32)
    q_lab, x_lab = rng.integers(0, 2, nq), rng.integers(0, 2, n)
    d, rows = exact_topk(q, x, k, metric, *((q_lab, x_lab) if labelled else (None, None)), chunk=chunk)
    qd, xd = q.astype(np.float64), x.astype(np.float64)
    ref = ((qd[:, None, :] - xd[None]) ** 2).sum(-1) if metric == "l2" else -(qd @ xd.T)
    for i in range(nq):
        ok = np.flatnonzero(x_lab != q_lab[i]) if labelled else np.arange(n)
        want = ok[np.lexsort((ok, ref[i, ok]))][:k]
        np.testing.assert_array_equal(rows[i], np.concatenate([want, np.full(k - len(want), -1)]))
        got = d[i, :len(want)] ** 2 if metric == "l2" else d[i, :len(want)]
        np.testing.assert_allclose(got, ref[i, want], atol=1e-4)
        assert np.isinf(d[i, len(want):]).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 300), st.integers(1, 40), st.integers(1, 4), st.sampled_from(["l2", "ip"]),
       st.sampled_from([None, 1, 7]), st.integers(0, 2**31 - 1))
def test_nearest_rows_equals_a_full_sort(n, n_cent, k, metric, chunk, seed):
    """Each row's k nearest centroids, nearest first: the distances of a full sort (small integer
    vectors: exact products, many ties), the indices in that order, of equal distances the first
    centroid first; k out of range is an error."""
    from curriculum.neighbors import nearest_rows

    rng = np.random.default_rng(seed)
    x, c = rng.integers(-3, 4, (n, 4)).astype(np.float32), rng.integers(-3, 4, (n_cent, 4)).astype(np.float32)
    if k > n_cent:
        with pytest.raises(ValueError, match="k: expected 1 to the number of centroids"):
            nearest_rows(x, c, metric, k=k, chunk=chunk)
        return
    d, idx = nearest_rows(x, c, metric, k=k, chunk=chunk)
    assert d.shape == idx.shape == (n, k)
    xd, cd = x.astype(np.float64), c.astype(np.float64)
    ref = ((xd[:, None, :] - cd[None]) ** 2).sum(-1) if metric == "l2" else -(xd @ cd.T)
    want = np.sort(ref, axis=1)[:, :k]
    got = d.astype(np.float64) ** 2 if metric == "l2" else d.astype(np.float64)
    np.testing.assert_allclose(got, want, atol=1e-3)
    np.testing.assert_allclose(np.take_along_axis(ref, idx, 1), want, atol=1e-6)  # each index scores its distance
    np.testing.assert_array_equal(idx, np.argsort(ref, axis=1, kind="stable")[:, :k])  # ties: the first centroid


@pytest.mark.parametrize("method", ["blocked", "descent"])
def test_negatives_table_with_one_label_or_few_rows_of_another(method):
    from curriculum.neighbors import exact_topk
    from curriculum.neighbors.negatives import negatives_table

    x = np.random.default_rng(0).normal(size=(3000, 4)).astype(np.float32)
    rows, info = negatives_table(x, np.zeros(3000, np.int64), 5, "l2", method=method)
    assert (rows == -1).all()  # one label: no negatives anywhere (and no error)
    lab = np.zeros(3000, np.int64)
    lab[:3] = 1  # three rows of another label: everyone's list holds those three, then -1
    rows, info = negatives_table(x, lab, 5, "l2", method=method)
    np.testing.assert_array_equal(rows, exact_topk(x, x, 5, "l2", lab, lab)[1])
    assert info["recall_estimate"] == 1.0 and info.get("rounds", 0) == 0  # recall counts the rows that exist
    store = cl.EmbeddingStore(4, metric="l2")
    store.add(x, labels=np.zeros(3000, np.int64))
    miner = HardNegativeMiner(store, k=3).build_table(method=method)
    assert (miner.negatives([0, 1]).ids == -1).all()


def test_negatives_table_bad_input():
    store = cl.EmbeddingStore(2, metric="l2")
    store.add(np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match="store: a negatives table needs a label"):
        HardNegativeMiner(store).build_table()
    store2 = cl.EmbeddingStore(2, metric="l2")
    store2.add(np.eye(2, dtype=np.float32), labels=[0, 1])
    with pytest.raises(ValueError, match="nprobe"):
        HardNegativeMiner(store2).build_table(nprobe=0)
    with pytest.raises(ValueError, match="target_recall"):
        HardNegativeMiner(store2).build_table(target_recall=1.5)
    with pytest.raises(ValueError, match="k"):
        HardNegativeMiner(store2).build_table(k=0)
    with pytest.raises(ValueError, match="method: expected one of"):
        HardNegativeMiner(store2).build_table(method="exact")
    with pytest.raises(ValueError, match="nprobe: the blocked engine's probes"):
        HardNegativeMiner(store2).build_table(method="descent", nprobe=4)
    miner = HardNegativeMiner(store2, k=1)
    with pytest.raises(ValueError):
        miner.build_table(target_recall=0.0)
    assert miner.table_info == {} and miner._table is None  # nothing half-built


def test_anchor_without_negatives_is_padded_not_garbage():
    store = cl.EmbeddingStore(1, metric="l2")
    store.add(np.array([[0.0], [1.0], [2.0]]), labels=[0, 0, 1])
    m = HardNegativeMiner(store, k=3).negatives([0])
    assert m.ids.tolist() == [[2, -1, -1]] and np.isinf(m.distances[0, 1:]).all()
    pos = HardNegativeMiner(store, k=2).positives([2])   # alone in its class
    assert pos.ids.tolist() == [[-1, -1]]


def test_global_positives_are_the_farthest_same_class():
    x = np.array([[0.0], [1.0], [5.0], [2.0], [9.0]], np.float32)
    store = cl.EmbeddingStore(1, metric="l2")
    store.add(x, labels=[0, 0, 0, 1, 0])
    assert HardNegativeMiner(store, k=2).positives([0]).ids.tolist() == [[4, 2]]


def test_semi_hard_global():
    x = np.array([[0.0], [1.0], [1.5], [1.8], [2.5], [0.2]], np.float32)
    store = cl.EmbeddingStore(1, metric="l2")
    store.add(x, labels=[0, 0, 1, 1, 1, 1])
    m = HardNegativeMiner(store, k=5).semi_hard([0], [1], margin=1.0)
    assert m.ids.tolist() == [[2, 3, -1, -1, -1]]  # 0.2 is too hard, 2.5 beyond the margin


def test_mined_steps_record_staleness():
    store = cl.EmbeddingStore(1, metric="l2")
    store.add(np.array([[0.0], [1.0], [2.0]]), labels=[0, 1, 1], step=3)
    store.update([2], np.array([[1.5]]), step=9)
    m = HardNegativeMiner(store, k=2).negatives([0])
    assert m.ids.tolist() == [[1, 2]] and m.steps.tolist() == [[3, 9]]


def test_ssl_negatives_skip_near_duplicates():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 16)).astype(np.float32)
    x[1] = x[0] + 1e-3  # a near-duplicate of anchor 0
    store = cl.EmbeddingStore(16, metric="cosine")
    store.add(x)  # no labels: self-supervised
    plain = HardNegativeMiner(store, k=3).negatives([0])
    assert plain.ids[0, 0] == 1
    dedup = HardNegativeMiner(store, k=3, duplicate_threshold=0.99).negatives([0])
    assert 1 not in dedup.ids[0] and 0 not in dedup.ids[0]


def test_hard_negative_nce_reduces_to_infonce_and_matches_hand_values():
    torch.manual_seed(0)
    a, p, n = torch.randn(5, 6), torch.randn(5, 6), torch.randn(5, 9, 6)
    assert torch.allclose(hard_negative_nce(a, p, n, 0.5, beta=0.0, tau_plus=0.0), info_nce(a, p, n, 0.5), atol=1e-6)
    # hand computation with 2 negatives
    a1 = torch.tensor([[1.0, 0.0]])
    p1 = torch.tensor([[0.6, 0.8]])
    n1 = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]]])
    t, beta, tau = 0.5, 1.0, 0.1
    pos = np.exp(0.6 / t)
    neg = np.exp(np.array([0.0, -1.0]) / t)
    imp = neg ** beta
    r = (imp * neg).sum() / imp.mean()
    ng = max((-tau * 2 * pos + r) / (1 - tau), 2 * np.exp(-1 / t))
    want = -np.log(pos / (pos + ng))
    assert hard_negative_nce(a1, p1, n1, t, beta, tau).item() == pytest.approx(want, rel=1e-5)


def test_mochi_shapes_and_mixing():
    g = torch.Generator().manual_seed(0)
    q, neg = torch.randn(3, 8), torch.randn(3, 20, 8)
    h = mochi(q, neg, n_hard=5, s=4, s_prime=2, generator=g)
    assert h.shape == (3, 6, 8)
    assert torch.allclose(h.norm(dim=2), torch.ones(3, 6), atol=1e-5)
    # query mixes are closer to the query than to a random direction
    sim_q = torch.einsum("bd,bnd->bn", torch.nn.functional.normalize(q, dim=1), h[:, 4:])
    assert (sim_q > -0.5).all()


@pytest.mark.parametrize("b", [512, 4096])
def test_inbatch_miners_return_the_tuples_of_pytorch_metric_learning(b):
    """Same definitions, same tuples, including pairs at the multi-similarity epsilon boundary
    (at B = 4096 one pair sat there when the similarity was computed as 1 - (1 - cos))."""
    pml = pytest.importorskip("pytorch_metric_learning.miners")
    g = torch.Generator().manual_seed(0)
    if b == 4096:  # advance the generator to a batch holding a pair at the epsilon boundary
        torch.randn(1024, 128, generator=g), torch.randint(0, 128, (1024,), generator=g)
    emb = torch.randn(b, 128, generator=g)
    lab = torch.randint(0, b // 8, (b,), generator=g)

    def as_set(t):  # tuples as sorted int64 keys (16M negative pairs at 4096: no Python sets)
        def key(*cols):
            k = torch.zeros_like(cols[0])
            for c in cols:
                k = k * b + c
            return torch.sort(k).values.tolist() if k.numel() < 100_000 else torch.sort(k).values

        parts = [(t[0], t[1]), (t[2], t[3])] if len(t) == 4 else [tuple(t)]
        return [key(*p) for p in parts]

    def same(x, y):
        return all(torch.equal(u, v) if isinstance(u, torch.Tensor) else u == v for u, v in zip(x, y))

    assert same(as_set(MultiSimilarityMiner(0.1)(emb, lab)), as_set(pml.MultiSimilarityMiner(epsilon=0.1)(emb, lab)))
    assert same(as_set(BatchHardMiner()(emb, lab)), as_set(pml.BatchHardMiner()(emb, lab)))
    if b <= 1024:  # every semi-hard triplet: ~1e8 at 4096
        ours = SemiHardMiner(0.2, distance="l2", all_negatives=True)(torch.nn.functional.normalize(emb, dim=1), lab)
        theirs = pml.TripletMarginMiner(margin=0.2, type_of_triplets="semihard")(emb, lab)
        assert same(as_set(ours), as_set(theirs))


def test_cross_batch_memory_fifo_and_negatives():
    mem = CrossBatchMemory(size=4, dim=1, distance="l2")
    mem.add(torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([0, 1, 1]), ids=torch.tensor([10, 11, 12]))
    mem.add(torch.tensor([[3.0], [4.0]]), torch.tensor([0, 1]), ids=torch.tensor([13, 14]))
    assert len(mem) == 4 and sorted(mem.ids.tolist()) == [11, 12, 13, 14]  # 10 evicted
    slots, dist = mem.negatives(torch.tensor([[3.1]]), torch.tensor([0]), k=3)
    assert mem.ids[slots[0]].tolist() == [14, 12, 11]  # d = 0.9, 1.1, 2.1


def test_cross_batch_memory_bad_input_changes_nothing():
    mem = CrossBatchMemory(size=4, dim=2, distance="l2")
    mem.add(torch.zeros(2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="ids: expected 3 ids"):
        mem.add(torch.ones(3, 2), torch.tensor([0, 1, 1]), ids=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="finite"):
        mem.add(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    assert len(mem) == 2 and mem.ptr == 2 and (mem.emb[:2] == 0).all()
    with pytest.raises(ValueError, match="device: expected a torch device"):
        CrossBatchMemory(4, 2, device="gpu0")


def test_cross_batch_memory_takes_bf16_and_float64():
    mem = CrossBatchMemory(size=8, dim=2, distance="l2")
    mem.add(torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]], dtype=torch.bfloat16), [0, 1, 1])
    slots, dist = mem.negatives(torch.tensor([[1.2, 0.0]], dtype=torch.float64), [0], k=2)
    assert slots.tolist() == [[1, 2]] and dist.dtype == torch.float32


def test_neighbourhood_batches_hold_hard_negatives_and_refresh():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    lab = rng.integers(0, 5, 300)
    store = cl.EmbeddingStore(4, metric="l2")
    store.add(x, labels=lab)
    bs = NeighbourhoodBatchSampler(store, anchors_per_batch=8, positives=3, negatives=2, seed=1)
    batches = list(bs)
    assert len(batches) == len(bs) == 38
    _, nb = store.knn(bs.graph_k)
    first = batches[0]
    anchor = first[0]
    nearest_other = [j for j in nb[anchor] if lab[j] != lab[anchor]][:2]
    assert set(nearest_other) <= set(first)
    assert list(NeighbourhoodBatchSampler(store, 8, 3, 2, seed=1)) == batches  # deterministic
    store.update([anchor], x[anchor:anchor + 1] + 100)  # the store moves: neighbourhoods follow
    bs.set_epoch(0)
    moved = list(bs)[0]
    assert moved != first


def test_index_refresher_reembeds_in_background_with_steps():
    data = torch.utils.data.TensorDataset(torch.randn(120, 6))
    enc = torch.nn.Linear(6, 3)
    store = cl.EmbeddingStore.from_model(enc, data, progress=False, metric="l2", step=0)
    ref = IndexRefresher(store, enc, data, every_steps=10)
    assert not ref.step(5)
    with torch.no_grad():
        enc.weight.mul_(2.0)  # the encoder drifts
    assert ref.step(10)
    with torch.no_grad():
        enc.weight.mul_(100.0)  # changes after the snapshot must not leak into this refresh
    ref.wait()
    assert (store.steps == 10).all() and ref.refreshes == 1
    with torch.no_grad():
        want = (data.tensors[0] @ (enc.weight / 100.0).T + enc.bias).numpy()
    np.testing.assert_allclose(store.vectors(np.arange(120)), want, atol=1e-4)
    with pytest.raises(ValueError, match="trigger"):
        IndexRefresher(store, enc, data)
