"""Curation: k-means pieces against brute force, modes found without being told their number,
balanced subsets of long-tailed pools (default arguments), the junk filters, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import curriculum as cl
from curriculum.cli.bench_curation import balance, curation_section, mode_pool
from curriculum.selection import curation as CU
from curriculum.selection import leaf_neighbors as LN
from curriculum.neighbors import kmeans as KM


def blobs(sizes, dim=8, sep=40.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim)) * sep
    x = np.concatenate([c + rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)]).astype(np.float32)
    return x, np.repeat(np.arange(len(sizes)), sizes)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 60), st.integers(1, 6), st.integers(1, 7), st.integers(0, 99))
def test_reduce_sums_equals_brute_force(n, d, k, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    lab = rng.integers(0, k, n)
    sums, counts = KM.reduce_sums(x, lab, k)
    for c in range(k):
        np.testing.assert_allclose(sums[c], x[lab == c].sum(0), rtol=1e-5, atol=1e-5)
        assert counts[c] == (lab == c).sum()


def test_assign_matches_brute_force():
    rng = np.random.default_rng(1)
    x, c = rng.normal(size=(300, 5)).astype(np.float32), rng.normal(size=(17, 5)).astype(np.float32)
    lab, dist = KM.assign(x, c)
    full = np.linalg.norm(x[:, None] - c[None], axis=2)
    np.testing.assert_array_equal(lab, full.argmin(1))
    np.testing.assert_allclose(dist, full.min(1), rtol=1e-4, atol=1e-4)


def test_kmeans_seeds_the_tail_and_recovers_separated_blobs():
    x, y = blobs([3000, 300, 30, 10])
    hits = [len({int(y[np.linalg.norm(x - s, axis=1).argmin()]) for s in KM.kmeans_pp_init(x, 8, seed=s)})
            for s in range(10)]
    assert min(hits) == 4  # 8 seeds: every blob, the 10-row one too (uniform seeds: 1% of the draws)
    lab = KM.assign(x, KM.kmeans(x, 8, seed=0))[0]
    assert all(len(np.unique(y[lab == c])) == 1 for c in np.unique(lab))  # no cluster spans two blobs
    assert len(np.unique(y[np.unique(lab, return_index=True)[1]])) == 4
    np.testing.assert_array_equal(KM.kmeans(x, 8, seed=3), KM.kmeans(x, 8, seed=3))  # deterministic


def test_spherical_kmeans_keeps_a_centroid_whose_rows_cancel_out():
    # two antipodal rows in one cluster: their mean is 0 - normalising it raised "vectors: expected non-zero vectors"
    store = cl.EmbeddingStore(1, metric="cosine")
    store.add(np.array([[1.0], [-1.0]], np.float32))
    res = store.kmeans(1, seed=0)
    assert abs(float(res.centroids[0, 0])) == 1.0 and res.assignments.tolist() == [0, 0]
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], np.float32)
    c = KM.kmeans(x, 2, spherical=True, seed=1)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-6)


def test_kmeans_stops_once_few_rows_move_and_split_runs_stop_together():
    import threading

    x = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)  # no clusters: slow to settle
    init = np.ascontiguousarray(x[:40])
    once = KM.kmeans(x, 40, niter=1, init=init, points_per_centroid=0, tol=0.0)
    # the first step moves every row (tol 1 stops after it); tol 0 runs all 30 steps
    np.testing.assert_array_equal(KM.kmeans(x, 40, niter=30, init=init, points_per_centroid=0, tol=1.0), once)
    full = KM.kmeans(x, 40, niter=30, init=init, points_per_centroid=0, tol=0.0)
    early = KM.kmeans(x, 40, niter=30, init=init, points_per_centroid=0, tol=0.02)
    assert not np.allclose(early, full) and not np.allclose(early, once)
    sums, barrier = {}, threading.Barrier(2)

    def summed(a, rank):  # an all-reduce between two "processes" holding alternate rows
        sums[rank] = a
        barrier.wait()
        total = sums[0] + sums[1]
        barrier.wait()
        return total

    got = [None, None]

    def run(rank):
        got[rank] = KM.kmeans(x[rank::2], 40, niter=30, init=init, points_per_centroid=0, tol=0.02,
                              reduce=lambda a: summed(a, rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    np.testing.assert_array_equal(got[0], got[1])
    np.testing.assert_allclose(got[0], early, rtol=1e-5, atol=1e-5)  # stopped at the same step
    with pytest.raises(ValueError, match="tol"):
        KM.kmeans(x, 4, tol=1.5)


@settings(max_examples=8, deadline=None)
@given(st.integers(2, 40), st.sampled_from([4, 16, 64]), st.integers(0, 9))
def test_mode_cut_finds_the_number_of_modes(modes, dim, seed):
    x, y = blobs([20] * modes, dim=dim, seed=seed)
    cut = CU.mode_cut(x)  # every row a "leaf": the modes are the blobs
    assert cut is not None
    assert len(np.unique(cut)) == modes
    assert all(len(np.unique(cut[y == b])) == 1 for b in range(modes))


def test_mode_cut_sees_no_modes_in_one_gaussian():
    x = np.random.default_rng(0).normal(size=(400, 16)).astype(np.float32)
    assert CU.mode_cut(x) is None


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 9), st.integers(0, 99))
def test_leaf_links_count_the_rows_between_the_two_nearest_core_leaves(n, k, seed):
    rng = np.random.default_rng(seed)
    nearest = np.stack([rng.permutation(k)[:min(3, k)] for _ in range(n)]).reshape(n, min(3, k))
    sizes = rng.integers(0, 2 * CU.MIN_MODE_ROWS, k)
    want = np.zeros((k, k), np.int64)
    for row in nearest:
        core = [leaf for leaf in row if sizes[leaf] >= CU.MIN_MODE_ROWS][:2]
        if len(core) == 2:
            want[core[0], core[1]] += 1
            want[core[1], core[0]] += 1
    np.testing.assert_array_equal(CU.leaf_links(nearest, sizes).toarray(), want)


def test_mode_cut_splits_what_no_row_links():
    from scipy.sparse import csr_matrix

    line = np.arange(40, dtype=np.float32)[:, None]  # evenly spaced leaves: distance shows no modes
    assert CU.mode_cut(line) is None
    links = np.zeros((40, 40), np.int64)
    for i in range(39):
        links[i, i + 1] = links[i + 1, i] = 0 if i in (9, 24) else 5  # no row between leaves 9|10, 24|25
    got = CU.mode_cut(line, np.full(40, 10), links=csr_matrix(links))
    np.testing.assert_array_equal(np.unique(got, return_index=True)[1], [0, 10, 25])
    assert np.bincount(got).tolist() == [10, 15, 15]
    links[0, 1] = links[1, 0] = 0  # one leaf cut off and 30 linked: parts, no modes
    links[9, 10] = links[10, 9] = links[24, 25] = links[25, 24] = 5
    assert CU.mode_cut(line, np.full(40, 10), links=csr_matrix(links)) is None


@pytest.mark.parametrize("modes,dim,rows,pool_seed,metric,seed", [(5, 16, 15000, 5, "l2", 1),
                                                                   (16, 16, 24000, 17, "cosine", 0),
                                                                   (8, 8, 8000, 8, "l2", 0)])
def test_curate_balances_modes_whose_leaves_touch(modes, dim, rows, pool_seed, metric, seed):
    # a dense mode of few wide leaves beside a sparse one of many small leaves: single linkage
    # merged them (max/min 7.9, 6.0, 9.7 before the leaf links), no row lies between them
    x, y = mode_pool(modes, dim, rows, seed=pool_seed)
    store = cl.EmbeddingStore(dim, metric=metric)
    store.add(x)
    got = balance(y, store.rows_of(cl.curate(store, rows // 10, seed=seed)))
    assert got["max_min"] <= 1.5 and got["small_taken"] >= 0.75, got  # tails nearly whole (strays left out)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("modes,dim,rows", [(5, 16, 8000), (16, 16, 24000), (60, 64, 20000)])
def test_curate_defaults_balance_an_unknown_number_of_modes(metric, modes, dim, rows):
    x, y = mode_pool(modes, dim, rows, seed=modes)
    store = cl.EmbeddingStore(dim, metric=metric)
    store.add(x)
    target = rows // 10
    sel = cl.curate(store, target)
    assert len(sel) == target and len(np.unique(sel)) == target
    got = balance(y, store.rows_of(sel))
    rand = balance(y, np.random.default_rng(0).choice(rows, target, replace=False))
    assert got["max_min"] <= 2.5 and got["small_taken"] >= 0.9, got
    assert got["effective"] > rand["effective"] and got["rare_share"] > 2 * rand["rare_share"]
    np.testing.assert_array_equal(sel, cl.curate(store, target))  # same seed, same subset


@settings(max_examples=15, deadline=None)
@given(st.integers(2, 64), st.integers(3, 40), st.integers(3, 40), st.integers(0, 99))
def test_split_joined_splits_a_leaf_over_two_groups_and_nothing_else(dim, n_a, n_b, seed):
    x, y = blobs([n_a, n_b], dim=dim, sep=40.0, seed=seed)
    x = x + 1000.0  # one cluster over both groups, far from the origin
    means = [x[y == g].mean(0) for g in (0, 1)]
    radius = np.sqrt(np.mean([((x[y == g] - means[g]) ** 2).sum(1).mean() for g in (0, 1)]))
    got = CU.split_joined(x, x.mean(0, keepdims=True))
    if np.linalg.norm(means[0] - means[1]) > 6 * radius:  # the halves are the two groups, in either order
        assert len(got) == 2
        means.sort(key=lambda m: np.linalg.norm(m - got[0]))
        np.testing.assert_allclose(got, np.stack(means), rtol=1e-4, atol=1e-3)
    # one Gaussian is not split from 8 dimensions (below, a leaf of under 20 rows can be: see split_joined)
    one = blobs([n_a + n_b], dim=max(dim, 8), seed=seed)[0]
    np.testing.assert_array_equal(CU.split_joined(one, one.mean(0, keepdims=True)), one.mean(0, keepdims=True))
    small = np.concatenate([one, one[:2] + 500.0])  # two far rows: fewer than MIN_MODE_ROWS, not a group
    assert len(CU.split_joined(small, small.mean(0, keepdims=True))) == 1
    for bad, name in (({"gap": 0.0}, "gap"), ({"gap": float("nan")}, "gap"), ({"min_rows": 0}, "min_rows")):
        with pytest.raises(ValueError, match=name):
            CU.split_joined(x, x.mean(0, keepdims=True), **bad)


def test_auto_hierarchy_splits_leaves_that_join_separated_modes():
    x, y = blobs([400, 30, 20], dim=16)
    h = CU.auto_hierarchy(x, "l2", n_leaves=2)  # two k-means centroids for three modes
    assert len(h.centroids[0]) == 3  # one leaf was split: a leaf per mode, each pure
    assert sorted(len(np.unique(y[h.assignments[0] == c])) for c in range(3)) == [1, 1, 1]
    assert sorted(np.bincount(h.assignments[0]).tolist()) == [20, 30, 400]


def test_balanced_select_leaves_out_what_keep_excludes():
    h = CU.Hierarchy([np.repeat([0, 1, 2], [50, 50, 50])], [np.zeros((3, 1), np.float32)])
    keep = np.ones(150, bool)
    keep[100:140] = False
    sel = CU.balanced_select(h, 30, keep=keep)
    assert keep[sel].all() and np.bincount(h.assignments[0][sel]).tolist() == [10, 10, 10]
    with pytest.raises(ValueError, match="target: expected at most the pool size 110"):
        CU.balanced_select(h, 111, keep=keep)
    with pytest.raises(ValueError, match="keep"):
        CU.balanced_select(h, 3, keep=keep[:5])


def test_reference_drops_planted_junk_but_keeps_rare_modes():
    x, y = blobs([4000, 1000, 100, 40, 400])  # blob 4 is junk: nothing of it in the reference
    store = cl.EmbeddingStore(8, metric="l2")
    store.add(x)
    reference = np.random.default_rng(0).choice(np.flatnonzero(y != 4), 400, replace=False)
    kept = []
    for seed in range(4):  # the 40-row mode holds ~3 reference rows: one seed's leaves may lose a part of it
        plain = cl.curate(store, 600, seed=seed)
        clean = cl.curate(store, 600, reference=reference, seed=seed)
        assert (y[plain] == 4).sum() >= 100  # balancing over-samples a junk mode ...
        assert (y[clean] == 4).sum() == 0  # ... the reference test removes it
        kept.append([(y[clean] == 3).sum(), (y[clean] == 2).sum()])
    assert (np.median(kept, 0) >= [32, 80]).all() and (np.min(kept, 0) >= [20, 80]).all(), kept  # rare modes (near) whole


def test_within_picks_each_leafs_rows_by_distance_to_its_centroid_with_the_same_balance():
    x, y = blobs([4000, 800])
    store = cl.EmbeddingStore(8, metric="l2")
    store.add(x)
    centre = np.stack([x[y == b].mean(0) for b in range(2)])
    dist = np.linalg.norm(x - centre[y], axis=1)
    picked = {w: store.rows_of(cl.curate(store, 480, within=w)) for w in ("far", "random", "near")}
    assert [np.bincount(y[r]).tolist() for r in picked.values()] == [np.bincount(y[picked["random"]]).tolist()] * 3
    means = [dist[r].mean() for r in picked.values()]
    assert means[0] > 1.1 * means[1] > 1.2 * means[2], means  # the outer rows of every leaf, then the core
    np.testing.assert_array_equal(store.rows_of(cl.curate(store, 480, within="far")), picked["far"])


def test_unique_takes_rows_without_a_near_twin_first_with_the_same_balance_over_modes():
    x, y = blobs([4000, 800])
    rng = np.random.default_rng(5)
    twin = rng.choice(4000, 1000, replace=False)  # a quarter of the head mode's rows get a near twin
    store = cl.EmbeddingStore(8, metric="l2")
    store.add(np.concatenate([x, x[twin] + 1e-3 * rng.normal(size=(1000, 8)).astype(np.float32)]))
    labels = np.r_[y, np.zeros(1000, np.int64)]
    has_twin = np.zeros(len(labels), bool)
    has_twin[twin], has_twin[len(x):] = True, True
    picked = {w: store.rows_of(cl.curate(store, 480, within=w)) for w in ("far", "random", "unique")}
    counts = {w: np.bincount(labels[r], minlength=2).tolist() for w, r in picked.items()}
    assert counts["unique"] == counts["far"] == counts["random"], counts  # the modes' shares are the top level's
    twins = {w: int(has_twin[r].sum()) for w, r in picked.items()}
    # random: ~1/3 of the head's 240 (2,000 of its 5,000 rows have a twin); the twins "unique" takes are
    # those of leaves whose other rows are fewer than their quota (the sparse leaves' weights give them
    # more rows than they hold without twins) or among the leaf's outliers: 19 against far's 58 here
    assert twins["random"] >= 50 and 2.5 * twins["unique"] <= min(twins["random"], twins["far"]), twins
    np.testing.assert_array_equal(store.rows_of(cl.curate(store, 480, within="unique")), picked["unique"])
    # a pool without the copies: their originals stand alone in it, so "unique" takes them as any other row
    alone = store.rows_of(cl.curate(store, 480, within="unique", ids=store.ids[:len(x)]))
    assert has_twin[alone].sum() >= 35, int(has_twin[alone].sum())  # ~60 expected (a quarter of the head's 240)


def test_unique_gives_a_mode_s_leaves_shares_by_how_much_they_span():
    rng = np.random.default_rng(0)
    spread = rng.uniform(-1, 1, size=(1000, 2)).astype(np.float32)  # one mode: a sparse square beside a dense blob
    dense = (0.2 * rng.normal(size=(2000, 2)) + [3.0, 0.0]).astype(np.float32)
    store = cl.EmbeddingStore(2, metric="l2")
    store.add(np.concatenate([spread, dense]))
    got = {w: int((store.rows_of(cl.curate(store, 400, within=w, levels=(32, 1))) >= 1000).sum()) for w in ("far", "unique")}
    # equal shares per leaf give the blob's leaves their count's share (65 rows); weighted by the
    # mean nearest-neighbour distance ** 4 they span a fraction of the square's leaves
    assert got["far"] >= 40 and 10 * got["unique"] <= got["far"], got


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 60), st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**31), st.booleans())
def test_leaf_nearest_is_the_brute_force_nearest_neighbour_where_every_leaf_is_probed(n, dim, k, seed, twins):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    if twins:
        x[n // 2:] = x[:n - n // 2]  # exact copies: distance 0
    ids = rng.permutation(10 * n)[:n]
    leaf = rng.integers(0, k, n)
    cent = rng.normal(size=(k, dim)).astype(np.float32)
    got = LN.probe_nearest(x, ids, leaf, cent, LN.pool_candidates(x, ids, leaf, k, seed % 7), k)
    d = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(got, d.min(1), rtol=1e-5, atol=1e-6)


def test_leaf_nearest_in_a_leaf_larger_than_its_candidates_does_not_depend_on_the_rows_order():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 3)).astype(np.float32)  # one leaf of 1,500 rows offers 384 candidates
    ids, leaf, cent = np.arange(1500), np.zeros(1500, np.int64), np.zeros((1, 3), np.float32)
    got = LN.leaf_nearest(x, ids, leaf, cent, seed=3)
    perm = rng.permutation(1500)
    again = LN.leaf_nearest(x[perm], ids[perm], leaf, cent, seed=3)
    np.testing.assert_array_equal(again, got[perm])
    cand = LN.leaf_candidates(ids, leaf, 1, 3)
    assert len(cand) == LN.PROBE_ROWS
    d = np.sqrt(((x[:, None, :] - x[None, cand, :]) ** 2).sum(-1))
    d[cand, np.arange(len(cand))] = np.inf  # a candidate is not its own neighbour
    np.testing.assert_allclose(got, d.min(1), rtol=1e-5)
    true = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)) + np.diag(np.full(1500, np.inf))
    assert (got >= true.min(1) - 1e-6).all() and np.median(got / true.min(1)) < 3  # coarser, never nearer


def test_a_row_alone_in_its_probed_leaves_is_compared_with_every_candidate(monkeypatch):
    monkeypatch.setattr(LN, "CANDIDATE_BLOCK", 2)  # the fallback search in blocks of two candidates
    x = np.array([[0.], [1.], [10.], [4.], [30.]], np.float32)
    leaf, cent = np.array([0, 0, 1, 2, 3]), np.array([[.5], [10.], [4.], [30.]], np.float32)
    got = LN.probe_nearest(x, np.arange(5), leaf, cent, LN.pool_candidates(x, np.arange(5), leaf, 4, 0), 1)
    assert got.tolist() == [1.0, 1.0, 6.0, 3.0, 20.0]


def test_leaf_nearest_checks_its_inputs():
    x = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"leaf: expected 3 leaves \(one per row of x\), got 2"):
        LN.leaf_nearest(x, np.arange(3), np.zeros(2, np.int64), np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"ids: expected 3 ids \(one per row of x\), got 4"):
        LN.leaf_nearest(x, np.arange(4), np.zeros(3, np.int64), np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"leaf: expected leaves in \[0, 1\), got 0 to 5"):
        LN.leaf_nearest(x, np.arange(3), np.array([0, 5, 0]), np.zeros((1, 2), np.float32))
    assert LN.leaf_nearest(x[:1], np.arange(1), np.zeros(1, np.int64), np.zeros((1, 2), np.float32)).tolist() == [0.0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from([0.0, 0.1, 1.0, 2.5, 7.0])), min_size=1, max_size=12),
       st.integers(0, 300))
def test_weighted_fill_is_proportional_within_one_row_and_never_overfills(groups, target):
    sizes = np.array([g[0] for g in groups], np.int64)
    w = np.array([g[1] for g in groups])
    got = CU.weighted_fill(sizes, w, target)
    assert got.sum() == min(target, sizes.sum()) and (got >= 0).all() and (got <= sizes).all()
    pos = w > 0
    room = got < sizes
    if (pos & room).any():  # a weighted group with room: no weighted group is more than a row ahead of its share
        level = ((got[pos & room] + 1) / w[pos & room]).min()
        assert ((got[pos] - 1) / w[pos] < level + 1e-9).all(), (got, sizes, w)
        assert (got[~pos] == 0).all()  # weight 0: rows only once every weighted group is full
    if (~pos & (sizes > 0)).any() and got[pos].sum() < sizes[pos].sum():
        assert (got[~pos] == 0).all()


def test_unique_weights_and_priority_check_their_inputs():
    h = CU.Hierarchy([np.array([0, 1, 1])], [np.zeros((2, 1))])
    with pytest.raises(ValueError, match=r"weights: expected 2 finite values >= 0, got shape \(3,\)"):
        CU.leaf_quotas(h, np.array([1, 2]), 2, weights=np.ones(3))
    with pytest.raises(ValueError, match="weights: expected 2 finite values >= 0"):
        CU.leaf_quotas(h, np.array([1, 2]), 2, weights=np.array([1.0, -1.0]))
    x, leaf, cent = np.zeros((3, 1), np.float32), np.array([0, 1, 1]), np.zeros((2, 1), np.float32)
    with pytest.raises(ValueError, match="nearest: expected each row's nearest-neighbour distance"):
        CU.pick_priority(np.arange(3), x, leaf, cent, "unique", 0)
    with pytest.raises(ValueError, match=r"nearest: expected 3 finite distances >= 0, got shape \(2,\)"):
        CU.pick_priority(np.arange(3), x, leaf, cent, "unique", 0, nearest=np.ones(2))


def test_far_and_unique_take_a_leafs_outliers_last():
    x, _ = blobs([4000, 800], dim=64)
    rng = np.random.default_rng(3)
    junk = x[rng.choice(len(x), 96, replace=False)] + 2.0 * rng.normal(size=(96, 64)).astype(np.float32)
    store = cl.EmbeddingStore(64, metric="l2")
    store.add(np.concatenate([x, junk]))  # 2% noisy rows, each the farthest row of the leaf it falls in
    taken = {w: int((store.rows_of(cl.curate(store, 480, within=w)) >= len(x)).sum()) for w in ("far", "random", "unique")}
    # about random's rate (1.05-1.4x over four draws of the junk); farthest-first with no outlier
    # test took 3.3-5.5x it (62 here against random's 18). "unique" (junk stands alone, so without
    # the test it would come first): 14-22 against random's 11-18 over four draws
    assert taken["far"] <= 1.5 * taken["random"] and taken["unique"] <= 1.5 * taken["random"], taken


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 300), st.integers(1, 12), st.integers(2, 4), st.integers(0, 99))
def test_leaf_outliers_of_shards_equal_one_process(n, k, world, seed):
    import threading

    rng = np.random.default_rng(seed)
    d = (rng.gamma(2.0, size=n) * rng.choice([1, 1, 1, 8], size=n)).astype(np.float32)
    leaf = rng.integers(0, k, n)
    one = CU.leaf_outliers(d, leaf, k)
    part = rng.integers(0, world, n)  # any split of the rows over the shards
    box, barrier, got = {}, threading.Barrier(world), [None] * world

    def reduce(a, op, rank):
        box[rank] = a
        barrier.wait()
        out = np.max(np.stack([box[r] for r in range(world)]), 0) if op == "max" else sum(box[r] for r in range(world))
        barrier.wait()
        return out

    def run(rank):
        mine = part == rank
        got[rank] = CU.leaf_outliers(d[mine], leaf[mine], k, lambda a, op: reduce(a, op, rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for r in range(world):
        np.testing.assert_array_equal(got[r], one[part == r])


def test_stray_rows_are_left_out_unless_asked():
    x, _ = blobs([2000, 500])
    x = np.concatenate([x, np.full((1, 8), 500.0, np.float32)])  # one far stray row
    store = cl.EmbeddingStore(8, metric="l2")
    store.add(x)
    assert 2500 not in cl.curate(store, 2000).tolist()
    assert 2500 in cl.curate(store, 2501, drop_stray=False).tolist()


def test_dedup_inside_a_pool_keeps_one_id_of_each_group_even_when_its_smallest_is_outside():
    # 300 groups of 3 near-identical rows (ids g, g + 300, g + 600); the pool leaves out every group's smallest id
    # (before, de-duplication kept only each group's smallest id of the whole store, so this pool lost every row)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8))
    store = cl.EmbeddingStore(8, metric="cosine")
    store.add(np.concatenate([x, x + 1e-4 * rng.normal(size=x.shape), x + 1e-4 * rng.normal(size=x.shape)]).astype(np.float32))
    pool = np.arange(300, 900)
    kept = CU.deduplicate(store, 0.999, ids=pool)
    np.testing.assert_array_equal(kept, np.arange(300, 600))
    np.testing.assert_array_equal(CU.deduplicate(store, 0.999), np.arange(300))
    got = cl.curate(store, 150, ids=pool, dedup_threshold=0.999)
    assert len(got) == 150 and set(got.tolist()) <= set(range(300, 600))
    with pytest.raises(KeyError, match="ids"):
        CU.deduplicate(store, 0.999, ids=[5, 10_000])


def test_bad_inputs_name_the_argument_and_change_nothing():
    x, _ = blobs([300, 30])
    store = cl.EmbeddingStore(8, metric="l2")
    store.add(x)
    before = store.vectors().copy()
    with pytest.raises(ValueError, match="reference: expected ids of the pool"):
        cl.curate(store, 50, reference=[0, 1, 10_000])
    with pytest.raises(ValueError, match="target_size"):
        cl.curate(store, 10_000)
    with pytest.raises(ValueError, match="n_leaves"):
        CU.auto_hierarchy(x, "l2", n_leaves=10_000)
    with pytest.raises(TypeError, match="store"):
        cl.curate(x, 10)
    with pytest.raises(ValueError, match=r"within: expected one of \['random', 'far', 'near', 'unique'\], got 'outer'"):
        cl.curate(store, 50, within="outer")
    np.testing.assert_array_equal(store.vectors(), before)


def test_bench_section_reports_balance_beside_random(monkeypatch):
    monkeypatch.delenv("CURRICULUM_ANCHOR_CURATION", raising=False)
    monkeypatch.setattr("curriculum.cli.bench_curation.curation_sets",
                        lambda quick, data: {"toy": (*mode_pool(8, 8, 4000, seed=1), "l2", "modes")})
    rows = curation_section(quick=True)
    by = {r["method"]: r for r in rows}
    assert set(by) == {"random (median of 30)", "curate()", "anchor (ssl-data-curation)"}
    assert by["curate()"]["max_min"] < by["random (median of 30)"]["max_min"]
    assert "CURRICULUM_ANCHOR_CURATION" in by["anchor (ssl-data-curation)"]["note"]


def test_bench_section_runs_far_beside_the_default_on_labelled_sets(monkeypatch):
    monkeypatch.delenv("CURRICULUM_ANCHOR_CURATION", raising=False)
    monkeypatch.setattr("curriculum.cli.bench_curation.curation_sets",
                        lambda quick, data: {"toy": (*mode_pool(8, 8, 4000, seed=1), "l2", "classes")})
    by = {r["method"]: r for r in curation_section(quick=True)}
    assert set(by) == {"random (median of 30)", "curate()", 'curate(within="far")', "anchor (ssl-data-curation)"}
    for method in ("curate()", 'curate(within="far")'):
        assert by[method]["seeds"] == 3 and by[method]["rare_x_random"] > 1.5, by[method]
