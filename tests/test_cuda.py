"""The CUDA paths: what a GPU training loop hands the library (CUDA tensors, bf16 logits, a model
on the GPU) must give the same results as the CPU path. Skipped where no GPU is present; run on
the lent GPU machine with ``pytest tests/test_cuda.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import curriculum as cl
from curriculum import mining as M

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU = torch.device("cuda")


def _batch(b: int = 384, d: int = 32, classes: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # float64: no TF32 and no reduction-order ties, so CPU and GPU outputs must agree exactly
    return torch.randn(b, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (b,), generator=g)


def _as_set(out: tuple[torch.Tensor, ...]) -> set[tuple[int, ...]]:
    return set(zip(*[t.tolist() for t in out]))


@pytest.mark.parametrize("miner", [
    M.BatchHardMiner("cosine"), M.BatchHardMiner("l2"), M.SemiHardMiner(0.3, "cosine"),
    M.SemiHardMiner(0.3, "l2", all_negatives=True), M.MarginMiner(0.1, "cosine"), M.MultiSimilarityMiner(0.1)])
def test_inbatch_miners_on_cuda_equal_cpu(miner: M.BaseMiner) -> None:
    emb, lab = _batch()
    cpu = miner(emb, lab)
    gpu = miner(emb.to(GPU), lab.to(GPU))
    assert all(t.device.type == "cuda" for t in gpu)
    assert len(cpu) == len(gpu)
    if len(cpu) == 4:  # pairs: compare positive and negative pairs separately
        assert _as_set(cpu[:2]) == _as_set(gpu[:2]) and _as_set(cpu[2:]) == _as_set(gpu[2:])
    else:
        assert _as_set(cpu) == _as_set(gpu)
        assert len(_as_set(cpu)) > 0


def test_inbatch_miner_empty_result_stays_on_device() -> None:
    emb = torch.randn(4, 8, device=GPU)
    out = M.SemiHardMiner(0.2)(emb, torch.arange(4, device=GPU))  # no positive pair at all
    assert all(t.device.type == "cuda" and t.numel() == 0 for t in out)


def test_cross_batch_memory_on_cuda_equals_cpu() -> None:
    emb, lab = _batch(600, 16)
    mems = {dev: M.CrossBatchMemory(512, 16, "cosine", device=dev) for dev in ("cpu", "cuda")}
    for dev, mem in mems.items():
        for s in range(0, 600, 100):
            mem.add(emb[s:s + 100].to(dev), lab[s:s + 100].to(dev), ids=torch.arange(s, s + 100).to(dev))
    assert mems["cuda"].emb.device.type == "cuda"
    q, ql = emb[:50], lab[:50]
    s_cpu, d_cpu = mems["cpu"].negatives(q, ql, k=5)
    s_gpu, d_gpu = mems["cuda"].negatives(q.to(GPU), ql.to(GPU), k=5)
    assert s_gpu.device.type == "cuda"
    assert torch.equal(s_cpu, s_gpu.cpu())
    torch.testing.assert_close(d_cpu, d_gpu.cpu(), rtol=1e-5, atol=1e-6)


def test_recorder_takes_cuda_and_bf16_logits() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 10, generator=g).to(torch.bfloat16)
    labels = torch.randint(0, 10, (64,), generator=g)
    idx = torch.randperm(200, generator=g)[:64]
    a, b = cl.Recorder(200, 10), cl.Recorder(200, 10)
    a.update(idx, logits=logits.float(), labels=labels)
    b.update(idx.to(GPU), logits=logits.to(GPU), labels=labels.to(GPU))
    for name in ("loss_ema", "aum", "el2n"):
        np.testing.assert_allclose(a.difficulty(name).scores, b.difficulty(name).scores, rtol=1e-6)


def test_store_and_wrap_feedback_with_cuda_tensors() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(256, 8, generator=g), torch.randint(0, 4, (256,), generator=g)
    model = torch.nn.Linear(8, 4).to(GPU)
    store = cl.EmbeddingStore.from_model(model, TensorDataset(x, y), batch_size=64, device="cuda", progress=False)
    np.testing.assert_allclose(store.vectors(np.arange(256)),
                               torch.nn.functional.normalize(model(x.to(GPU)), dim=1).detach().cpu().numpy(),
                               rtol=1e-4, atol=1e-5)
    inferred = cl.EmbeddingStore.from_model(model, TensorDataset(x, y), batch_size=64, progress=False)
    np.testing.assert_allclose(inferred.vectors(np.arange(256)), store.vectors(np.arange(256)), rtol=1e-5, atol=1e-6)
    store.update(np.arange(4), model(x[:4].to(GPU)).to(torch.bfloat16), step=1)
    rec = cl.Recorder(256, 4, labels=y.numpy())
    loader = cl.wrap(DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True), recorder=rec, store=store,
                     pacing=cl.pacing.Constant(1.0), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for xb, yb in loader:
        xb, yb = xb.to(GPU, non_blocking=True), yb.to(GPU, non_blocking=True)
        logits = model(xb)
        loss = torch.nn.functional.cross_entropy(logits, yb, reduction="none")
        loader.feedback(loss=loss.detach(), logits=logits.detach().to(torch.bfloat16), embeddings=logits.detach())
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    assert rec.seen.all()
    hard = cl.HardNegativeMiner(store, k=3).negatives(embeddings=model(x[:8].to(GPU)).detach(), labels=y[:8].to(GPU))
    assert (hard.ids >= 0).all()
    assert (store.labels[store.rows_of(hard.ids.ravel())].reshape(8, 3) != y[:8].numpy()[:, None]).all()


def test_demo_quick_trains_on_cuda(tmp_path) -> None:
    from curriculum.cli.demo import run_demo

    res = run_demo(out=str(tmp_path / "run"), quick=True, device="cuda")
    assert res["device"].startswith("cuda")
    for name, v in res["variants"].items():  # noisy long-tailed: the tail classes stay near 0
        for runs in v["methods"].values():
            assert runs[0]["test_accuracy"][-1] > (0.7 if name == "clean" else 0.2)


def test_stream_memory_follows_cuda_embeddings() -> None:
    """``embed`` returning CUDA tensors: the memory lives on the GPU and the choice equals the
    exact CPU memory's."""
    from curriculum.selection.stream_device import TorchWindowStore

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32)).astype(np.float32) * 2
    x = centres[rng.integers(0, 40, 8000)] + rng.standard_normal((8000, 32), np.float32)
    emb = x[np.repeat(rng.integers(0, 8000, 3000), 3)[:8000]]
    runs = {}
    for dev in ("cpu", "cuda"):
        sel = cl.StreamSelector(range(8000), embed=lambda idx: torch.from_numpy(emb[np.asarray(idx)]).to(dev),
                                window=1000, keep=0.25, index="exact", store_size=1500)
        runs[dev] = np.fromiter(sel, np.int64)
        assert isinstance(sel.store, TorchWindowStore) == (dev == "cuda")
    assert np.array_equal(runs["cpu"], runs["cuda"])
    assert runs["cuda"].size == 2000


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_knn_graph_on_the_gpu_equals_the_cpu_graph(metric: str) -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(6000, 48)) @ rng.normal(size=(48, 48))).astype(np.float32)
    cpu_d, cpu_i = cl.neighbors.device_knn(x, 10, metric, device="cpu")
    gpu_d, gpu_i = cl.neighbors.device_knn(torch.from_numpy(x).to(GPU), 10, metric, device=GPU)
    np.testing.assert_allclose(gpu_d, cpu_d, rtol=1e-4, atol=1e-4)
    assert (gpu_i == cpu_i).mean() > 0.999  # ties and last-bit differences only
    store = cl.EmbeddingStore(48, metric=metric)
    store.add(x)
    d, ids = store.knn(10, device="cuda")
    assert store.last_knn_report["device"].startswith("cuda")
    np.testing.assert_allclose(d, cpu_d, rtol=1e-4, atol=1e-4)


def _sharded_gpu_worker(rank: int, world: int, out: str, initfile: str) -> None:
    from curriculum.store import ShardedStore

    torch.distributed.init_process_group("gloo", init_method=f"file://{initfile}", rank=rank, world_size=world)
    x = np.random.default_rng(1).normal(size=(8000, 24)).astype(np.float32)
    s = ShardedStore(24, metric="l2")
    s.add(x[rank::world], np.arange(8000)[rank::world])
    exact = s.knn(10, method="exact", device="cuda")
    region = s.knn(10, method="region", device="cuda")
    np.savez(f"{out}.{rank}.npz", ids=s.ids, d=exact[0], i=exact[1], region_i=region[1],
             engine=np.array([s.last_knn_report["batch_engine"]]))
    torch.distributed.destroy_process_group()


def test_sharded_graph_on_the_gpu_equals_brute_force(tmp_path) -> None:
    """Two gloo ranks sharing the GPU: the exact ring scored on it equals brute force; the region
    route's batches run exact there."""
    import _gloo

    prefix = _gloo.spawn(_sharded_gpu_worker, 2, tmp_path)
    x = np.random.default_rng(1).normal(size=(8000, 24)).astype(np.float32)
    true_d, true_i = cl.neighbors.brute_knn(x, x, 11, "l2")
    for r in range(2):
        got = dict(np.load(f"{prefix}.{r}.npz"))
        assert (got["i"] == true_i[got["ids"], 1:]).mean() > 0.999
        np.testing.assert_allclose(got["d"], true_d[got["ids"], 1:], rtol=1e-4, atol=1e-4)
        assert str(got["engine"][0]) == "exact"
        assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(got["region_i"], true_i[got["ids"], 1:])]) > 8
