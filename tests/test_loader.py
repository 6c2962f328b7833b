"""curriculum.wrap: settings kept, indices right through workers, feedback, resume, distributed."""

from __future__ import annotations

import functools
import gc
import json
import os

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, SequentialSampler, WeightedRandomSampler

import curriculum as cl
from curriculum import pacing as P

import _gloo


class IndexEncoded(Dataset):
    """Item i is (tensor([i, i]), i % 3): the item says which index it is."""

    def __init__(self, n=200):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i), float(i)]), i % 3


def my_collate(items):
    xs, ys = zip(*items)
    return {"x": torch.stack(xs), "y": torch.tensor(ys)}


def my_init(worker_id):
    torch.manual_seed(worker_id)


SCORES = np.random.default_rng(0).random(200)


def test_wrap_keeps_every_setting():
    g = torch.Generator().manual_seed(5)
    orig = DataLoader(IndexEncoded(), batch_size=7, shuffle=True, drop_last=True, num_workers=2,
                      collate_fn=my_collate, pin_memory=True, persistent_workers=True, prefetch_factor=3,
                      worker_init_fn=my_init, generator=g, timeout=30, multiprocessing_context="spawn")
    w = cl.wrap(orig, difficulty=SCORES, pacing=P.Linear(0.2, 50))
    new = w.loader
    assert new.batch_sampler.batch_size == 7 and new.batch_sampler.drop_last is True
    assert new.num_workers == 2 and new.pin_memory is True and new.persistent_workers is True
    assert new.prefetch_factor == 3 and new.worker_init_fn is my_init and new.generator is g
    assert new.timeout == 30 and new.multiprocessing_context is orig.multiprocessing_context
    assert new.collate_fn.collate_fn is my_collate
    assert len(w) == 200 // 7 and w.batch_size == 7


def test_feedback_lands_on_right_indices_with_workers_and_prefetch():
    orig = DataLoader(IndexEncoded(), batch_size=16, num_workers=2, prefetch_factor=4, collate_fn=my_collate,
                      multiprocessing_context="fork")
    rec = cl.Recorder(200, 3)
    w = cl.wrap(orig, difficulty=SCORES, pacing=P.Linear(0.3, 10), recorder=rec)
    seen = []
    for batch in w:
        # the loss of each sample is its own index: lands right only if indices are right
        w.feedback(loss=batch["x"][:, 0])
        np.testing.assert_array_equal(w.last_indices.numpy(), batch["x"][:, 0].numpy().astype(int))
        seen += w.last_indices.tolist()
    obs = rec.seen
    np.testing.assert_array_equal(rec.loss[obs], np.flatnonzero(obs).astype(float))
    assert len(seen) == 200


def test_with_indices_and_plain_loop_body():
    orig = DataLoader(IndexEncoded(50), batch_size=10)
    w = cl.wrap(orig, difficulty=SCORES[:50], with_indices=True)
    for idx, (x, y) in w:
        np.testing.assert_array_equal(idx.numpy(), x[:, 0].numpy().astype(int))
    w2 = cl.wrap(orig, difficulty=SCORES[:50])
    n = 0
    for x, y in w2:  # the loop body of the original script is unchanged
        n += len(x)
    assert n == 50


def run_training(w, n_batches, log, start=0):
    """A fake training loop: feedback of loss = index / 200, logged batches."""
    done = start
    while done < n_batches:
        for x, y in w:
            w.feedback(loss=x[:, 0] / 200.0, logits=torch.nn.functional.one_hot(y, 3).float() * x[:, :1] / 100)
            log.append(x[:, 0].long().tolist())
            done += 1
            if done >= n_batches:
                return


def make_wrapped(**kw):
    orig = DataLoader(IndexEncoded(), batch_size=9, num_workers=kw.pop("num_workers", 0))
    return cl.wrap(orig, difficulty=SCORES, pacing=P.Root(0.1, 40), strategy="soft",
                   recorder=cl.Recorder(200, 3, labels=np.arange(200) % 3), **kw)


@pytest.mark.parametrize("stop", [5, 23, 30])
def test_resume_equals_uninterrupted_through_the_wrapper(tmp_path, stop):
    ref_log = []
    ref = make_wrapped()
    run_training(ref, 60, ref_log)  # 23 batches per epoch: crosses two epoch boundaries
    part_log = []
    a = make_wrapped(num_workers=2)  # prefetching workers run ahead of the loop
    run_training(a, stop, part_log)
    torch.save(a.state_dict(), tmp_path / "ckpt.pt")
    b = make_wrapped()
    b.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=False))
    run_training(b, 60, part_log, start=stop)
    assert part_log == ref_log
    for k, v in ref.recorder.state_dict()["tensors"].items():
        assert torch.equal(v, b.recorder.state_dict()["tensors"][k]), k


@pytest.mark.parametrize("stop", [22, 23, 24])
def test_a_loop_that_sets_each_epoch_resumes_at_an_epochs_last_batch(tmp_path, stop):
    # `for epoch in range(start, E): loader.set_epoch(epoch); for batch in loader: ...` with a checkpoint taken at
    # batch `stop` (23 batches an epoch: 23 is the first epoch's last). Before, a resume at an epoch's last batch
    # drew the next epoch inside set_epoch(saved epoch) and again after set_epoch(saved epoch + 1)
    def loop(w, log, start_epoch=0, stop_at=None):
        for epoch in range(start_epoch, 3):
            w.set_epoch(epoch)
            for x, _ in w:
                log.append(x[:, 0].long().tolist())
                if len(log) == stop_at:
                    return epoch
        return None

    ref_log: list[list[int]] = []
    loop(make_wrapped(), ref_log)
    log: list[list[int]] = []
    a = make_wrapped()
    epoch = loop(a, log, stop_at=stop)
    torch.save({"loader": a.state_dict(), "epoch": epoch}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    b = make_wrapped()
    b.load_state_dict(ckpt["loader"])
    loop(b, log, start_epoch=ckpt["epoch"])
    assert log == ref_log and len(log) == 3 * 23


def test_a_new_iteration_ends_the_workers_of_one_left_unfinished():
    # Lightning stops after an epoch's last batch without exhausting the iterator: its workers
    # (and their queue threads) must end before the next epoch forks new ones beside them
    import multiprocessing

    loader = make_wrapped(num_workers=1)
    before = set(multiprocessing.active_children())  # other tests' persistent workers may live on
    first = iter(loader)
    next(first)
    old = set(multiprocessing.active_children()) - before
    assert old  # the first iteration's worker runs
    second = iter(loader)
    assert not set(multiprocessing.active_children()) & old
    assert len(list(second)) == len(loader) - 1  # the epoch goes on where the loop left it


def test_bad_feedback_raises_and_changes_nothing():
    w = make_wrapped()
    it = iter(w)
    x, y = next(it)
    w.feedback(loss=x[:, 0])
    before = w.recorder.state_dict()
    bad = [
        dict(loss=x[:-1, 0]),                                   # wrong length
        dict(loss=torch.full((9,), float("nan"))),              # NaN
        dict(loss=x[:, 0], logits=torch.full((9, 3), float("inf"))),
        dict(logits=torch.zeros(9, 5)),                         # wrong width
        dict(),                                                 # nothing
        dict(embeddings=torch.zeros(9, 4)),                     # no store
    ]
    for kw in bad:
        with pytest.raises((ValueError, RuntimeError)):
            w.feedback(**kw)
    after = w.recorder.state_dict()
    for k, v in before["tensors"].items():
        assert torch.equal(v, after["tensors"][k]), k


def test_feedback_embeddings_update_store_rows_with_step():
    store = cl.EmbeddingStore(2, metric="l2")
    store.add(np.zeros((200, 2), np.float32) + 0.5)
    orig = DataLoader(IndexEncoded(), batch_size=10)
    w = cl.wrap(orig, difficulty=SCORES, store=store)
    it = iter(w)
    x, _ = next(it)
    x, _ = next(it)
    w.feedback(embeddings=x)
    idx = w.last_indices.numpy()
    np.testing.assert_array_equal(store.vectors(idx), x.numpy())
    assert (store.steps[idx] == 2).all()


def test_background_rescore_reaches_the_sampler():
    orig = DataLoader(IndexEncoded(), batch_size=10)
    rec = cl.Recorder(200, 3)
    w = cl.wrap(orig, pacing=P.Constant(0.1, partial=True), recorder=rec, rescore_every=5)
    for i, (x, y) in enumerate(w):
        w.feedback(loss=-x[:, 0])  # later indices get lower loss -> easier
        if i == 7:
            break
    w.wait_rescore()
    assert w.rescores_applied >= 1
    d = w.batch_sampler.sampler.difficulty
    assert d.name == "recorder.loss_ema" and d.observed.sum() > 0


def test_unwrappable_loaders_get_clear_errors():
    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(3)

    with pytest.raises(TypeError, match="IterableDataset"):
        cl.wrap(DataLoader(Stream(), batch_size=2), difficulty=[0.1])
    custom = BatchSampler(SequentialSampler(range(200)), 10, False)

    class MyBatches(BatchSampler):
        pass

    with pytest.raises(ValueError, match="custom batch_sampler"):
        cl.wrap(DataLoader(IndexEncoded(), batch_sampler=MyBatches(SequentialSampler(range(200)), 10, False)),
                difficulty=SCORES)
    w = cl.wrap(DataLoader(IndexEncoded(), batch_sampler=custom), difficulty=SCORES)
    assert w.batch_size == 10
    with pytest.raises(ValueError, match="custom sampler"):
        cl.wrap(DataLoader(IndexEncoded(), batch_size=4, sampler=WeightedRandomSampler(np.ones(200), 200)),
                difficulty=SCORES)
    with pytest.raises(ValueError, match="difficulty"):
        cl.wrap(DataLoader(IndexEncoded(), batch_size=4))
    with pytest.raises(ValueError, match="len\\(dataset\\)=200"):
        cl.wrap(DataLoader(IndexEncoded(), batch_size=4), difficulty=np.random.rand(300))
    with pytest.raises(ValueError, match="rescore_every"):
        cl.wrap(DataLoader(IndexEncoded(), batch_size=4), difficulty=SCORES, rescore_every=3)


def _gloo_wrap_worker(rank, world, path, initfile):
    torch.distributed.init_process_group("gloo", init_method=f"file://{initfile}", rank=rank, world_size=world)
    rec = cl.Recorder(200, 3)
    w = cl.wrap(DataLoader(IndexEncoded(), batch_size=10), difficulty=SCORES, pacing=P.Linear(0.5, 10), recorder=rec)
    drawn = []
    for x, y in w:
        w.feedback(loss=x[:, 0] * (rank + 1))
        drawn += x[:, 0].long().tolist()
    with open(f"{path}.{rank}", "w") as f:
        json.dump({"drawn": drawn, "loss_ema": np.nan_to_num(rec.loss_ema, nan=-1).tolist()}, f)
    torch.distributed.destroy_process_group()


def test_two_process_gloo_identical_scores_disjoint_draws(tmp_path):
    _gloo.spawn(_gloo_wrap_worker, 2, tmp_path)
    r0 = json.load(open(tmp_path / "out.0"))
    r1 = json.load(open(tmp_path / "out.1"))
    assert r0["loss_ema"] == r1["loss_ema"]  # every rank saw every rank's feedback
    assert len(r0["drawn"]) == len(r1["drawn"]) == 100
    # the same global position is never drawn twice (positions are disjoint shards)
    assert sum(v >= 0 for v in r0["loss_ema"]) > 0
    w = [cl.CurriculumSampler(SCORES, P.Linear(0.5, 10), batch_size=10, rank=r, world_size=2) for r in range(2)]
    assert r0["drawn"] == list(w[0]) and r1["drawn"] == list(w[1])


def test_len_epochs_and_step():
    w = make_wrapped()
    assert len(w) == 23
    n0 = sum(1 for _ in w)
    assert n0 == 23 and w.epoch == 1
    w.set_epoch(1)  # same epoch: no reset
    assert w.step == 23


def test_wrap_cleaning_mode_never_yields_excluded_items():
    import warnings

    flagged = np.arange(0, 200, 9)
    orig = DataLoader(IndexEncoded(), batch_size=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # excluding is not "partial coverage"
        w = cl.wrap(orig, difficulty=SCORES, pacing=P.Linear(0.5, 20), exclude=flagged)
    seen = torch.cat([x[:, 0] for x, _ in w]).long().numpy()
    assert len(seen) == 200 - len(flagged) and not np.isin(seen, flagged).any()


def _note_pid(folder: str, worker_id: int) -> None:
    open(os.path.join(folder, str(os.getpid())), "w").close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_wrapped_loader_dropped_mid_epoch_ends_its_workers_at_once(tmp_path):
    # no reference cycle keeps it: the DataLoader iterator shuts its workers down in order when
    # the last reference goes, not when the garbage collector runs (whose weakref pass closed
    # the workers' queues first: a 5 s join timeout per worker)
    base = DataLoader(torch.utils.data.TensorDataset(torch.arange(512.0)), batch_size=8, num_workers=2,
                      persistent_workers=True, worker_init_fn=functools.partial(_note_pid, str(tmp_path)))
    loader = cl.wrap(base, difficulty=np.linspace(0, 1, 512), seed=0)
    gc.disable()
    try:
        for i, _ in enumerate(loader):
            if i == 3:
                break
        for i, _ in enumerate(loader):  # a second epoch, left unfinished as well
            if i == 2:
                break
        pids = [int(p) for p in os.listdir(tmp_path)]
        assert len(pids) == 2 and all(_alive(p) for p in pids)  # persistent: the same two workers
        del loader, base
        assert not any(_alive(p) for p in pids)
    finally:
        gc.enable()
