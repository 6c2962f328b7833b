"""Curation of long-tailed pools and selection from streams."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

import curriculum as cl
from curriculum import pacing as P
from curriculum.curation import _water_fill, balanced_select, cluster_groups, curate, deduplicate, hierarchical_kmeans
from curriculum.stream import SlidingWindowStore, StreamSelector


def long_tailed_pool(seed=0):
    """5 head clusters of 4,000 and 60 tail clusters of 40: the head is 100x the tail."""
    rng = np.random.default_rng(seed)
    sizes = [4000] * 5 + [40] * 60
    centers = rng.normal(size=(len(sizes), 16)) * 6
    x = np.concatenate([c + rng.normal(size=(s, 16)) for c, s in zip(centers, sizes)]).astype(np.float32)
    lab = np.repeat(np.arange(len(sizes)), sizes)
    return x, lab


def test_water_fill_allots_min_x_size():
    assert _water_fill(np.array([100, 5, 50]), 60).tolist() == [28, 5, 27] or \
        sorted(_water_fill(np.array([100, 5, 50]), 60).tolist()) == [5, 27, 28]
    a = _water_fill(np.array([100, 5, 50]), 60)
    assert a.sum() == 60 and a[1] == 5 and abs(a[0] - a[2]) <= 1
    assert _water_fill(np.array([3, 3]), 10).tolist() == [3, 3]


def test_curate_balances_a_long_tailed_pool():
    x, lab = long_tailed_pool()
    store = cl.EmbeddingStore(16, metric="l2")
    store.add(x)
    target = len(x) // 10  # 2,240
    ids = curate(store, target, levels=(130, 65), seed=0)
    assert len(ids) == target and len(np.unique(ids)) == target
    per = np.bincount(lab[ids], minlength=65)
    assert per.max() / per.min() <= 2.0, per
    rnd = np.bincount(lab[np.random.default_rng(0).choice(len(x), target, replace=False)], minlength=65)
    assert rnd[:5].sum() / target > 0.85 and per[:5].sum() / target < 0.3  # random keeps the head's dominance


def test_hierarchy_levels_and_validation():
    x, _ = long_tailed_pool(1)
    h = hierarchical_kmeans(x, (60, 10), metric="l2", resample_iters=1)
    assert len(h.assignments[0]) == len(x) and len(h.assignments[1]) == 60
    assert h.leaf_of_top().max() < 10
    sel = balanced_select(h, 500, seed=0)
    assert len(sel) == 500 and len(np.unique(sel)) == 500
    with pytest.raises(ValueError, match="decreasing"):
        hierarchical_kmeans(x, (10, 60))


def test_dedup_removes_planted_duplicates_keeps_distinct():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(500, 32)).astype(np.float32)
    dup_of = rng.choice(500, 50, replace=False)
    dups = base[dup_of] + rng.normal(scale=0.01, size=(50, 32)).astype(np.float32)
    store = cl.EmbeddingStore(32, metric="cosine")
    store.add(np.vstack([base, dups]))
    keep = deduplicate(store, 0.99)  # one cluster: exact
    assert set(range(500)) <= set(keep.tolist())   # every distinct sample kept
    assert not set(range(500, 550)) & set(keep.tolist())  # every planted duplicate removed
    within = deduplicate(store, 0.99, n_clusters=4)  # SemDeDup: pairs split by a cluster boundary survive
    assert set(range(500)) <= set(within.tolist()) and len(set(range(500, 550)) & set(within.tolist())) <= 5
    ids = curate(store, 100, dedup_threshold=0.99, levels=(20, 5))
    assert not set(range(500, 550)) & set(ids.tolist())


def test_cluster_groups_plug_into_the_sampler():
    x, lab = long_tailed_pool()
    store = cl.EmbeddingStore(16, metric="l2")
    store.add(x)
    groups = cluster_groups(store, 65, seed=0)
    s = cl.CurriculumSampler(np.random.default_rng(0).random(len(x)), balance="cluster", groups=groups,
                             batch_size=256)
    drawn = s.epoch_indices(0)
    head_share = np.isin(lab[drawn], range(5)).mean()
    assert head_share < 0.5  # uniform over clusters, not over samples (the head is 93% of the pool)


def embed_identity(items):
    return np.stack([np.asarray(i, np.float32) for i in items])


def test_stream_memory_bounded_over_a_million_items():
    rng = np.random.default_rng(0)
    block = rng.normal(size=(10_000, 4)).astype(np.float32)

    def source():
        for r in range(100):  # 1M items
            yield from block + r

    sel = StreamSelector(source, embed=embed_identity, window=1000, keep=0.05, store_size=5000)
    n = 0
    for _ in sel:
        n += 1
    assert sel.items_seen == 1_000_000 and n == sel.items_emitted == 50_000
    assert len(sel.store) == 5000 and sel.store.buf.shape == (5000, 4)  # bounded store
    assert sel.max_buffer == 1000                                         # bounded buffer


def test_stream_emits_each_item_once_from_the_stream_deterministically():
    items = list(range(5000))
    emb = lambda xs: np.array([[np.sin(v), np.cos(v * 0.37)] for v in xs], np.float32)  # noqa: E731
    a = list(StreamSelector(items, emb, window=250, keep=0.2, select="sample", seed=3))
    b = list(StreamSelector(items, emb, window=250, keep=0.2, select="sample", seed=3))
    c = list(StreamSelector(items, emb, window=250, keep=0.2, select="sample", seed=4))
    assert a == b and a != c
    assert len(a) == len(set(a)) == 1000 and set(a) <= set(items)


def test_novelty_skips_repeats_and_pacing_moves_selectivity():
    rng = np.random.default_rng(1)
    novel = rng.normal(size=(200, 8)).astype(np.float32) * 5
    stream = []
    for i in range(200):  # each novel item followed by 4 near-repeats of an old one
        stream.append(("new", novel[i]))
        for _ in range(4):
            stream.append(("old", novel[0] + rng.normal(size=8).astype(np.float32) * 0.01))
    sel = StreamSelector(stream, embed=lambda xs: np.stack([v for _, v in xs]), window=100, keep=0.2)
    out = list(sel)
    assert np.mean([t == "new" for t, _ in out]) > 0.9
    paced = StreamSelector(list(range(10_000)), embed=lambda xs: np.array(xs, np.float32)[:, None], window=100,
                           pacing=P.Linear(0.0001, 99), keep_range=(0.1, 0.5))
    assert paced.keep_share(0) == pytest.approx(0.1, abs=1e-3) and paced.keep_share(99) == pytest.approx(0.5)
    assert len(list(paced)) == pytest.approx(sum(round(paced.keep_share(w) * 100) for w in range(100)), abs=1)


def test_stream_shards_across_workers():
    sel = StreamSelector(list(range(4000)), embed=lambda xs: np.array(xs, np.float32)[:, None] % 13, window=100,
                         keep=0.5)
    got = [int(v) for v in DataLoader(sel, batch_size=None, num_workers=2)]
    assert len(got) == len(set(got)) == 2000
    ranks = [set(StreamSelector(list(range(400)), embed=lambda xs: np.array(xs, np.float32)[:, None], window=50,
                                keep=1.0, rank=r, world_size=2)) for r in range(2)]
    assert ranks[0].isdisjoint(ranks[1]) and ranks[0] | ranks[1] == set(range(400))


def test_sliding_window_store_ring():
    s = SlidingWindowStore(3, 1)
    s.add(np.array([[0.0], [10.0]]))
    s.add(np.array([[20.0], [30.0]]))
    assert len(s) == 3 and sorted(s.buf[:, 0].tolist()) == [10.0, 20.0, 30.0]
    assert s.nearest_distance(np.array([[1.0]]))[0] == pytest.approx(9.0)


def test_stream_bad_arguments():
    with pytest.raises(ValueError, match="scorer"):
        StreamSelector([1], embed=embed_identity, scorer="loss")
    with pytest.raises(ValueError, match="keep"):
        StreamSelector([1], embed=embed_identity, keep=0.0)


def _clustered(n, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim)).astype(np.float32) * 2
    return centres[rng.integers(0, 50, n)] + rng.standard_normal((n, dim), np.float32)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_windowed_store_goes_approximate_and_never_underestimates(metric):
    from curriculum.selection.stream import EXACT_UNTIL

    x = _clustered(3 * EXACT_UNTIL)
    s = SlidingWindowStore(2 * EXACT_UNTIL, 32, metric=metric)
    exact = SlidingWindowStore(2 * EXACT_UNTIL, 32, metric=metric, index="exact")
    for part in np.array_split(x, 6):
        s.add(part)
        exact.add(part)
    assert s.approximate and not exact.approximate and len(s) == len(exact) == 2 * EXACT_UNTIL
    rng = np.random.default_rng(1)
    stored = x[-len(s):][rng.choice(len(s), 300, replace=False)]
    q = np.concatenate([stored + 0.01 * rng.standard_normal(stored.shape, np.float32), _clustered(300, seed=2)])
    got, truth = s.nearest_distance(q), exact.nearest_distance(q)
    assert (got >= truth - 1e-4).all()  # every distance is re-checked exactly: never below the truth
    assert np.isclose(got[:300], truth[:300], rtol=1e-3, atol=1e-5).mean() >= 0.95  # near-repeats found
    assert np.median(got[300:] / truth[300:]) < 1.15


def test_windowed_store_forgets_evicted_embeddings():
    from curriculum.selection.stream import EXACT_UNTIL

    old, new = _clustered(EXACT_UNTIL, seed=3) + 50, _clustered(2 * EXACT_UNTIL, seed=4)
    s = SlidingWindowStore(2 * EXACT_UNTIL, 32, index="ivf")
    s.add(old)
    assert s.nearest_distance(old[:50]).max() < 1e-3  # found while stored
    for part in np.array_split(new, 8):
        s.add(part)
    assert len(s) == 2 * EXACT_UNTIL and s.nearest_distance(old[:50]).min() > 1.0  # gone once evicted


def test_selector_with_approximate_memory_matches_exact_choice():
    x = _clustered(12_000, dim=16, seed=5)
    rng = np.random.default_rng(6)
    src = np.repeat(rng.integers(0, len(x), 6000), 3)[:12_000]
    emb = x[src] + 0.01 * rng.standard_normal((12_000, 16), np.float32)
    runs = {}
    for index in ("exact", "ivf"):
        sel = StreamSelector(range(12_000), embed=lambda idx: emb[np.asarray(idx)], window=500, keep=0.3, index=index)
        sel.prime(x[:9000])
        runs[index] = np.fromiter(sel, np.int64)
    assert len(runs["ivf"]) == len(runs["exact"])
    distinct = {k: len(np.unique(src[v])) for k, v in runs.items()}
    assert distinct["ivf"] >= 0.98 * distinct["exact"]
    assert len(np.intersect1d(runs["ivf"], runs["exact"])) >= 0.9 * len(runs["exact"])


def test_prime_and_index_arguments_are_checked():
    with pytest.raises(ValueError, match="index"):
        StreamSelector([1], embed=embed_identity, index="hnsw")
    sel = StreamSelector([1], embed=embed_identity)
    with pytest.raises(ValueError, match="embeddings"):
        sel.prime(np.zeros(3))
    assert sel.store is None  # nothing half-made


def test_quota_lifts_a_rare_cluster_once_fitted():
    rng = np.random.default_rng(7)
    n = 20_000
    rare = rng.random(n) < 0.03
    emb = (np.where(rare[:, None], 40.0, 0.0) + rng.standard_normal((n, 8))).astype(np.float32)
    plain = StreamSelector(range(n), embed=lambda idx: emb[np.asarray(idx)], window=1000, keep=0.1)
    quota = StreamSelector(range(n), embed=lambda idx: emb[np.asarray(idx)], window=1000, keep=0.1,
                           quota_clusters=2)
    got_plain, got_quota = np.fromiter(plain, np.int64), np.fromiter(quota, np.int64)
    assert quota.quota_centroids is not None and len(got_quota) == len(got_plain)
    late = got_quota[got_quota >= 5000]  # after the fit on the first 4,096 candidates
    assert rare[late].mean() > 4 * rare.mean()  # the rare cluster's part of the shortlist is kept whole
    assert rare[late].mean() > 1.1 * rare[got_plain[got_plain >= 5000]].mean()  # novelty alone: fewer


def test_mix_novelty_combines_a_loss_with_novelty():
    rng = np.random.default_rng(8)
    base = rng.standard_normal((500, 4)).astype(np.float32)
    emb = np.repeat(base, 4, axis=0) + 1e-3 * rng.standard_normal((2000, 4)).astype(np.float32)
    loss = np.repeat(rng.random(500), 4)  # copies share their loss: a loss alone keeps whole bursts

    def run(w):
        sel = StreamSelector(range(2000), embed=lambda idx: emb[np.asarray(idx)], window=400, keep=0.25,
                             scorer=lambda items, e: loss[np.asarray(items)], mix_novelty=w)
        return np.fromiter(sel, np.int64)

    alone, mixed = run(0.0), run(0.5)
    assert len(np.unique(alone // 4)) < len(np.unique(mixed // 4))  # novelty breaks up the bursts
    with pytest.raises(ValueError, match="mix_novelty"):
        StreamSelector([1], embed=embed_identity, mix_novelty=2.0)
    with pytest.raises(ValueError, match="quota_clusters"):
        StreamSelector([1], embed=embed_identity, quota_clusters=1)


def _pairs_stream(bursts: int, copies: int, seed: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((bursts, 4)).astype(np.float32)
    emb = np.repeat(base, copies, axis=0) + 1e-3 * rng.standard_normal((bursts * copies, 4)).astype(np.float32)
    return emb, np.repeat(rng.random(bursts), copies)


def test_mixed_score_keeps_the_hard_items_without_their_repeats():
    emb, loss = _pairs_stream(1000, 2)  # 200 bursts of 2 per window, 100 kept

    def run(w):
        sel = StreamSelector(range(2000), embed=lambda idx: emb[np.asarray(idx)], window=400, keep=0.25,
                             scorer=lambda items, e: loss[np.asarray(items)], mix_novelty=w)
        return np.fromiter(sel, np.int64)

    novelty = np.fromiter(StreamSelector(range(2000), embed=lambda idx: emb[np.asarray(idx)], window=400,
                                         keep=0.25), np.int64)
    alone, mixed = run(0.0), run(0.5)
    assert len(np.unique(alone // 2)) == len(alone) // 2       # the loss alone keeps both copies of a burst
    assert len(np.unique(mixed // 2)) == len(mixed) == 500     # mixed: one copy of each, never both ...
    assert loss[mixed].mean() > loss[novelty].mean() + 0.15     # ... and the hard ones first
    np.testing.assert_array_equal(run(1.0), novelty)           # w = 1: novelty alone


def test_quota_never_trades_a_new_item_for_a_repeat():
    emb, _ = _pairs_stream(2500, 4)  # 100 bursts of 4 per window of 400, 100 kept: each burst once
    sel = StreamSelector(range(10_000), embed=lambda idx: emb[np.asarray(idx)], window=400, keep=0.25,
                         quota_clusters=4)
    got = np.fromiter(sel, np.int64)
    assert sel.quota_centroids is not None
    assert len(np.unique(got // 4)) == len(got) == 2500


@pytest.mark.parametrize("capacity,rows", [(10, 3), (10, 30), (2000, 1500)])
def test_forced_ivf_on_small_windows_matches_exact(capacity, rows):
    x = np.random.default_rng(0).normal(size=(rows, 4)).astype(np.float32)
    s, e = SlidingWindowStore(capacity, 4, index="ivf"), SlidingWindowStore(capacity, 4, index="exact")
    s.add(x)
    e.add(x)
    assert s.approximate == (min(rows, capacity) >= min(1024, capacity))
    q = x[-50:] + 1e-3
    got, truth = s.nearest_distance(q), e.nearest_distance(q)
    assert (got >= truth - 1e-5).all()
    assert np.isclose(got, truth, rtol=1e-4, atol=1e-5).mean() >= (0.8 if s.approximate and rows >= 1024 else 1.0)


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_device_memory_equals_the_exact_memory(metric):
    """The torch memory (here on the CPU; the same code runs on a GPU) returns the exact store's
    distances, through the ring's wrap-around, from arrays and from tensors."""
    import torch

    from curriculum.selection.stream_device import TorchWindowStore

    x = _clustered(3000, dim=16, seed=7)
    dev, exact = TorchWindowStore(2000, 16, metric, device="cpu"), SlidingWindowStore(2000, 16, metric, index="exact")
    for part in np.array_split(x, 5):
        dev.add(torch.from_numpy(part))
        exact.add(part)
    rng = np.random.default_rng(1)
    q = np.concatenate([x[-500:] + 1e-3 * rng.standard_normal((500, 16), np.float32), _clustered(200, 16, seed=8)])
    assert len(dev) == len(exact) == 2000
    np.testing.assert_allclose(dev.nearest_distance(q), exact.nearest_distance(q), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(dev.nearest_distance(torch.from_numpy(q)), dev.nearest_distance(q))


def test_selector_with_device_memory_matches_the_cpu_memory():
    import torch

    from curriculum.selection.stream_device import TorchWindowStore

    x = _clustered(6000, dim=16, seed=5)
    rng = np.random.default_rng(6)
    emb = x[np.repeat(rng.integers(0, len(x), 2000), 3)[:6000]] + 0.01 * rng.standard_normal((6000, 16), np.float32)
    runs = {}
    for device in (None, "cpu"):
        sel = StreamSelector(range(6000), embed=lambda idx: torch.from_numpy(emb[np.asarray(idx)]), window=500,
                             keep=0.3, index="exact", device=device, store_size=2000)
        sel.prime(x[:1000])
        runs[device] = np.fromiter(sel, np.int64)
        assert len(sel.store) == 2000  # 2,800 went in: the ring wrapped
        assert isinstance(sel.store, TorchWindowStore) == (device is not None)
    assert np.array_equal(runs[None], runs["cpu"])
    with pytest.raises(ValueError, match="device"):
        StreamSelector([1], embed=embed_identity, device="gpu0")
    with pytest.raises(ValueError, match="cosine"):
        TorchWindowStore(4, 2, "cosine", device="cpu").add(np.zeros((1, 2)))
