"""`curriculum inspect` and `curriculum.inspect`: every input kind, arrays and report agree, bad
inputs fail clearly with nothing written, and the page renders in a real headless browser."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import curriculum as cl
from curriculum.cli.inspect_cmd import run_inspect, summary_numbers
from curriculum.cli.main import main


def fixture(n=400, dim=12, seed=0):
    """Four separated classes, 10% flipped labels, 5 planted duplicates, 2 far outliers."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = (np.eye(4, dim)[y] * 8 + rng.standard_normal((n, dim))).astype(np.float32)
    x[10:15] = x[0] + 1e-4  # duplicates of row 0
    y[10:15] = y[0]
    x[20:22] = 40.0 + rng.standard_normal((2, dim))
    noisy = y.copy()
    flip = rng.choice(np.arange(30, n), 40, replace=False)
    noisy[flip] = (noisy[flip] + 1) % 4
    return x, noisy, flip


def test_python_entry_point_scores_agree_with_the_planted_facts():
    x, y, flip = fixture()
    r = cl.inspect(x, labels=y, metric="l2")
    label_rows = [row for row, why in r.flagged.items() if "label" in why]
    assert len(np.intersect1d(label_rows, flip)) >= 0.8 * len(flip)  # flipped labels found ...
    assert np.isin(label_rows, flip).mean() >= 0.8  # ... and mostly only those
    assert any(set(range(10, 15)) | {0} <= set(g.tolist()) for g in r.duplicate_groups())
    assert {20, 21} <= {row for row, why in r.flagged.items() if "outlier" in why}
    assert r.neighbours.shape == (len(x), 10) and (r.neighbours != np.arange(len(x))[:, None]).all()
    assert r.scores["curated"].sum() == len(x) // 10


@pytest.mark.parametrize("kind", ["npy", "npz", "pt", "shards"])
def test_command_on_each_input_kind_writes_arrays_csv_and_report(tmp_path, kind):
    x, y, _ = fixture()
    names = np.array(["coat", "dress", "shirt", "bag"])[y]
    if kind == "npy":
        emb = tmp_path / "x.npy"
        np.save(emb, x)
        labels = tmp_path / "y.npy"
        np.save(labels, y)
    elif kind == "npz":
        emb = tmp_path / "x.npz"
        np.savez(emb, embeddings=x)
        labels = tmp_path / "y.txt"
        labels.write_text("\n".join(names))
    elif kind == "pt":
        emb = tmp_path / "x.pt"
        torch.save({"x": torch.from_numpy(x)}, emb)
        labels = tmp_path / "y.csv"
        labels.write_text("id,label\n" + "\n".join(f"{i},{v}" for i, v in enumerate(names)))
    else:
        emb = tmp_path / "shards"
        emb.mkdir()
        for i, part in enumerate(np.array_split(x, 3)):
            np.save(emb / f"part{i}.npy", part)
        labels = tmp_path / "y.npy"
        np.save(labels, y)
    items = tmp_path / "items.txt"
    items.write_text("\n".join(f"caption <{i}> & more" for i in range(len(x))))
    out = tmp_path / "out"
    assert main([ "inspect", str(emb), "--labels", str(labels), "--items", str(items), "--out", str(out), "--metric", "l2"]) == 0
    scores = np.load(out / "scores.npz")
    assert {"label_noise", "difficulty", "outlier", "duplicate_group", "cluster", "curated", "neighbour_label"} <= set(scores)
    assert all(len(scores[k]) == len(x) for k in scores)
    rows = list(csv.DictReader(open(out / "flagged.csv")))
    page = (out / "report.html").read_text()
    for section in ("summary", "label-issues", "duplicates", "hardest", "easiest", "map", "clusters", "curriculum"):
        assert f"id='{section}'" in page
    shown = dict(re.findall(r"data-key='([^']+)'>(\d+)<", page))
    assert int(shown["rows"]) == len(x)
    assert int(shown["label issues"]) == sum("label" in r["reasons"] for r in rows)
    assert int(shown["duplicate groups"]) == len(np.unique(scores["duplicate_group"][scores["duplicate_group"] >= 0]))
    assert int(shown["curated subset"]) == scores["curated"].sum()
    assert "caption &lt;" in page and "<script" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    if kind in ("npz", "pt"):
        assert {r["label"] for r in rows if r["label"]} <= {"coat", "dress", "shirt", "bag"}


def test_image_items_become_inline_thumbnails(tmp_path):
    x, y, _ = fixture(n=200)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "img.npy", np.random.default_rng(0).integers(0, 255, (200, 8, 8), dtype=np.uint8))
    res = run_inspect(str(tmp_path / "x.npy"), str(tmp_path / "out"), items=str(tmp_path / "img.npy"))
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 20 and "label-issues" not in page  # no labels: no such section
    assert summary_numbers(res)["rows"] == 200


def test_image_paths_become_thumbnails_and_other_paths_stay_text(tmp_path):
    import matplotlib.image

    x, y, _ = fixture(n=200)
    np.save(tmp_path / "x.npy", x)
    paths = []
    for i in range(200):
        p = tmp_path / f"im{i}.png"
        if i % 2 == 0:
            matplotlib.image.imsave(p, np.random.default_rng(i).random((6, 6)))
        paths.append(str(p) if i % 2 == 0 else f"missing/im{i}.png")
    (tmp_path / "items.txt").write_text("\n".join(paths))
    run_inspect(str(tmp_path / "x.npy"), str(tmp_path / "out"), items=str(tmp_path / "items.txt"))
    page = (tmp_path / "out" / "report.html").read_text()
    assert "data:image/png;base64," in page and "missing/im" in page


@pytest.mark.parametrize("case,err", [
    ("short_labels", "labels: expected 400 labels"),
    ("nan", "embeddings: expected finite values"),
    ("strings", "embeddings: expected a 2-D numeric array"),
    ("missing", "embeddings: no file"),
    ("short_items", "items: expected 400 items"),
])
def test_bad_inputs_fail_clearly_and_write_nothing(tmp_path, capsys, case, err):
    x, y, _ = fixture()
    emb, labels, items = tmp_path / "x.npy", tmp_path / "y.npy", None
    if case == "nan":
        x[5, 3] = np.nan
    np.save(emb, np.array(["a", "b"]) if case == "strings" else x)
    np.save(labels, y[:-1] if case == "short_labels" else y)
    if case == "missing":
        emb = tmp_path / "nope.npy"
    if case == "short_items":
        items = tmp_path / "items.txt"
        items.write_text("one\ntwo")
    args = ["inspect", str(emb), "--labels", str(labels), "--out", str(tmp_path / "out")]
    assert main(args + (["--items", str(items)] if items else [])) == 2
    assert err in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".inspect-*"))


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium_without_errors(tmp_path):
    x, y, _ = fixture()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    run_inspect(str(tmp_path / "x.npy"), str(tmp_path / "out"), labels=str(tmp_path / "y.npy"))
    page = f"file://{tmp_path / 'out' / 'report.html'}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-extensions", "--no-first-run",
             "--enable-logging=stderr", "--v=0"]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "id=\"label-issues\"" in dom.stdout and "<svg" in dom.stdout
    assert "CONSOLE" not in dom.stderr and "Uncaught" not in dom.stderr
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", *flags, "--window-size=1100,1500", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120)
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.shape[:2] == (1500, 1100) and img[..., :3].std() > 0.05  # drawn, not blank
