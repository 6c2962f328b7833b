"""The console command: --help lists the subcommands; the scoring job runs on real data."""

from __future__ import annotations

import json
import subprocess
import sys

from curriculum.cli import main


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "curriculum.cli", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("demo", "report", "score", "info"):
        assert cmd in out.stdout


def test_score_report_on_real_data(tmp_path, capsys):
    from curriculum.cli.demo import scoring_report

    rep = scoring_report(limit=5000, out=str(tmp_path), dim=32)
    assert rep["data"].startswith("Fashion-MNIST")
    auc = {r["score"]: r["auc_flipped"] for r in rep["scores"]}
    assert auc["label_disagreement(k=10)"] > 0.85
    # the curriculum draws fewer flipped labels early than late
    st = rep["stages"]
    assert st[0]["flipped_share"] < st[-1]["flipped_share"]
    assert st[0]["mean_rank"] < st[-1]["mean_rank"]
    assert json.load(open(tmp_path / "scores.json"))["n"] == 5000


def test_info_runs(capsys):
    assert main(["info"]) == 0
    assert "faiss" in capsys.readouterr().out
