"""The curriculum inside the frameworks people train with, run for real (tests/frameworks/run_*.py).

For plain torch (torchrun), Lightning (DDP) and the Hugging Face Trainer (accelerate), each in one
process and in two (gloo, under torchrun):
- the easy-to-hard shift survives: the mean difficulty rank of the batches rises over the first
  epoch on every rank;
- the ranks' batches are disjoint shards of one global curriculum draw: put back together in the
  framework's layout (plain/Lightning: the sampler interleaves positions; Trainer: accelerate deals
  out whole batches), they are exactly the draw of a one-process sampler over the global batch;
- stopping at a step and resuming from the framework's own checkpoint (``torch.save`` of the
  loader state, Lightning's ``ckpt_path``, the Trainer's ``resume_from_checkpoint``) gives the
  uninterrupted run's batches, and the recorder's statistics match.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import socket
import sys

import numpy as np
import pytest

import curriculum as cl

import _gloo

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "frameworks")
sys.path.insert(0, HERE)
from _fixture import BATCH, N, SCORES, pacing  # noqa: E402

RANKS = np.argsort(np.argsort(SCORES)) / N
EPOCHS = 2
STOP = 20  # mid-epoch 0 in one process (32 batches an epoch), mid-epoch 1 in two (16 per rank)

FRAMEWORKS = {
    "plain": ("run_plain.py", "torch", "index"),
    "lightning": ("run_lightning.py", "lightning", "index"),
    "hf": ("run_hf.py", "transformers", "batch"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(fw: str, out: str, tag: str, procs: int, *args: str) -> list[dict]:
    script = os.path.join(HERE, FRAMEWORKS[fw][0])
    cmd = [sys.executable, script, out, tag, "--epochs", str(EPOCHS), *args]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
               "--master_port", str(_free_port()), *cmd[1:]]
    env = {**os.environ, "CURRICULUM_PROGRESS": "0", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = _gloo.run(cmd, env=env, timeout=240, cwd=out)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return [json.load(open(os.path.join(out, f"{tag}-rank{r}.json"))) for r in range(procs)]


def _checkpoint(fw: str, out: str, tag: str) -> str:
    if fw == "plain":
        return os.path.join(out, f"{tag}.pt")
    if fw == "lightning":
        return glob.glob(os.path.join(out, f"{tag}-ckpt", "*.ckpt"))[0]
    return os.path.join(out, f"{tag}-ckpt", f"checkpoint-{STOP}")


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def runs(request, tmp_path_factory):
    """Per framework and process count: the uninterrupted run, and a run stopped at STOP then resumed."""
    fw = request.param
    if importlib.util.find_spec(FRAMEWORKS[fw][1]) is None:
        pytest.skip(f"{FRAMEWORKS[fw][1]} is not installed (pip install 'curriculum[integrations]')")
    out = str(tmp_path_factory.mktemp(fw))
    res = {"fw": fw}
    for procs in (1, 2):
        full = _run(fw, out, f"full{procs}", procs)
        first = _run(fw, out, f"stop{procs}", procs, "--max-steps", str(STOP))
        rest = _run(fw, out, f"resume{procs}", procs, "--resume", _checkpoint(fw, out, f"stop{procs}"))
        res[procs] = (full, first, rest)
    return res


def _quarters(batches: list[list[int]]) -> list[float]:
    parts = np.array_split(np.arange(len(batches)), 4)
    return [float(RANKS[np.concatenate([batches[i] for i in p])].mean()) for p in parts]


@pytest.mark.parametrize("procs", [1, 2])
def test_the_shift_from_easy_to_hard_survives_on_every_rank(runs, procs):
    full = runs[procs][0]
    per_epoch = N // BATCH // procs
    for rank in full:
        assert len(rank["batches"]) == EPOCHS * per_epoch
        q = _quarters(rank["batches"][:per_epoch])
        assert q[0] < q[1] < q[3] and q[3] - q[0] > 0.08, q


def test_ranks_draw_disjoint_shards_of_one_global_curriculum(runs):
    full = runs[2][0]
    layout = FRAMEWORKS[runs["fw"]][2]
    per_rank = N // BATCH // 2
    for e in range(EPOCHS):
        g = cl.CurriculumSampler(SCORES, pacing(), batch_size=2 * BATCH, seed=0, rank=0, world_size=1).epoch_indices(e)
        for r, rank in enumerate(full):
            got = np.concatenate(rank["batches"][e * per_rank:(e + 1) * per_rank])
            if layout == "index":
                want = g[r::2]
            else:  # accelerate deals out whole batches: batch b goes to rank b % 2
                want = np.concatenate([g[(2 * k + r) * BATCH:(2 * k + r + 1) * BATCH] for k in range(per_rank)])
            np.testing.assert_array_equal(got, want)
    assert full[0]["loss_ema"] == full[1]["loss_ema"]  # feedback gathered: every rank's recorder agrees


@pytest.mark.parametrize("procs", [1, 2])
def test_resume_from_the_frameworks_checkpoint_reproduces_the_run(runs, procs):
    full, first, rest = runs[procs]
    for r in range(procs):
        assert len(first[r]["batches"]) == STOP
        assert first[r]["batches"] + rest[r]["batches"] == full[r]["batches"]
        np.testing.assert_allclose(rest[r]["loss_ema"], full[r]["loss_ema"], rtol=1e-5, atol=1e-6)
