"""Golden draws: a fixed (seed, scores, pacing) must yield this committed sequence of indices. A
change to how draws are keyed fails here loudly (and must bump the sampler's STATE_VERSION)."""

import numpy as np
import pytest
import torch

from curriculum import pacing as P
from curriculum.sampling import STATE_VERSION, STRATEGIES, CurriculumSampler

GOLDEN = {
    "threshold": [4, 4, 25, 49, 35, 8, 38, 47, 27, 49, 27, 28, 40, 10, 46, 15, 9, 17, 1, 33, 46, 36, 47, 47],
    "anti": [31, 31, 18, 2, 44, 11, 13, 7, 5, 2, 5, 41, 3, 30, 42, 45, 39, 22, 29, 20, 42, 23, 7, 7],
    "soft": [36, 49, 25, 42, 8, 27, 27, 13, 15, 8, 35, 49, 4, 25, 4, 15, 8, 44, 32, 14, 36, 41, 38, 35],
    "rank": [30, 12, 9, 27, 7, 31, 5, 27, 48, 44, 20, 45, 23, 0, 11, 30, 23, 49, 20, 19, 23, 35, 18, 41],
    "importance": [3, 0, 13, 5, 12, 32, 49, 5, 24, 37, 30, 39, 40, 30, 10, 6, 1, 5, 0, 18, 14, 22, 39, 16],
}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_draws_match_the_committed_sequence(strategy):
    scores = np.random.default_rng(42).random(50)
    s = CurriculumSampler(scores, P.Root(0.2, steps=20), strategy=strategy, batch_size=4, seed=7)
    assert s.epoch_indices(0)[:24].tolist() == GOLDEN[strategy]
    assert [next(iter(s)) for _ in range(1)] == GOLDEN[strategy][:1]


def test_state_carries_format_and_version_and_reads_version_1():
    s = CurriculumSampler(np.linspace(0, 1, 10), batch_size=2, seed=1)
    st = s.state_dict()
    assert st["format"] == "curriculum.CurriculumSampler" and st["version"] == STATE_VERSION == 2
    v1 = {k: v for k, v in st.items() if k not in ("format", "version", "pending")}
    v1["scores"], v1["ids"] = st["scores"].numpy(), st["ids"].numpy()  # 0.1.0 kept numpy arrays
    r = CurriculumSampler(np.linspace(0, 1, 10), batch_size=2, seed=1)
    r.load_state_dict(v1)
    assert r.epoch_indices().tolist() == s.epoch_indices().tolist()
    with pytest.raises(ValueError, match="version 3"):
        r.load_state_dict({**st, "version": 3})
    assert isinstance(st["scores"], torch.Tensor)
