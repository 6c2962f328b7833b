"""Regression tests for state that changes under a running loop: the store's locking, score
changes in the sampler and the loader, resume, and bad input / bad files (issue 14)."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import curriculum as cl
from curriculum import pacing as P
from curriculum.difficulty import Difficulty
from curriculum.mining import IndexRefresher
from curriculum.sampling import STRATEGIES, CurriculumSampler

rng = np.random.default_rng(0)


def _bounded(fn, seconds: float = 60.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return in time."""
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("out", fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"hung for more than {seconds} s"
    return box.get("out")


# ---------------------------------------------------------------------- store: hangs and races
def test_d1_foreground_build_after_background_rebuild_returns():
    s = cl.EmbeddingStore(32, "l2", index="IVF256,Flat")
    s.add(rng.normal(size=(60000, 32)))
    s.build()
    s.update(np.arange(20000), rng.normal(size=(20000, 32)))  # stale share 33%: a background rebuild starts
    _bounded(s.build)
    assert s.stale_fraction == 0.0
    d, i = _bounded(lambda: s.search(s.vectors(np.arange(5)), k=1))
    assert i[:, 0].tolist() == list(range(5))


def test_d2_index_refresher_then_search_in_the_training_thread():
    n = 5000
    x = torch.randn(n, 8)
    enc = torch.nn.Linear(8, 8)
    s = cl.EmbeddingStore(8, "l2", index="IVF16,Flat", rebuild_threshold=0.1)
    s.add(enc(x).detach().numpy())
    s.build()
    ref = IndexRefresher(s, enc, TensorDataset(x), every_steps=1, batch_size=1000)
    ref.step(1)
    for _ in range(20):  # searches while the refresh writes rows and rebuilds
        _bounded(lambda: s.search(np.zeros((2, 8), np.float32), k=3), 30)
    _bounded(ref.wait)
    assert ref.refreshes == 1 and (s.steps == 1).all()


def test_d3_knn_is_consistent_with_one_version_under_removal():
    s = cl.EmbeddingStore(8, "l2")
    s.add(rng.normal(size=(2000, 8)))
    stop = threading.Event()

    def remover():
        ids = s.ids
        for j in range(0, 1000, 50):
            s.remove(ids[j:j + 50])
        stop.set()

    t = threading.Thread(target=remover)
    t.start()
    while not stop.is_set():
        d, i = s.knn(3)
        assert len(d) == len(i) and (i >= 0).all()
        assert len(d) in range(1000, 2001)
    t.join()
    assert s.knn(3)[0].shape == (1000, 3)


def test_d4_ids_read_during_removal_have_no_duplicates():
    s = cl.EmbeddingStore(4, "l2")
    s.add(rng.normal(size=(20000, 4)))
    done = threading.Event()

    def remover():
        for j in range(0, 10000, 500):
            s.remove(np.arange(j, j + 500))
        done.set()

    t = threading.Thread(target=remover)
    t.start()
    while not done.is_set():
        ids = s.ids
        assert len(np.unique(ids)) == len(ids)
    t.join()


def test_i3_short_index_results_are_widened():
    s = cl.EmbeddingStore(16, "l2", index="IVF64,Flat", rebuild_threshold=0.99)  # faiss default nprobe 1
    x = rng.normal(size=(40000, 16)).astype(np.float32)
    s.add(x)
    s.build()
    s.update(np.arange(500), rng.normal(size=(500, 16)))
    d, i = s.search(s.vectors(), k=6)
    assert (i >= 0).all() and np.isfinite(d).all()


def test_random_concurrent_operations_never_hang():
    """Concurrent add/update/remove + search + knn + background rebuild + refresher, bounded.
    CURRICULUM_STRESS_RUNS raises the number of randomized runs (100 for the full stress run)."""
    runs = int(os.environ.get("CURRICULUM_STRESS_RUNS", "3"))
    for run in range(runs):
        r = np.random.default_rng(run)
        s = cl.EmbeddingStore(8, "l2", index="IVF16,Flat", rebuild_threshold=0.05)
        s.add(r.normal(size=(3000, 8)))
        errors: list[BaseException] = []

        def worker(kind: str, seed: int):
            w = np.random.default_rng(seed)
            try:
                for _ in range(15):
                    if kind == "write":  # another writer may remove the ids drawn here: KeyError is the contract
                        op = w.integers(3)
                        ids = s.ids
                        if op == 0:
                            s.add(w.normal(size=(50, 8)))
                        elif op == 1 and len(ids) > 100:
                            s.update(w.choice(ids, 200, replace=False), w.normal(size=(200, 8)))
                        elif len(ids) > 500:
                            s.remove(w.choice(ids, 20, replace=False))
                    elif kind == "read":
                        s.search(w.normal(size=(4, 8)), k=5)
                        s.knn(3) if w.random() < 0.2 else s.rebuild(background=True)
                    else:
                        s.build()
            except KeyError:
                if kind != "write":
                    raise
            except BaseException as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k, run * 10 + j), daemon=True)
                   for j, k in enumerate(["write", "write", "read", "read", "build"])]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
            assert not t.is_alive(), f"run {run}: a thread hung"
        assert not errors, errors
        _bounded(s.wait_rebuild)
        d, i = s.search(s.vectors(s.ids[:10]), k=1)
        assert (i[:, 0] == s.ids[:10]).all()


# ---------------------------------------------------------------------- changing scores
def test_s1_new_id_set_mid_epoch():
    s = CurriculumSampler(np.random.rand(10), batch_size=2, num_samples=40)
    it = iter(s)
    next(it)
    s.set_difficulty(np.random.rand(20))
    rest = list(it)
    assert len(rest) == 39 and max(rest) < 20


def test_s2_fewer_ids_are_drawn_evenly_and_resume_reproduces():
    def run(resume_at: int | None):
        s = CurriculumSampler(np.random.default_rng(1).random(1000), batch_size=10, seed=3)
        it = iter(s)
        out = [next(it) for _ in range(10)]
        s.set_difficulty(Difficulty(np.arange(500.0)))
        for _ in range(resume_at or 0):
            out.append(next(it))
        if resume_at is not None:
            state = s.state_dict()
            s = CurriculumSampler(np.random.default_rng(1).random(1000), batch_size=10, seed=3)
            s.load_state_dict(state)
            it = iter(s)
        out += list(it)
        return out

    live = run(None)
    assert len(live) == 1000
    counts = np.bincount(live[10:], minlength=500)
    assert counts.max() <= 3  # a permutation-like spread over the 500 ids, no id taking hundreds
    assert run(300) == live


def test_s3_rejected_set_difficulty_changes_nothing():
    s = CurriculumSampler(np.random.rand(10), batch_size=2, strategy="importance")
    before = s.state_dict()
    with pytest.raises(ValueError, match="non-negative"):
        s.set_difficulty(-np.ones(10))
    after = s.state_dict()
    assert torch.equal(before["scores"], after["scores"])
    s.load_state_dict(after)
    g = CurriculumSampler(np.random.rand(10), batch_size=2, balance="class", groups=np.arange(10) % 2)
    with pytest.raises(ValueError, match="groups"):
        g.set_difficulty(np.random.rand(30))
    assert len(g.difficulty) == 10


def _loader(workers: int, strategy: str = "threshold"):
    ds = TensorDataset(torch.arange(40))
    return cl.wrap(DataLoader(ds, batch_size=4, num_workers=workers), difficulty=np.linspace(0, 1, 40),
                   pacing=P.Linear(0.3, steps=12), strategy=strategy, seed=5)


def _run_loader(workers: int, change_at: int, strategy: str = "threshold", epochs: int = 2):
    loader, out = _loader(workers, strategy), []
    for _ in range(epochs):
        for b, (x,) in enumerate(loader):
            out.append(x.tolist())
            if len(out) == change_at:
                loader.set_difficulty(np.linspace(1, 0, 40))
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_s4_score_change_takes_effect_at_the_same_batch_for_any_worker_count(strategy):
    ref = _run_loader(0, change_at=2, strategy=strategy)
    assert _run_loader(2, change_at=2, strategy=strategy) == ref


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_scores_changed_equals_uninterrupted(workers):
    r = np.random.default_rng(workers)
    for trial in range(3 if workers else 6):
        strategy = STRATEGIES[trial % len(STRATEGIES)]
        change, stop = sorted(r.choice(np.arange(1, 20), 2, replace=False).tolist())
        live = _run_loader(workers, change, strategy)
        loader, out = _loader(workers, strategy), []
        state = None
        for _ in range(2):
            for (x,) in loader:
                out.append(x.tolist())
                if len(out) == change:
                    loader.set_difficulty(np.linspace(1, 0, 40))
                if len(out) == stop:
                    state = torch.load(_save(loader.state_dict()))  # weights_only default
                    break
            if state is not None:
                break
        resumed = _loader(workers, strategy)
        resumed.load_state_dict(state)
        while len(out) < len(live):
            for (x,) in resumed:
                out.append(x.tolist())
        assert out == live, (strategy, change, stop)


def _save(state):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf


def test_s5_mid_batch_change_then_mid_batch_resume():
    def make():
        return CurriculumSampler(np.linspace(0, 1, 30), P.Linear(0.2, steps=10), batch_size=4, seed=2)

    s = make()
    it = iter(s)
    out = [next(it) for _ in range(6)]          # mid-batch
    s.set_difficulty(np.linspace(1, 0, 30))       # takes effect at the next batch boundary
    state = s.state_dict()
    live = out + list(it)
    r = make()
    r.load_state_dict(state)
    assert out + list(iter(r)) == live


def test_s6_bad_states_are_rejected_before_anything_changes():
    s = CurriculumSampler(np.random.rand(10), batch_size=2)
    good = s.state_dict()
    for bad in ({**good, "consumed": -8}, {**good, "epoch": -1}, {k: v for k, v in good.items() if k != "start_step"},
                {k: v for k, v in good.items() if k != "epoch"}, {**good, "version": 99}, [1, 2]):
        with pytest.raises((ValueError, TypeError), match="state"):
            s.load_state_dict(bad)
        assert s.state_dict()["consumed"] == 0 and s.epoch == 0


# ---------------------------------------------------------------------- bad input
def test_i1_search_on_an_empty_store():
    d, i = cl.EmbeddingStore(8).search(np.ones((1, 8)), k=3)
    assert (i == -1).all() and np.isinf(d).all()


def test_i2_huge_vectors():
    s = cl.EmbeddingStore(4, "cosine")
    s.add(np.full((1, 4), 1e20))
    np.testing.assert_allclose(s.vectors(), np.full((1, 4), 0.5), rtol=1e-6)
    l2 = cl.EmbeddingStore(4, "l2")
    with pytest.raises(ValueError, match="vectors: expected magnitudes below"):
        l2.add(np.full((1, 4), 1e19))
    assert len(l2) == 0
    l2.add(np.ones((2, 4)))
    with pytest.raises(ValueError, match="queries: expected magnitudes"):
        l2.search(np.full((1, 4), 1e19), k=1)


def test_i4_feedback_rejects_fractional_indices_and_odd_dtypes():
    ds = TensorDataset(torch.arange(8.0))
    store = cl.EmbeddingStore(2, "l2")
    store.add(np.random.rand(8, 2))
    loader = cl.wrap(DataLoader(ds, batch_size=2), difficulty=np.random.rand(8), recorder=cl.Recorder(8), store=store)
    with pytest.raises(TypeError, match="indices"):
        loader.feedback(loss=[5.0, 7.0], indices=[0.9, 3.7])
    with pytest.raises(TypeError, match="embeddings"):
        loader.feedback(embeddings=np.ones((2, 2), bool), indices=[0, 1])
    with pytest.raises(TypeError, match="embeddings"):
        loader.feedback(embeddings=np.ones((2, 2), complex), indices=[0, 1])
    assert (loader.recorder.difficulty("loss_ema").scores == 0).all()


def test_i5_stream_selector_checks_early_and_rejects_nan_embeddings():
    from curriculum.selection import StreamSelector

    with pytest.raises(ValueError, match="metric"):
        StreamSelector(range(10), embed=lambda xs: np.ones((len(xs), 2)), metric="foo")
    with pytest.raises(TypeError, match="embed"):
        StreamSelector(range(10), embed=None)
    sel = StreamSelector(range(10), embed=lambda xs: np.full((len(xs), 2), np.nan), window=5)
    with pytest.raises(ValueError, match="embed output"):
        list(sel)


def test_i6_nan_steps_recall_and_groups_and_wrapped_samplers():
    with pytest.raises(ValueError, match="step"):
        P.Linear(0.1, steps=10)(float("nan"))
    s = cl.EmbeddingStore(4, "l2")
    s.add(np.random.rand(50, 4))
    for bad in (1.5, float("nan")):
        with pytest.raises(ValueError, match="target_recall"):
            s.knn(3, target_recall=bad)
        with pytest.raises(ValueError, match="target_recall"):
            s.plan_knn(3, target_recall=bad)
    with pytest.raises(ValueError, match="groups"):
        CurriculumSampler(np.random.rand(4), balance="class", groups=[0, 1, np.nan, 1])
    from torch.utils.data import RandomSampler
    from torch.utils.data.distributed import DistributedSampler

    ds = TensorDataset(torch.arange(20))
    shard = cl.wrap(DataLoader(ds, batch_size=4, sampler=DistributedSampler(ds, num_replicas=2, rank=1)),
                    difficulty=np.random.rand(20))
    assert sum(len(b[0]) for b in shard) == 10
    few = cl.wrap(DataLoader(ds, batch_size=4, sampler=RandomSampler(ds, num_samples=8)), difficulty=np.random.rand(20))
    assert len(list(few)) == 2


def test_i7_clear_messages():
    s = cl.EmbeddingStore(4, "l2")
    with pytest.raises(TypeError, match="current_step"):
        s.staleness("x")
    with pytest.raises(ValueError, match="difficulty: the scores are empty"):
        Difficulty([]).dense()
    with pytest.raises(TypeError, match="loss"):
        cl.Recorder(4).update([0, 1], loss=["a", "b"])

    class Bad(torch.nn.Module):
        def forward(self, x):
            return x[:1]

    with pytest.raises(ValueError, match="model: expected one embedding per input row"):
        cl.EmbeddingStore.from_model(Bad(), TensorDataset(torch.ones(4, 2)), progress=False)


# ---------------------------------------------------------------------- bad files
def _saved(tmp_path, **kw):
    s = cl.EmbeddingStore(4, "l2", **kw)
    s.add(np.random.rand(20, 4), labels=np.arange(20) % 2)
    s.build()
    p = tmp_path / "s.store"
    s.save(p)
    with np.load(p) as z:
        return s, p, {k: z[k] for k in z.files}


def _write(tmp_path, arrays, name="bad.store"):
    p = tmp_path / name
    with open(p, "wb") as f:
        np.savez(f, **arrays)
    return p


def _header(arrays, **change):
    h = json.loads(bytes(arrays["header"]).decode())
    h.update(change)
    return {**arrays, "header": np.frombuffer(json.dumps(h).encode(), np.uint8)}


def test_f1_f2_bad_files_name_field_and_file(tmp_path):
    _, p, a = _saved(tmp_path, index="IVF2,Flat", exact_threshold=0)
    assert "index" in a
    np.save(tmp_path / "one.npy", np.zeros(3))
    cases = {
        "single array": (tmp_path / "one.npy", "single array"),
        "json list": (_write(tmp_path, {**a, "header": np.frombuffer(b"[1, 2]", np.uint8)}, "json.store"), "header"),
        "missing key": (_write(tmp_path, _header(a, n=None), "missing_key.store"), "header"),
        "missing member": (_write(tmp_path, {k: v for k, v in a.items() if k != "labels"}, "missing_member.store"), "labels"),
        "labels length": (_write(tmp_path, {**a, "labels": np.zeros(7, np.int64)}, "labels_len.store"), "labels"),
        "nan vectors": (_write(tmp_path, {**a, "vectors": np.full((20, 4), np.nan, np.float32)}, "nan.store"), "vectors"),
        "duplicate ids": (_write(tmp_path, {**a, "ids": np.zeros(20, np.int64)}, "dup.store"), "ids"),
        "negative ids": (_write(tmp_path, {**a, "ids": -np.arange(1, 21)}, "neg_ids.store"), "ids"),
        "negative labels": (_write(tmp_path, {**a, "labels": np.full(20, -5)}, "neg_labels.store"), "labels"),
    }
    s8 = cl.EmbeddingStore(8, "l2", index="IVF2,Flat", exact_threshold=0)
    s8.add(np.random.rand(20, 8))
    s8.build()
    p8 = tmp_path / "s8.store"
    s8.save(p8)
    with np.load(p8) as z:
        cases["index dim"] = (_write(tmp_path, {**a, "index": z["index"]}, "dim.store"), "index")
    if "index" in a:
        cases["corrupt index"] = (_write(tmp_path, {**a, "index": np.frombuffer(b"garbage" * 10, np.uint8)},
                                         "corrupt.store"), "index")
    for what, (path, field) in cases.items():
        with pytest.raises(ValueError) as e:
            cl.EmbeddingStore.load(path)
        assert field in str(e.value) and str(path) in str(e.value), (what, str(e.value))


def test_f3_failed_and_killed_saves_leave_no_temp_files_and_keep_the_mode(tmp_path):
    s, p, _ = _saved(tmp_path)
    os.chmod(p, 0o644)
    leftover = tmp_path / ".store-s.store.999999999.abc.tmp"  # a save killed midway (dead pid)
    leftover.write_bytes(b"x" * 100)
    s.save(p)
    assert not leftover.exists()
    assert oct(os.stat(p).st_mode & 0o777) == oct(0o644)
    with pytest.raises(TypeError):
        s.save(p, extra={"bad": np.array([object()], dtype=object)})
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []
    assert len(cl.EmbeddingStore.load(p)) == 20
