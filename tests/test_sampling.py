"""CurriculumSampler: determinism, exact resume, distributed shards, strategy behaviour, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import _gloo

from curriculum import pacing as P
from curriculum.difficulty import Difficulty
from curriculum.sampling import STRATEGIES, CurriculumBatchSampler, CurriculumSampler

SCORES = np.random.default_rng(0).random(2000)
RANKS = Difficulty(SCORES).rank()


def make(strategy="threshold", **kw):
    kw.setdefault("batch_size", 50)
    kw.setdefault("seed", 3)
    return CurriculumSampler(SCORES, kw.pop("pacing", P.Linear(0.1, 120)), strategy=strategy, **kw)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_seed_same_sequence_other_seed_other(strategy):
    a = list(make(strategy))
    b = list(make(strategy))
    c = list(make(strategy, seed=4))
    assert a == b and a != c
    np.testing.assert_array_equal(make(strategy).epoch_indices(0), a)  # vectorised == iterated


@pytest.mark.parametrize("strategy", ["threshold", "soft", "rank"])
def test_mean_rank_rises_for_easy_to_hard(strategy):
    s = make(strategy, pacing=P.Linear(0.05, 200))
    means = [RANKS[s.epoch_indices(e)].mean() for e in range(5)]  # 40 steps per epoch
    assert all(b > a for a, b in zip(means, means[1:])), means
    within = RANKS[s.epoch_indices(0)].reshape(-1, 50).mean(1)  # competence moves inside an epoch
    assert within[-5:].mean() > within[:5].mean()


def test_mean_rank_falls_for_anti():
    s = make("anti", pacing=P.Linear(0.05, 200))
    means = [RANKS[s.epoch_indices(e)].mean() for e in range(5)]
    assert all(b < a for a, b in zip(means, means[1:])), means


def test_threshold_draws_only_admitted_and_is_a_permutation_at_full_competence():
    s = make("threshold", pacing=P.Linear(0.1, 400))
    idx = s.epoch_indices(0).reshape(-1, 50)
    order = np.argsort(SCORES, kind="stable")
    for b, batch in enumerate(idx):
        m = P.Linear(0.1, 400).admitted(b, 2000)
        assert set(batch) <= set(order[:m].tolist())
    full = make("threshold", pacing=P.Constant(1.0))
    assert sorted(full.epoch_indices(0)) == list(range(2000))


def test_soft_matches_its_formula():
    # constant competence 1 -> beta = 5: p_i ~ exp(5 * r_i)
    s = CurriculumSampler(np.arange(50.0), P.Constant(1.0), strategy="soft", num_samples=400_000, batch_size=1000)
    counts = np.bincount(s.epoch_indices(0), minlength=50) / 400_000
    w = np.exp(5.0 * np.arange(50) / 49)
    np.testing.assert_allclose(counts, w / w.sum(), atol=0.004)


def test_rank_matches_loshchilov_hutter():
    s = CurriculumSampler(np.arange(40.0), P.Constant(1.0), strategy="rank", pressure=100.0, num_samples=400_000,
                          batch_size=1000)
    counts = np.bincount(s.epoch_indices(0), minlength=40) / 400_000
    r = 39 - np.arange(40)  # r = 0 is the hardest (largest score)
    p = np.exp(-r * np.log(100.0) / 40)
    np.testing.assert_allclose(counts, p / p.sum(), atol=0.004)


def test_importance_probabilities_and_unbiased_weights():
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    s = CurriculumSampler(scores, strategy="importance", smoothing=0.2, num_samples=200_000, batch_size=1000)
    p = s.probabilities().scores
    np.testing.assert_allclose(p, 0.8 * scores / 10 + 0.2 / 4)
    idx = s.epoch_indices(0)
    np.testing.assert_allclose(np.bincount(idx, minlength=4) / len(idx), p, atol=0.005)
    loss = np.array([5.0, -1.0, 2.0, 7.0])
    w = s.weights(idx).numpy()
    assert np.mean(w * loss[idx]) == pytest.approx(loss.mean(), rel=0.02)  # E[w l] = mean loss


def test_class_balanced_draws_from_long_tail_are_near_uniform():
    labels = np.repeat(np.arange(5), [1000, 300, 100, 30, 10])
    scores = np.random.default_rng(1).random(len(labels))
    s = CurriculumSampler(scores, P.Constant(1.0), balance="class", groups=labels, batch_size=64, seed=0)
    freq = np.bincount(labels[s.epoch_indices(0)], minlength=5) / len(labels)
    assert freq.min() > 0.17 and freq.max() < 0.23, freq
    # per-class competence: at competence 0.1 each class draws from its own easiest 10%
    s2 = CurriculumSampler(scores, P.Constant(0.1, partial=True), balance="class", groups=labels, batch_size=64)
    drawn = s2.epoch_indices(0)
    for c in range(5):
        members = np.flatnonzero(labels == c)
        easiest = set(members[np.argsort(scores[members])][: int(np.ceil(0.1 * len(members)))].tolist())
        assert set(drawn[labels[drawn] == c].tolist()) <= easiest


def test_self_paced_admits_by_loss_threshold():
    losses = np.array([0.1, 0.5, 1.5, 3.0, 6.0])
    s = CurriculumSampler(losses, P.SelfPaced(lambda0=1.0, growth=2.0), num_samples=500, batch_size=10)
    assert set(s.epoch_indices(0)) == {0, 1}
    assert set(s.epoch_indices(1)) == {0, 1, 2}
    assert set(s.epoch_indices(3)) == {0, 1, 2, 3, 4}
    empty = CurriculumSampler(losses, P.SelfPaced(lambda0=0.01, growth=2.0), batch_size=1)
    with pytest.raises(ValueError, match="empty admitted pool"):
        empty.epoch_indices(0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_resume_mid_epoch_and_across_epoch_boundary_equals_uninterrupted(strategy):
    ref = make(strategy)
    full = []
    for _ in range(3):
        full += list(ref)
    for stop in (0, 1, 777, 2000, 2001, 3999, 4500):
        s = make(strategy)
        got = []
        it = iter(s)
        epoch_len = len(s)
        while len(got) < stop:
            try:
                got.append(next(it))
            except StopIteration:
                it = iter(s)
        state = s.state_dict()
        fresh = make(strategy)
        fresh.load_state_dict(state)
        rest = []
        while len(got) + len(rest) < 3 * epoch_len:
            rest += list(fresh)
        assert got + rest == full, (strategy, stop)


def test_resume_in_a_new_process(tmp_path):
    s = make("soft")
    it = iter(s)
    head = [next(it) for _ in range(1234)]
    torch.save(s.state_dict(), tmp_path / "state.pt")
    code = textwrap.dedent(f"""
        import json, numpy as np, torch
        from curriculum import pacing as P
        from curriculum.sampling import CurriculumSampler
        scores = np.random.default_rng(0).random(2000)
        s = CurriculumSampler(scores, P.Linear(0.1, 120), strategy="soft", batch_size=50, seed=3)
        s.load_state_dict(torch.load({str(tmp_path / 'state.pt')!r}, weights_only=False))
        print(json.dumps(list(s)))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    tail = json.loads(out.stdout)
    assert head + tail == list(make("soft"))


def test_state_dict_with_consumed_for_prefetching_loaders():
    s = make()
    it = iter(s)
    seq = [next(it) for _ in range(500)]  # a prefetching loader ran ahead to 500
    state = s.state_dict(consumed=300)    # the training loop used 300
    t = make()
    t.load_state_dict(state)
    assert list(t)[:200] == seq[300:]


def test_set_difficulty_takes_effect_at_next_batch():
    s = CurriculumSampler(np.arange(100.0), P.Constant(0.1, partial=True), batch_size=10, seed=0)
    it = iter(s)
    first = [next(it) for _ in range(15)]  # mid-batch
    assert set(first) <= set(range(10))
    s.set_difficulty(-np.arange(100.0))  # reversed: ids 90..99 are now easiest
    rest_of_batch = [next(it) for _ in range(5)]
    nxt = [next(it) for _ in range(10)]
    assert set(rest_of_batch) <= set(range(10))  # the batch in flight finishes as drawn
    assert set(nxt) <= set(range(90, 100))


def test_batch_sampler_in_a_dataloader_with_workers():
    ds = TensorDataset(torch.arange(2000))
    bs = CurriculumBatchSampler(SCORES, P.Linear(0.1, 120), batch_size=50, seed=3)
    got = [b[0].tolist() for b in DataLoader(ds, batch_sampler=bs, num_workers=2)]
    assert [i for b in got for i in b] == list(make())
    assert len(bs) == 40 and all(len(b) == 50 for b in got)


def test_distributed_shards_are_disjoint_equal_and_cover_the_global_draw():
    # with a step-independent pacing the interleaved shards are exactly the single-process draw
    # (with a moving pacing every rank's batch b is global step b, so the clocks differ by design)
    glob = make(num_samples=2001, pacing=P.Constant(1.0)).epoch_indices(0)
    shards = [make(num_samples=2001, rank=r, world_size=3, pacing=P.Constant(1.0)).epoch_indices(0) for r in range(3)]
    assert len({len(x) for x in shards}) == 1
    inter = np.empty(3 * len(shards[0]), np.int64)
    for r in range(3):
        inter[r::3] = shards[r]
    np.testing.assert_array_equal(inter[:2001], glob[:2001])


def _gloo_worker(rank, world, path, initfile):
    torch.distributed.init_process_group("gloo", init_method=f"file://{initfile}", rank=rank, world_size=world)
    s = CurriculumSampler(np.random.default_rng(0).random(1000), P.Constant(1.0), batch_size=10, seed=7)
    idx = list(s)
    with open(f"{path}.{rank}", "w") as f:
        json.dump({"rank": s.rank, "world": s.world_size, "idx": idx}, f)
    torch.distributed.destroy_process_group()


def test_two_process_gloo_ranks_draw_disjoint_shards(tmp_path):
    _gloo.spawn(_gloo_worker, 2, tmp_path)
    r0 = json.load(open(tmp_path / "out.0"))
    r1 = json.load(open(tmp_path / "out.1"))
    assert (r0["rank"], r0["world"], r1["rank"]) == (0, 2, 1)
    assert len(r0["idx"]) == len(r1["idx"]) == 500
    assert set(r0["idx"]).isdisjoint(r1["idx"])
    assert sorted(r0["idx"] + r1["idx"]) == list(range(1000))


@pytest.mark.parametrize("kwargs,match", [
    ({"strategy": "random"}, "strategy"),
    ({"batch_size": 0}, "batch_size"),
    ({"balance": "class"}, "groups"),
    ({"balance": "class", "groups": np.zeros(5)}, "groups: expected"),
    ({"rank": 2, "world_size": 2}, "rank"),
    ({"num_samples": 0}, "num_samples"),
    ({"pacing": P.SelfPaced(), "strategy": "soft"}, "SelfPaced"),
    ({"pacing": lambda t: 1.0}, "FromCallable"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make(**kwargs)


def test_bad_scores():
    with pytest.raises(ValueError, match="empty pool"):
        CurriculumSampler(np.zeros(0))
    with pytest.raises(ValueError, match="finite"):
        CurriculumSampler(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="non-negative"):
        CurriculumSampler(np.array([-1.0, 2.0]), strategy="importance")
    s = make()
    with pytest.raises(ValueError, match="seed"):
        s.load_state_dict({**make(seed=9).state_dict()})


def test_dataset_ids_are_what_is_drawn():
    d = Difficulty([0.5, 0.1, 0.9], ids=[100, 7, 42])
    s = CurriculumSampler(d, P.Constant(1.0), num_samples=3)
    assert sorted(s) == [7, 42, 100]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300), world=st.integers(1, 4), bs=st.integers(1, 32), seed=st.integers(0, 2**31),
       strategy=st.sampled_from(STRATEGIES), drop_last=st.booleans())
def test_property_shards_and_lengths(n, world, bs, seed, strategy, drop_last):
    scores = np.random.default_rng(seed).random(n)
    shards = [CurriculumSampler(scores, P.Linear(0.2, 10), strategy=strategy, batch_size=bs, seed=seed, rank=r,
                                world_size=world, drop_last=drop_last) for r in range(world)]
    lens = {len(s.epoch_indices(0)) for s in shards}
    assert len(lens) == 1 and lens.pop() == len(shards[0])
    for s in shards:
        idx = s.epoch_indices(0)
        assert idx.min(initial=0) >= 0 and idx.max(initial=0) < n
        np.testing.assert_array_equal(idx, list(s))


# ---------------------------------------------------------------------- cleaning mode (exclude=)
FLAGGED = np.random.default_rng(7).choice(2000, 300, replace=False)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_excluded_ids_are_never_drawn_and_the_epoch_counts_the_rest(strategy):
    s = make(strategy, exclude=FLAGGED)
    assert len(s) == 1700
    drawn = np.concatenate([s.epoch_indices(e) for e in range(3)])
    assert not np.isin(drawn, FLAGGED).any()
    s.set_difficulty(SCORES[::-1].copy())  # a new score set keeps the exclusion
    assert not np.isin(s.epoch_indices(4), FLAGGED).any()


def test_exclusion_equals_dropping_the_ids_from_the_scores():
    keep = np.setdiff1d(np.arange(2000), FLAGGED)
    a = CurriculumSampler(SCORES, P.Linear(0.1, 120), batch_size=50, seed=3, exclude=FLAGGED)
    b = CurriculumSampler(Difficulty(SCORES[keep], keep), P.Linear(0.1, 120), batch_size=50, seed=3)
    np.testing.assert_array_equal(a.epoch_indices(0), b.epoch_indices(0))


def test_exclusion_resumes_and_a_mismatch_is_refused():
    s = make(exclude=FLAGGED)
    it = iter(s)
    head = [next(it) for _ in range(275)]
    state = s.state_dict()
    whole = head + list(it)
    r = make(exclude=FLAGGED[::-1])  # same set, any order
    r.load_state_dict(state)
    assert head + list(r) == whole
    other = make()
    before = other.state_dict()
    with pytest.raises(ValueError, match="exclude"):
        other.load_state_dict(state)
    assert json.dumps({k: str(v) for k, v in other.state_dict().items()}) == json.dumps(
        {k: str(v) for k, v in before.items()})  # nothing changed


def test_exclusion_errors():
    with pytest.raises(ValueError, match="exclude: leaves no scored sample"):
        CurriculumSampler([0.1, 0.2], batch_size=1, exclude=[0, 1])
    with pytest.raises(ValueError, match="exclude: expected non-negative ids"):
        make(exclude=[-1])
    with pytest.raises(TypeError, match="exclude"):
        make(exclude=[0.5])
