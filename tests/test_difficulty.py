"""Difficulty scores: exactness against brute force, recorder statistics, fusion, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import curriculum as cl
from curriculum.data import load_fashion_mnist, pixel_pca, symmetric_noise
from curriculum.difficulty import (Difficulty, Recorder, class_margin, combine, knn_distance, label_disagreement,
                                   label_entropy, near_duplicates, prototype_distance)


def dist_matrix(x, metric):
    x = x.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return 1 - x @ x.T
    if metric == "ip":
        return -(x @ x.T)
    return np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0))


def neighbours(D, k):
    D = D.copy()
    np.fill_diagonal(D, np.inf)
    return np.argsort(D, axis=1, kind="stable")[:, :k], D


@pytest.fixture(params=["l2", "cosine"])
def small(request):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    y = rng.integers(0, 3, 120)
    s = cl.EmbeddingStore(6, metric=request.param, index="flat")
    s.add(x, labels=y)
    return s, x, y, request.param


def test_knn_distance_brute(small):
    s, x, _, metric = small
    nb, D = neighbours(dist_matrix(x, metric), 7)
    ref = np.take_along_axis(D, nb, 1).mean(1)
    np.testing.assert_allclose(knn_distance(s, 7).scores, ref, rtol=1e-4, atol=1e-5)


def test_label_scores_brute(small):
    s, x, y, metric = small
    nb, _ = neighbours(dist_matrix(x, metric), 9)
    nl = y[nb]
    np.testing.assert_allclose(label_disagreement(s, 9).scores, 1 - (nl == y[:, None]).mean(1))
    ent = []
    for row in nl:
        p = np.bincount(row, minlength=3) / 9
        ent.append(-(p[p > 0] * np.log(p[p > 0])).sum())
    np.testing.assert_allclose(label_entropy(s, 9).scores, ent, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 50])
def test_class_margin_exact_for_any_k(small, k):
    s, x, y, metric = small
    _, D = neighbours(dist_matrix(x, metric), 1)
    same = y[:, None] == y[None]
    ref = np.where(same, D, np.inf).min(1) - np.where(~same, D, np.inf).min(1)
    np.testing.assert_allclose(class_margin(s, k).scores, ref, rtol=1e-4, atol=1e-5)


def test_prototype_distance_brute(small):
    s, x, _, _ = small
    km = s.kmeans(4, seed=3, spherical=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = km.centroids / np.linalg.norm(km.centroids, axis=1, keepdims=True)
    ref = 1 - (xn @ c.T).max(1)
    np.testing.assert_allclose(prototype_distance(s, 4, seed=3).scores, ref, atol=1e-5)


def test_near_duplicates_exact_and_within_clusters():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 16)).astype(np.float32)
    dups = base[[3, 3, 50, 120]] + rng.normal(scale=0.01, size=(4, 16)).astype(np.float32)
    x = np.vstack([base, dups])  # ids 200, 201 copy 3; 202 copies 50; 203 copies 120
    s = cl.EmbeddingStore(16, metric="cosine")
    s.add(x)
    groups = near_duplicates(s, 0.99, n_clusters=1)
    assert [g.tolist() for g in groups] == [[3, 200, 201], [50, 202], [120, 203]]
    # brute: cosine > threshold pairs
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = xn @ xn.T
    iu = np.triu_indices(len(x), 1)
    pairs = {(int(a), int(b)) for a, b in zip(*iu) if sim[a, b] > 0.99}
    assert pairs == {(3, 200), (3, 201), (200, 201), (50, 202), (120, 203)}
    # clustered (SemDeDup) run finds the same tight groups
    assert [g.tolist() for g in near_duplicates(s, 0.99, n_clusters=4)] == [g.tolist() for g in groups]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 60), block=st.integers(1, 9),
       threshold=st.sampled_from([0.5, 0.8, 0.95, 0.99]))
def test_near_duplicates_are_the_components_of_all_pairs_above_the_threshold(seed, n, block, threshold):
    # chains of near copies, so components join rows that are not above the threshold themselves
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    for i in range(1, n):
        if rng.random() < 0.6:
            x[i] = x[rng.integers(i)] + rng.normal(scale=0.2, size=6).astype(np.float32)
    s = cl.EmbeddingStore(6, metric="cosine")
    s.add(x, ids=np.arange(n) * 3 + 1)
    xn = s.vectors()
    above = np.triu(xn @ xn.T > threshold, 1)  # the same float32 products and comparison
    from scipy.sparse.csgraph import connected_components
    _, comp = connected_components(above, directed=False)
    expected = sorted([sorted((np.flatnonzero(comp == c) * 3 + 1).tolist()) for c in np.unique(comp)
                       if (comp == c).sum() > 1])
    got = [g.tolist() for g in near_duplicates(s, threshold, n_clusters=1, block=block)]
    assert got == expected


def test_difficulty_value_type(tmp_path):
    d = Difficulty([0.5, 0.1, 0.5, 0.9], ids=[10, 11, 12, 13], name="t")
    np.testing.assert_allclose(d.rank(), [0.5, 0.0, 0.5, 1.0])  # ties averaged
    assert d.easiest(0.5).tolist() == [11, 10]
    assert d.hardest(0.25).tolist() == [13]
    assert d.for_ids([13, 10]).tolist() == [0.9, 0.5]
    p = tmp_path / "d.npz"
    d.save(p)
    e = Difficulty.load(p)
    assert e.name == "t" and e.ids.tolist() == [10, 11, 12, 13]
    np.testing.assert_array_equal(e.scores, d.scores)
    with pytest.raises(ValueError, match="finite"):
        Difficulty([0.1, np.nan])
    with pytest.raises(ValueError, match="duplicates"):
        Difficulty([0.1, 0.2], ids=[1, 1])
    with pytest.raises(ValueError, match="fraction"):
        d.easiest(1.5)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=50))
def test_property_rank_in_unit_interval_and_monotone(values):
    d = Difficulty(values)
    r = d.rank()
    assert r.min() >= 0 and r.max() <= 1
    v = np.asarray(values)
    i, j = np.meshgrid(np.arange(len(v)), np.arange(len(v)))
    assert ((v[i] < v[j]) <= (r[i] < r[j])).all()


def test_combine_weighted_rank_fusion():
    a = Difficulty([1.0, 2.0, 3.0], ids=[0, 1, 2])
    b = Difficulty([10.0, 30.0, 20.0], ids=[2, 1, 0])  # other id order: id0=20, id1=30, id2=10
    c = combine([a, b], weights=[1, 1])
    # ranks: a -> [0, .5, 1]; b by id -> id0 .5, id1 1, id2 0
    np.testing.assert_allclose(c.scores, [0.25, 0.75, 0.5])
    with pytest.raises(ValueError, match="different ids"):
        combine([a, Difficulty([1.0, 2.0])])
    with pytest.raises(ValueError, match="weights"):
        combine([a, b], weights=[1])


# ---------------------------------------------------------------- Recorder
def test_recorder_hand_made_sequence():
    rec = Recorder(num_samples=3, num_classes=3, labels=[0, 1, 2], ema_decay=0.5)
    seq = [
        torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 0.0]]),  # correct, correct, wrong
        torch.tensor([[0.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0]]),  # wrong, correct, correct
        torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]),  # correct, wrong, wrong
    ]
    for lg in seq:
        rec.update([0, 1, 2], logits=lg)
    assert rec.forgetting.tolist() == [1, 1, 1]
    margins = np.array([[2, 1, -1], [-1, 3, 1], [2, -1, -2]], float)  # z_y - max other
    np.testing.assert_allclose(rec.margin, margins[-1])
    np.testing.assert_allclose(rec.aum, margins.mean(0))
    p = [torch.softmax(lg.double(), 1).numpy() for lg in seq]
    py = np.array([[pp[i, i] for i in range(3)] for pp in p])
    np.testing.assert_allclose(rec.confidence, py.mean(0))
    np.testing.assert_allclose(rec.variability, py.std(0), atol=1e-12)
    np.testing.assert_allclose(rec.correctness, [2 / 3, 2 / 3, 1 / 3])
    onehot = np.eye(3)
    np.testing.assert_allclose(rec.el2n, np.linalg.norm(p[-1] - onehot, axis=1))
    np.testing.assert_allclose(rec.entropy, -(p[-1] * np.log(p[-1])).sum(1))
    ce = [-np.log(pp[np.arange(3), np.arange(3)]) for pp in p]
    ema = ce[0]
    for c in ce[1:]:
        ema = 0.5 * ema + 0.5 * c
    np.testing.assert_allclose(rec.loss_ema, ema)
    np.testing.assert_allclose(rec.loss, ce[-1])


def test_recorder_takes_bf16_logits_like_float32():
    """Mixed-precision loops hand over bf16 logits and losses (numpy has no bf16)."""
    lg = torch.tensor([[2.0, 0.5], [0.25, 1.0], [1.5, -1.0]], dtype=torch.bfloat16)
    a, b = Recorder(3, 2, labels=[0, 1, 1]), Recorder(3, 2, labels=[0, 1, 1])
    a.update([0, 1, 2], logits=lg, loss=torch.tensor([0.5, 1.0, 2.0], dtype=torch.bfloat16))
    b.update([0, 1, 2], logits=lg.float(), loss=torch.tensor([0.5, 1.0, 2.0]))
    np.testing.assert_array_equal(a.margin, b.margin)
    np.testing.assert_array_equal(a.loss_ema, b.loss_ema)


def test_recorder_repeated_indices_apply_in_order():
    a = Recorder(2, 2, labels=[0, 1])
    b = Recorder(2, 2, labels=[0, 1])
    lg = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-1.0, 1.0], [3.0, 0.0]])
    a.update([0, 0, 0, 1], logits=lg, loss=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    for i, j in enumerate([0, 0, 0, 1]):
        b.update([j], logits=lg[i:i + 1], loss=torch.tensor([float(i + 1)]))
    for name in ["loss", "loss_ema", "margin", "aum", "el2n", "forgetting", "confidence", "variability"]:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.forgetting[0] == 1  # correct, correct, wrong: one forgetting event


def test_recorder_unseen_is_masked_not_easy():
    rec = Recorder(5, 2)
    rec.update([1, 2], loss=torch.tensor([0.1, 5.0]))
    d = rec.difficulty("loss")
    assert d.observed.tolist() == [False, True, True, False, False]
    assert np.isfinite(d.scores).all()
    assert d.scores[0] == pytest.approx(2.55)  # median of observed, not 0
    assert np.isnan(rec.loss[0])
    never = Recorder(2, 2, labels=[0, 0])
    never.update([0, 1], logits=torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    f = never.difficulty("forgetting")
    assert f.scores.tolist() == [1.0, 0.0]  # sample 0 never learned: hardest


@pytest.mark.parametrize("kwargs,match", [
    ({"indices": [0, 1], "loss": torch.tensor([1.0])}, "loss: expected shape"),
    ({"indices": [0, 1], "loss": torch.tensor([1.0, float("nan")])}, "NaN"),
    ({"indices": [0, 1], "logits": torch.tensor([[0.0, float("inf")], [0, 0]]), "labels": [0, 1]}, "logits"),
    ({"indices": [0, 9], "loss": torch.tensor([1.0, 1.0])}, r"\[0, 4\)"),
    ({"indices": [0], "loss": torch.tensor(1.0)}, "reduction='none'"),
    ({"indices": [0], "logits": torch.zeros(1, 2)}, "labels"),
    ({"indices": [0]}, "neither"),
])
def test_recorder_bad_input_changes_nothing(kwargs, match):
    rec = Recorder(4, 2)
    rec.update([0, 1], loss=torch.tensor([0.5, 0.7]))
    before = rec.state_dict()
    with pytest.raises((ValueError, IndexError, TypeError), match=match):
        rec.update(**kwargs)
    after = rec.state_dict()
    for k, v in before["tensors"].items():
        assert torch.equal(v, after["tensors"][k]), k
    assert before["step"] == after["step"]


def test_geometry_bad_input():
    s = cl.EmbeddingStore(3, metric="l2")
    s.add(np.random.default_rng(0).normal(size=(10, 3)))
    with pytest.raises(ValueError, match="k: expected at most 9"):
        knn_distance(s, 10)
    with pytest.raises(ValueError, match="needs a label"):
        label_disagreement(s, 3)
    with pytest.raises(TypeError, match="EmbeddingStore"):
        knn_distance(np.zeros((3, 3)), 2)


# ---------------------------------------------------------------- real data
def roc_auc(score, positive):
    from scipy.stats import rankdata
    r = rankdata(score)
    n1, n0 = positive.sum(), (~positive).sum()
    return (r[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def test_label_disagreement_detects_flipped_labels_on_fashion_mnist():
    ds = load_fashion_mnist()
    idx = np.random.default_rng(0).choice(len(ds.labels), 10_000, replace=False)
    z = pixel_pca(ds.images[idx], dim=32)
    noisy, flipped = symmetric_noise(ds.labels[idx], 0.2, num_classes=10, seed=0)
    s = cl.EmbeddingStore(32, metric="cosine")
    s.add(z, labels=noisy)
    auc = roc_auc(label_disagreement(s, k=10).scores, flipped)
    print(f"ROC-AUC label_disagreement for 20% flipped labels: {auc:.3f}")
    assert auc > 0.85
    auc_m = roc_auc(class_margin(s, k=10).scores, flipped)
    print(f"ROC-AUC class_margin: {auc_m:.3f}")
    assert auc_m > 0.75


def test_class_margin_on_a_large_store_uses_the_blocked_engine_and_stays_close():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6000, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + 2 * (x[:, 1] > 0)  # 4 contiguous regions: neighbours mostly same-class
    exact = cl.EmbeddingStore(8, metric="l2", index="flat")
    exact.add(x, labels=y)
    big = cl.EmbeddingStore(8, metric="l2", exact_threshold=1000)  # "large": blocked path
    big.add(x, labels=y)
    a, b = class_margin(exact, 5).scores, class_margin(big, 5).scores
    assert np.mean(np.isclose(a, b, atol=1e-4)) > 0.95  # isotropic 8-d: the hard case for blocking
    assert np.corrcoef(a, b)[0, 1] > 0.98


def test_scores_saved_with_the_store_round_trip(tmp_path):
    from curriculum.difficulty import load_with_store, save_with_store

    rng = np.random.default_rng(0)
    s = cl.EmbeddingStore(4, metric="l2")
    s.add(rng.normal(size=(50, 4)), labels=rng.integers(0, 2, 50))
    rec = Recorder(50, 2)
    rec.update([1, 2], loss=torch.tensor([0.5, 2.0]))
    scores = {"knn": knn_distance(s, 3), "loss": rec.difficulty("loss")}
    save_with_store(s, tmp_path / "s.cstore", scores)
    s2, got = load_with_store(tmp_path / "s.cstore")
    assert len(s2) == 50 and set(got) == {"knn", "loss"}
    np.testing.assert_array_equal(got["knn"].scores, scores["knn"].scores)
    assert got["loss"].name == "recorder.loss" and got["loss"].observed.sum() == 2
    np.testing.assert_array_equal(cl.EmbeddingStore.load(tmp_path / "s.cstore").vectors(), s.vectors())


def test_label_k_rule_reference_values():
    from curriculum.difficulty import label_k

    def store_with(sizes):
        lab = np.repeat(np.arange(len(sizes)), sizes)
        s = cl.EmbeddingStore(1, metric="l2")
        s.add(np.random.default_rng(0).normal(size=(len(lab), 1)), labels=lab)
        return s

    assert label_k(store_with([400] * 2)) == 10          # 5 per class, at least 10
    assert label_k(store_with([400] * 6)) == 30
    assert label_k(store_with([1000] * 59)) == 50        # at most 50
    assert label_k(store_with([60] * 20)) == 15          # a quarter of the median class
    assert label_k(store_with([8] * 3)) == 5             # never below 5 for small classes ...
    assert label_k(store_with([2, 2])) == 3              # ... nor above N - 1
    s = store_with([300] * 10)
    assert label_disagreement(s).name == "label_disagreement(k=50)"
    np.testing.assert_array_equal(label_entropy(s).scores, label_entropy(s, 50).scores)
