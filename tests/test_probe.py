"""Out-of-fold linear probes: they find flipped labels, never see a row's label when predicting
it, are deterministic, and give cleanlab-shaped outputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import curriculum as cl
from curriculum.difficulty import Probe, label_probe


def noisy_store(n: int = 3000, classes: int = 5, dim: int = 16, noise: float = 0.2, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = (rng.normal(size=(classes, dim))[y] * 1.5 + rng.normal(size=(n, dim))).astype(np.float32)
    flipped = rng.random(n) < noise
    given = np.where(flipped, (y + rng.integers(1, classes, n)) % classes, y)
    store = cl.EmbeddingStore(dim, metric="l2")
    store.add(x, ids=np.arange(n) + 1000, labels=given * 10)  # ids and label values need not be 0..n / 0..C
    return store, flipped


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    from scipy.stats import rankdata

    r = rankdata(score)
    npos, nneg = positive.sum(), (~positive).sum()
    return float((r[positive].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def test_probe_scores_rank_flipped_labels_first():
    store, flipped = noisy_store()
    probe = label_probe(store, progress=False)
    assert probe.probs.shape == (3000, 5) and np.allclose(probe.probs.sum(1), 1.0)
    assert probe.classes.tolist() == [0, 10, 20, 30, 40] and (probe.ids == store.ids).all()
    for kind in ("self_confidence", "margin"):
        s = probe.score(kind)
        assert auc(s.scores, flipped) > 0.95, kind
        assert (s.ids == store.ids).all()
    mask = probe.issue_mask()
    precision, recall = flipped[mask].mean(), mask[flipped].mean()
    assert precision > 0.85 and recall > 0.8, (precision, recall)


def test_out_of_fold_means_a_rows_own_label_never_helps_it():
    # random vectors, random labels: an in-sample probe would memorise; out-of-fold it cannot
    rng = np.random.default_rng(1)
    store = cl.EmbeddingStore(64, metric="l2")
    store.add(rng.normal(size=(400, 64)).astype(np.float32), labels=rng.integers(0, 2, 400))
    probe = label_probe(store, progress=False)
    given = probe.probs[np.arange(400), np.searchsorted(probe.classes, probe.labels)]
    assert given.mean() < 0.55  # chance level (in-sample: ~0.9)


def test_deterministic_and_seed_changes_folds():
    store, _ = noisy_store(n=1200)
    a, b = label_probe(store, seed=3, progress=False), label_probe(store, seed=3, progress=False)
    np.testing.assert_array_equal(a.probs, b.probs)
    c = label_probe(store, seed=4, progress=False)
    assert not np.array_equal(a.probs, c.probs)


def test_issue_mask_share_and_ranked_issues():
    p = Probe(np.array([[.9, .1], [.4, .6], [.7, .3], [.45, .55]]), np.array([5, 6, 7, 8]), np.array([0, 0, 1, 0]),
              np.array([0, 1]))
    assert p.issue_mask().tolist() == [False, True, True, True]
    assert p.ranked_issues().tolist() == [7, 6, 8]  # margins 0.4, 0.2, 0.1
    assert p.issue_mask(share=0.5).tolist() == [False, True, True, False]
    assert p.ranked_issues(share=0.25).tolist() == [7]
    assert p.score("margin").scores.round(2).tolist() == [-0.8, 0.2, 0.4, 0.1]


@pytest.mark.parametrize("bad, match", [(dict(folds=1), "folds"), (dict(weight_decay=-1.0), "weight_decay"),
                                        (dict(max_iter=0), "max_iter")])
def test_bad_arguments(bad, match):
    store, _ = noisy_store(n=200)
    with pytest.raises((ValueError, TypeError), match=match):
        label_probe(store, **bad)


def test_store_without_labels_or_with_one_class_is_a_clear_error():
    store = cl.EmbeddingStore(4, metric="l2")
    store.add(np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="label on every row"):
        label_probe(store)
    one = cl.EmbeddingStore(4, metric="l2")
    one.add(np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32), labels=np.zeros(50, int))
    with pytest.raises(ValueError, match="at least 2 classes"):
        label_probe(one)
    with pytest.raises(TypeError, match="store"):
        label_probe(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="kind"):
        Probe(np.ones((1, 2)) / 2, np.array([0]), np.array([0]), np.array([0, 1])).score("entropy")


def test_confident_joint_mask_is_more_precise_than_argmax_with_many_classes():
    store, flipped = noisy_store(n=6000, classes=30, dim=24, seed=2)
    probe = label_probe(store, progress=False)
    mask = probe.issue_mask()
    argmax_neq_given = probe.probs.argmax(1) != np.searchsorted(probe.classes, probe.labels)
    assert flipped[mask].mean() > flipped[argmax_neq_given].mean()
    assert mask[flipped].mean() > 0.7


def test_label_noise_default_fuses_probe_and_neighbours():
    from curriculum.difficulty import combine, label_disagreement, label_k, label_noise

    store, flipped = noisy_store()
    probe = label_probe(store, progress=False)
    d = label_noise(store, probe)
    k = label_k(store)
    assert d.name == f"label_noise(k={k})" and (d.ids == store.ids).all()
    parts = [probe.score("self_confidence"), probe.score("margin"), label_disagreement(store, k)]
    np.testing.assert_array_equal(d.scores, combine(parts).scores)
    assert label_noise(store, probe, k=10).name == "label_noise(k=10)"
    assert auc(d.scores, flipped) > 0.95
    with pytest.raises(TypeError, match="probe"):
        label_noise(store, probe="cleanlab")


def test_each_fold_is_the_minimiser_of_its_penalised_loss():
    # the probe's own L-BFGS against scipy's at a tight tolerance, on the same objective: mean
    # cross-entropy over the fold's training rows + weight_decay * |W|^2 on features standardised
    # by all rows' mean and deviation
    from scipy.optimize import minimize
    from scipy.special import log_softmax, softmax

    store, _ = noisy_store(n=900)
    probe = label_probe(store, folds=3, weight_decay=1e-2, max_iter=200, progress=False)
    x = store.vectors().astype(np.float64)
    x = (x - x.mean(0)) / x.std(0)
    y = np.searchsorted(probe.classes, probe.labels)
    c, d = len(probe.classes), x.shape[1]
    assert sorted(np.unique(probe.folds).tolist()) == [0, 1, 2]
    for f in range(3):
        tr = probe.folds != f

        def fun(w):
            wm, b = w[:c * d].reshape(c, d), w[c * d:]
            z = x[tr] @ wm.T + b
            lp = log_softmax(z, axis=1)
            g = (softmax(z, axis=1) - np.eye(c)[y[tr]]) / tr.sum()
            loss = -lp[np.arange(tr.sum()), y[tr]].mean() + 1e-2 * (wm ** 2).sum()
            return loss, np.concatenate([(g.T @ x[tr] + 2e-2 * wm).ravel(), g.sum(0)])
        w = minimize(fun, np.zeros(c * (d + 1)), jac=True, method="L-BFGS-B", options={"gtol": 1e-10}).x
        ref = softmax(x[~tr] @ w[:c * d].reshape(c, d).T + w[c * d:], axis=1)
        np.testing.assert_allclose(probe.probs[~tr], ref, atol=1e-3)  # measured: 1e-4 - 6e-4 (float32)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 120), c=st.integers(2, 6), sharp=st.floats(0.1, 4.0),
       rounded=st.booleans())
def test_issue_mask_is_cleanlabs_confident_learning_filter(seed, n, c, sharp, rounded):
    # before: the guess among several confident classes was the most probable *confident* one, without cleanlab's
    # 1e-6 slack and without its rule that a row whose label is its most probable class is never an issue
    # (46 of 300 random draws differed by 1-3 rows)
    cleanlab_filter = pytest.importorskip("cleanlab.filter")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    labels[:2] = [0, 1]  # cleanlab (and label_probe) need two classes; a class may hold no row
    logits = rng.normal(size=(n, c)) * sharp
    logits[np.arange(n), labels] += rng.uniform(0, 2)
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    if rounded:  # ties and values exactly at a threshold
        probs = np.round(probs, 1)
        probs[:, -1] = 1.0 - probs[:, :-1].sum(1)
        probs = np.clip(probs, 0.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = cleanlab_filter.find_label_issues(labels, probs, filter_by="confident_learning")
    p = Probe(probs, np.arange(n) * 3 + 1, labels * 10, np.arange(c) * 10)  # label values are not column numbers
    np.testing.assert_array_equal(p.issue_mask(), want)
    if not rounded:  # (no ties: cleanlab's sort is not stable)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ranked = cleanlab_filter.find_label_issues(labels, probs, filter_by="confident_learning",
                                                       return_indices_ranked_by="normalized_margin")
        np.testing.assert_array_equal(p.ranked_issues(), p.ids[ranked])
