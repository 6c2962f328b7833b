"""The console command: --help lists the subcommands; the scoring job runs on real data."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

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
    from curriculum._util.blas import faiss_blas_core

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    core = faiss_blas_core()
    assert "faiss BLAS: " + (f"OpenBLAS kernels {core}" if core else "not a bundled OpenBLAS") in out


def test_faiss_blas_env_names_this_cpus_kernels_only_where_faiss_fell_back(monkeypatch):
    import torch

    from curriculum._util import blas

    monkeypatch.setattr(blas, "faiss_blas_core", lambda: "Prescott")
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    for capability, want in (("AVX512", "SkylakeX"), ("AVX2", "Haswell"), ("DEFAULT", None)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        env = blas.faiss_blas_env()
        assert (env and env["OPENBLAS_CORETYPE"]) == want and (env is None or env["PATH"] == os.environ["PATH"])
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")  # the user's choice stands
    assert blas.faiss_blas_env() is None
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    monkeypatch.setattr(blas, "faiss_blas_core", lambda: "SapphireRapids")  # kernels of its own: nothing to fix
    assert blas.faiss_blas_env() is None


def test_version(capsys):
    import curriculum

    with pytest.raises(SystemExit) as ex:
        main(["--version"])
    assert ex.value.code == 0 and capsys.readouterr().out.strip() == f"curriculum {curriculum.__version__}"


@pytest.mark.parametrize("argv, says", [
    (["report", "/no/such/run"], "no results.json"),
    (["bench", "--sections", "foo"], "sections: expected some of knn, scores"),
    (["bench", "--sizes", "5"], "sizes: expected N values of at least 100"),
    (["demo", "--data", "/no/such/folder", "--quick"], "'/no/such/folder' is not a folder"),
    (["score", "--data", "/no/such/folder"], "'/no/such/folder' is not a folder"),
])
def test_user_errors_are_one_line_without_traceback(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and err.count("\n") == 1


def test_every_flag_has_help():
    from curriculum.cli.main import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in subs.items():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"curriculum {name} {action.option_strings[0]} has no help"


def test_text_set_says_when_only_short_descriptions_exist(tmp_path, monkeypatch):
    from curriculum.cli import real_embeddings as R

    def fake_run(cmd):
        blocks = [f"Package: p{i}\nSection: {'libs' if i % 3 else 'net'}\nDescription: tool number {i}"
                  for i in range(1200)]
        return "\n\n".join(blocks)

    monkeypatch.setattr(R, "_run", fake_run)
    monkeypatch.setattr(R, "APT_LISTS", tmp_path)  # no Translation-en lists there
    with pytest.warns(UserWarning, match="short descriptions only.*Acquire::Languages=en"):
        texts, labels, sections = R.debian_descriptions()
    assert len(texts) == 1200 and sections == ["libs", "net"] and np.bincount(labels).tolist() == [800, 400]
