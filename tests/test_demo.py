"""`curriculum demo --quick` end to end: JSON and PNG files hold the methods and steps promised."""

from __future__ import annotations

import json
import os
import subprocess
import sys

METHODS = {"uniform", "curriculum", "anti-curriculum", "online hard", "cleaning"}


def test_demo_quick_end_to_end_and_report(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "CURRICULUM_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "curriculum.cli", "demo", "--quick", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Fashion-MNIST" in r.stdout and "vs uniform" in r.stdout
    res = json.load(open(out / "results.json"))
    assert set(res["variants"]) == {"clean", "noisy-lt"}
    for v in res["variants"].values():
        assert set(v["methods"]) == METHODS
        for runs in v["methods"].values():
            run = runs[0]
            assert run["checkpoints"][-1] == res["steps"] == 120
            assert len(run["test_accuracy"]) == len(run["checkpoints"])
            assert all(0.0 <= a <= 1.0 for a in run["test_accuracy"])
            assert len(run["drawn_rank"]) == res["steps"]
        assert len(v["competence"]) == res["steps"]
    lt = res["variants"]["noisy-lt"]
    assert lt["class_counts"][0] > 10 * lt["class_counts"][9]  # long-tailed (noisy counts: flips fill the tail)
    assert lt["auc_flipped"] > 0.7
    assert lt["cleaning_flagged"] > 0 and lt["cleaning_precision"] > 0.6  # the left-out rows are mostly flips
    assert res["variants"]["clean"]["cleaning_flagged"] == 0
    dyn = lt["methods"]["online hard"][0]["dynamics_auc_flipped"]
    assert dyn["loss_ema"] > 0.6 and dyn["aum"] > 0.6  # dynamics flag flipped labels too
    # the curriculum draws easier samples than the anti-curriculum early on
    early = slice(0, 30)
    import numpy as np
    cur = np.mean(lt["methods"]["curriculum"][0]["drawn_rank"][early])
    anti = np.mean(lt["methods"]["anti-curriculum"][0]["drawn_rank"][early])
    assert cur < 0.4 < 0.6 < anti
    for png in ("accuracy.png", "pacing.png", "difficulty.png"):
        assert (out / png).stat().st_size > 10_000
    os.remove(out / "accuracy.png")
    r = subprocess.run([sys.executable, "-m", "curriculum.cli", "report", str(out)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "accuracy.png").exists()


def test_demo_rejects_an_unknown_device_before_any_work():
    import pytest

    from curriculum.cli.demo import run_demo

    with pytest.raises(ValueError, match="device: expected an available torch device"):
        run_demo(device="tpu7")
