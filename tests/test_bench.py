"""`curriculum bench --quick`: runs every section end to end and writes its JSON and PNG (a smoke test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np


def test_bench_quick_writes_json_and_png(tmp_path):
    env = {**os.environ, "CURRICULUM_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "curriculum.cli", "bench", "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.load(open(tmp_path / "bench.json"))
    assert res["sgemm_gflops"] > 0
    from curriculum._util.blas import faiss_blas_core, faiss_blas_env  # the peers ran with faiss's right kernels
    fixed = faiss_blas_env()
    assert res["faiss_blas_core"] == (fixed["OPENBLAS_CORETYPE"] if fixed else faiss_blas_core())
    data = {row["data"] for row in res["rows"]}
    assert {"clustered low-rank", "isotropic Gaussian"} <= data and any("Fashion-MNIST" in d for d in data)
    methods = {row["method"] for row in res["rows"]}
    assert any(m.startswith("curriculum store.knn") for m in methods) and "faiss Flat (exact)" in methods
    for row in res["rows"]:
        if row["method"].startswith("curriculum store.knn nprobe=8") and row["data"] == "clustered low-rank":
            assert row["recall@10"] > 0.95
        if row["recall@10"] is None:
            assert row["note"].startswith("skipped")  # a missing peer is reported, never dropped
    assert (tmp_path / "recall_vs_time.png").stat().st_size > 10_000
    # the other sections ran in the same command and landed in the same JSON
    sec = res["sections"]
    assert set(sec) == {"scores", "mining", "inbatch", "sampler", "loader", "noise", "curation", "stream",
                        "distributed", "distributed_projection"}
    dist = {r["what"].split(" ")[0]: r for r in sec["distributed"]}
    assert {"add", "search", "knn", "negatives", "kmeans", "curate", "all-to-all"} <= set(dist)
    assert dist["knn"]["world"] == 2 and dist["knn"]["recall"] > 0.9 and dist["knn"]["bytes_sent"] > 0
    assert dist["negatives"]["recall"] > 0.9 and dist["negatives"]["one_process_recall"] > 0.9
    projected = [r for r in sec["distributed_projection"] if not r["route"].startswith("a ring")]
    assert projected and all(r["graph_s (100 Gb/s)"] > 0 for r in projected)
    rates = {r["memory"]: r["items_per_s"] for r in sec["stream"] if "items_per_s" in r}
    assert set(rates) == {1_000, 100_000} and min(rates.values()) > 0
    picked = {r["method"]: r for r in sec["stream"] if "distinct_items" in r}
    assert picked["novelty (default)"]["distinct_items"] > picked["random 25%"]["distinct_items"]
    ours = [r for r in sec["curation"] if r["method"] == "curate()"]
    assert ours and all(r["max_min"] <= 2.5 for r in ours if r["kind"] == "modes")
    assert (tmp_path / "curation.png").stat().st_size > 10_000
    probe = [r for r in sec["noise"] if r["what"].startswith("label_probe self_confidence")]
    assert {r["noise"] for r in probe} == {"symmetric", "pairwise"} and all(r["auc"] > 0.85 for r in probe)
    assert all(0.1 < r["precision"] <= 1 and r["recall"] > 0.5 for r in probe)
    effect = [r for r in sec["noise"] if "test_accuracy" in r]
    assert {r["what"] for r in effect} >= {"train on all noisy labels", "train without flagged: label_probe self_confidence"}
    assert any(r["what"].startswith("class_margin") for r in sec["scores"])
    assert all(r["recall_vs_exact"] > 0.8 and r["ms"] > 0 for r in sec["mining"])
    assert {r["what"].split("(")[1].split(",")[0] for r in sec["mining"] if "negatives table" in r["what"]} == \
        {"descent", "blocked"}  # both table engines, side by side
    for r in sec["inbatch"]:
        if isinstance(r["pml_ms"], str):
            assert r["pml_ms"].startswith("skipped")  # pytorch-metric-learning not installed
        else:
            assert r["same_output"] is True  # same tuples as pytorch-metric-learning's miners
    assert all(r["epoch_indices_per_s"] > 0 for r in sec["sampler"])
    assert {r["what"] for r in sec["loader"]} >= {"plain DataLoader", "wrap (root pacing)"}
    ours = [r for r in res["rows"] if r["method"].startswith("curriculum store.knn nprobe")]
    assert all(r["sgemm_bound_s"] > 0 for r in ours)


def test_knn_section_filters_data_sets_and_reports_intrinsic_dimension(tmp_path, capsys):
    from curriculum.cli.bench import run_bench

    res = run_bench([3000], out=str(tmp_path), quick=True, sections=("knn",), peers=False, only="clustered")
    assert {row["data"] for row in res["rows"]} == {"clustered low-rank"}
    dims = {row["intrinsic_dim"] for row in res["rows"]}
    assert len(dims) == 1 and 5 < dims.pop() < 30  # 16-dimensional clusters in 128-d


def test_noise_helpers():
    import numpy as np

    from curriculum.cli.bench_noise import NOISE_RATE, add_noise, auc

    y = np.arange(20_000) % 7
    sym, flip = add_noise(y, "symmetric")
    assert abs(flip.mean() - NOISE_RATE) < 0.01 and (sym[flip] != y[flip]).all() and (sym[~flip] == y[~flip]).all()
    pair, flip2 = add_noise(y, "pairwise")
    assert (pair[flip2] == (y[flip2] + 1) % 7).all()
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, True, False, True])) == 1.0
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([True, False, True, False])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5


def test_miner_outputs_compare_as_sets_of_tuples():
    import torch

    from curriculum.cli.bench_sections import _same_tuples

    def t(*cols):
        return tuple(torch.tensor(c, dtype=torch.int64) for c in cols)

    assert _same_tuples(t([1, 2, 2], [3, 4, 4], [9]), t([2, 1], [4, 3], [9]))      # order and repeats aside
    assert not _same_tuples(t([1, 2], [3, 4], [9, 9]), t([1, 2], [4, 3], [9, 9]))  # other tuples
    assert _same_tuples(t([1], [3], [5], [6]), t([1], [3], [5], [6]))             # pairs (a1, p, a2, n)
    assert not _same_tuples(t([1], [3], [], []), t([], [], [1], [3]))             # a positive is not a negative
    assert _same_tuples(t([], [], []), t([], [], []))


def test_scores_section_measures_every_n_on_the_same_modes():
    from curriculum.cli.bench_sections import FIXED_MODES, fixed_mode_pool, scores_section

    rows = scores_section([1_500, 3_000], dim=16, real=False, progress=False)
    assert sorted({r["N"] for r in rows}) == [1_500, 3_000]
    assert {r["data"] for r in rows} == {f"clustered low-rank, {FIXED_MODES} modes, 16-d"}
    assert [r["what"].split("(")[0] for r in rows if r["N"] == 1_500] == \
        [r["what"].split("(")[0] for r in rows if r["N"] == 3_000]
    x, y, _ = fixed_mode_pool(3_000, 16, real=False)
    assert x.shape == (3_000, 16) and set(np.unique(y)) == set(range(10))


def test_curation_scaling_reports_every_n_balanced():
    from curriculum.cli.bench_curation import curation_scaling

    rows = curation_scaling([4_000, 8_000], modes=8, dim=16)
    assert [r["n"] for r in rows] == [4_000, 8_000]
    assert all(r["max_min"] <= 2.5 < r["random_max_min"] and r["seconds"] > 0 for r in rows)
