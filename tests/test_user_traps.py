"""What users of the frameworks run into, through the public API: checkpoints that ``torch.load``
reads with its ``weights_only`` default, versions checked, the batch-size and partial-coverage traps
warned about, dict datasets embedded, loops that prefetch (Lightning) or stop after the last batch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import curriculum as cl
from curriculum.mining import CrossBatchMemory

N = 96


def _loader(**kw):
    ds = TensorDataset(torch.arange(N, dtype=torch.float32)[:, None], torch.arange(N) % 3)
    return cl.wrap(DataLoader(ds, batch_size=8, shuffle=True), difficulty=np.random.default_rng(0).random(N),
                   pacing=cl.pacing.Linear(0.3, 20), seed=1, **kw)


def _drain(loader, batches):
    out = []
    for x, _ in loader:
        out.append(loader.last_indices.tolist())
        if loader.recorder is not None:
            loader.feedback(loss=x[:, 0] / N)
        if len(out) == batches:
            break
    return out


def test_every_state_dict_loads_with_torch_load_weights_only(tmp_path):
    rec = cl.Recorder(N, 3, labels=np.arange(N) % 3)
    loader = _loader(recorder=rec)
    _drain(loader, 5)
    mem = CrossBatchMemory(16, 4)
    mem.add(torch.randn(5, 4), torch.arange(5))
    states = {"loader": loader.state_dict(), "sampler": loader.batch_sampler.sampler.state_dict(),
              "batch_sampler": loader.batch_sampler.state_dict(), "recorder": rec.state_dict(),
              "xbm": mem.state_dict()}
    torch.save(states, tmp_path / "ckpt.pt")
    back = torch.load(tmp_path / "ckpt.pt")  # weights_only=True is torch's default
    for name, st in back.items():
        assert st["format"].startswith("curriculum.") and st["version"] >= 1, name
    again = _loader(recorder=cl.Recorder(N, 3, labels=np.arange(N) % 3))
    again.load_state_dict(back["loader"])
    assert _drain(again, 4) == _drain(loader, 4)
    mem2 = CrossBatchMemory(16, 4)
    mem2.load_state_dict(back["xbm"])
    assert torch.equal(mem2.emb, mem.emb) and len(mem2) == 5


@pytest.mark.parametrize("what", ["loader", "recorder"])
def test_a_state_of_another_format_or_version_is_rejected_and_nothing_changes(what):
    rec = cl.Recorder(N, 3)
    obj = _loader(recorder=rec) if what == "loader" else rec
    st = obj.state_dict()
    before = obj.state_dict()
    for bad in ({**st, "version": 99}, {**st, "format": "something.else"}):
        with pytest.raises(ValueError, match="version|format"):
            obj.load_state_dict(bad)
    after = obj.state_dict()
    assert after.keys() == before.keys()


def test_a_sampler_without_batch_size_under_a_pacing_warns():
    with pytest.warns(UserWarning, match="batch_size: not given"):
        cl.CurriculumSampler(np.random.rand(10), cl.pacing.Linear(0.2, 100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cl.CurriculumSampler(np.random.rand(10))  # no pacing: nothing to count
        cl.CurriculumSampler(np.random.rand(10), cl.pacing.Linear(0.2, 100), batch_size=32)


def test_scores_covering_part_of_the_dataset_warn_in_wrap():
    ds = TensorDataset(torch.zeros(100, 1))
    with pytest.warns(UserWarning, match="cover 10 of the 100 samples"):
        cl.wrap(DataLoader(ds, batch_size=10), difficulty=cl.Difficulty(np.random.rand(10), np.arange(10)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for explicitly: no warning
        cl.wrap(DataLoader(ds, batch_size=10), difficulty=cl.Difficulty(np.random.rand(10), np.arange(10)),
                num_samples=10)


def test_a_loop_that_stops_after_the_last_batch_starts_the_next_epoch():
    """Lightning reads len() and never exhausts the iterator: a new iter() must begin epoch + 1."""
    plain, lazy = _loader(), _loader()
    full = [b for _ in range(2) for b in _drain(plain, 10 ** 6)]
    got = []
    for _ in range(2):
        it = iter(lazy)
        for _ in range(len(lazy)):
            next(it)
            got.append(lazy.last_indices.tolist())
    assert got == full and lazy.epoch == 1


def test_an_epoch_set_on_the_sampler_by_a_framework_is_followed():
    a, b = _loader(), _loader()
    a.set_epoch(3)
    b.batch_sampler.sampler.set_epoch(3)  # what Lightning's _set_sampler_epoch does
    assert _drain(a, 12) == _drain(b, 12) and b.epoch == 3


def test_a_new_epoch_set_on_the_sampler_after_a_partial_epoch_starts_it():
    """Lightning's limit_train_batches: part of epoch 0, then sampler.set_epoch(1) and a new iter()."""
    a, b = _loader(), _loader()
    _drain(a, 3)
    a.batch_sampler.sampler.set_epoch(1)
    b.set_epoch(1)
    assert _drain(a, 12) == _drain(b, 12) and a.epoch == 1


def test_a_loop_that_breaks_mid_epoch_resumes_it_even_after_prefetch_finished_the_epoch():
    ds = TensorDataset(torch.arange(N, dtype=torch.float32)[:, None])
    make = lambda: cl.wrap(DataLoader(ds, batch_size=8, num_workers=2, prefetch_factor=8),  # noqa: E731
                           difficulty=np.random.default_rng(0).random(N), pacing=cl.pacing.Linear(0.3, 20), seed=1)
    a, b = make(), make()
    first = []
    for _ in a:
        first.append(a.last_indices.tolist())
        if len(first) == 10:  # the workers have drawn the whole epoch (12 batches) by now
            break
    rest = [a.last_indices.tolist() for _ in a]
    assert first + rest == [b.last_indices.tolist() for _ in b] and a.epoch == 1


def test_prefetching_frameworks_save_and_feed_back_the_trained_batch():
    rec = cl.Recorder(N, 3)
    loader = _loader(recorder=rec)
    it = iter(loader)
    batches = [next(it)[0] for _ in range(4)]  # the framework fetched 4 batches, trained 3
    loader.mark_trained(2)
    loader.feedback(loss=torch.ones(8), batch=1)
    assert loader.state_dict()["delivered"] == 3
    assert np.isfinite(rec.loss_ema).sum() == 8
    resumed = _loader(recorder=cl.Recorder(N, 3))
    resumed.load_state_dict(loader.state_dict())
    assert _drain(resumed, 1)[0] == [int(i) for i in _fourth(batches)]
    with pytest.raises(ValueError, match="batch: expected a batch already yielded"):
        loader.mark_trained(7)
    with pytest.raises(ValueError, match="batch: expected one of the last"):
        loader.feedback(loss=torch.ones(8), batch=9)


def _fourth(batches):
    return (batches[3][:, 0]).long().tolist()  # the dataset's x is its own index


def test_from_model_reads_dict_items_by_key():
    datasets = pytest.importorskip("datasets")
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    ds = datasets.Dataset.from_dict({"x": x, "label": np.arange(40) % 4}).with_format("torch")
    net = torch.nn.Linear(6, 3)
    store = cl.EmbeddingStore.from_model(net, ds, input_key="x", progress=False, metric="l2")
    with torch.no_grad():
        np.testing.assert_allclose(store.vectors(), net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
    assert store.labels.tolist() == (np.arange(40) % 4).tolist()
    with pytest.raises(ValueError, match="input_key: the dataset's items are dicts with keys"):
        cl.EmbeddingStore.from_model(net, ds, progress=False, metric="l2")


def test_progress_defaults_to_on_only_for_long_work(capfd, monkeypatch):
    monkeypatch.setenv("CURRICULUM_PROGRESS", "1")
    store = cl.EmbeddingStore(4, metric="l2")
    store.add(np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32))
    store.knn(5)
    cl.curate(store, 30)
    assert capfd.readouterr().err == ""  # short work: no bar by default
    store.knn(6, progress=True)  # k=5 again would come from the store's graph cache
    cl.curate(store, 30, progress=True)
    err = capfd.readouterr().err
    assert "kNN" in err and "curation" in err
