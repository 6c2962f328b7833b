"""Smoke tests: every example runs as is (short settings) and says what it promises."""

from __future__ import annotations

import ast
import difflib
import os
import sys

import _gloo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EX = os.path.join(ROOT, "examples")


def code_lines(path):
    """Source lines without the module docstring."""
    src = open(path).read()
    tree = ast.parse(src)
    doc_end = tree.body[0].end_lineno if isinstance(tree.body[0], ast.Expr) else 0
    return src.splitlines()[doc_end:]


def run(script, *args):
    env = {**os.environ, "CURRICULUM_PROGRESS": "0"}
    out = _gloo.run([sys.executable, os.path.join(EX, script), *args], env=env, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_wrap_example_is_three_added_lines():
    a = code_lines(os.path.join(EX, "plain_training.py"))
    b = code_lines(os.path.join(EX, "wrap_existing_loop.py"))
    diff = [d for d in difflib.ndiff(a, b) if d[:2] in ("+ ", "- ")]
    assert len(diff) == 3 and all(d.startswith("+ ") for d in diff), diff


def test_plain_and_wrapped_examples_run():
    assert "test accuracy after 20 steps" in run("plain_training.py", "--steps", "20")
    assert "test accuracy after 20 steps" in run("wrap_existing_loop.py", "--steps", "20")


def test_metric_learning_example_runs():
    out = run("metric_learning.py", "--steps", "8", "--train", "2000")
    assert "in-batch" in out and "global" in out and "recall@1" in out


def test_simclr_example_runs():
    out = run("simclr_store_negatives.py", "--steps", "6", "--train", "2000")
    assert "in-batch" in out and "store" in out and "kNN accuracy" in out


def test_curation_example_runs(tmp_path):
    out = run("curate_long_tailed.py", "--select", "800", "--steps", "20", "--embed", "pca", "--out", str(tmp_path))
    assert "curated" in out and "random" in out and "tail share" in out
    assert (tmp_path / "curate_per_class.png").exists()


def test_sampler_api_example_resumes_exactly():
    out = run("sampler_api.py", "--steps", "40")
    assert "resumed run identical to uninterrupted: True" in out


def test_streaming_example_beats_random_coverage():
    out = run("streaming_selection.py", "--items", "6000")
    import re
    for novel, rand in re.findall(r"covering (\d+) distinct objects \(a random \d+ cover (\d+)\)", out):
        assert int(novel) > int(rand)


def test_distributed_example_with_two_gloo_processes():
    out = run("distributed_torchrun.py", "--spawn", "2")
    assert "2 ranks" in out and "recorders identical on every rank: True" in out


def test_sharded_store_example_with_two_gloo_processes():
    out = run("sharded_store_torchrun.py", "--spawn", "2", "--rows", "3000", "--steps", "10")
    assert "2 ranks" in out and "sharded scores equal one process's on 100.0% of rows" in out  # exact graphs
    assert "curated 300 rows" in out
