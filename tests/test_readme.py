"""Every ```python block of the README runs, so the README cannot drift from the code.

A block's free names (``embed``, ``train_set``, ``model``, ``store``...) are filled from a small
fixture: 600 8x8 images in 10 classes, a conv embedder, a classifier with a ``backbone``, a store of
their embeddings, a Hugging Face dataset and model for the Trainer block. Blocks run in a fresh
namespace each, in a temporary working directory; a block that names a framework that is not
installed is skipped.
"""

from __future__ import annotations

import os
import re
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import curriculum as cl

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
BLOCKS = re.findall(r"```python\n(.*?)```", open(README).read(), flags=re.S)


class _Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                            torch.nn.Linear(4 * 6 * 6, 16))
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class _HFModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _Model()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


def _namespace(block: str) -> dict:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 60)
    x = (rng.normal(size=(600, 1, 8, 8)) + y[:, None, None, None] * 0.3).astype(np.float32)
    train_set = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    model = _Model()
    store = cl.EmbeddingStore(16, metric="cosine")
    with torch.no_grad():
        store.add(model.backbone(torch.from_numpy(x)).numpy(), labels=y)
    ns = {
        "torch": torch, "F": F, "np": np, "DataLoader": DataLoader, "cl": cl,
        "train_set": train_set, "train_labels": y, "embed": model.backbone, "model": model,
        "loader": DataLoader(train_set, batch_size=32, shuffle=True), "epochs": 1,
        "scores": rng.random(600), "store": store, "batch_ids": np.arange(8),
        "emb": torch.randn(32, 16), "labels": torch.randint(0, 4, (32,)),
        "indices": torch.arange(32), "logits": torch.randn(32, 10),
        "source": [rng.normal(size=16).astype(np.float32) for _ in range(300)],
        "embed_fn": lambda items: np.stack(items),
    }
    if "CurriculumTrainer" in block:
        datasets = pytest.importorskip("datasets")
        pytest.importorskip("transformers")
        ns["train_ds"] = datasets.Dataset.from_dict({"x": x, "labels": y}).with_format("torch")
        ns["hf_model"] = _HFModel()
    if "lightning" in block:
        pytest.importorskip("lightning")
    return ns


@pytest.fixture
def single_process_group(monkeypatch):
    """A one-process gloo group for blocks that call init_process_group (as torchrun would set up)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def test_the_readme_has_code_blocks():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i, tmp_path, monkeypatch, single_process_group):
    block = BLOCKS[i]
    ns = _namespace(block)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CURRICULUM_PROGRESS", "0")
    exec(compile(block, f"README.md block {i}", "exec"), ns)
