"""``curriculum inspect EMBEDDINGS [--labels L] [--items I] --out DIR``: scores of your own
embeddings as arrays (``scores.npz``), a CSV of flagged samples and a self-contained ``report.html``
(inline CSS and SVG, images as data URIs: no server, no network, no script).

Inputs: embeddings as ``.npy`` / ``.npz`` / ``.pt`` or a folder of such shards (concatenated in
name order); labels as ``.npy`` / ``.txt`` (one per line) / ``.csv`` (a ``label`` column, else the
first); items to show as ``.txt`` / ``.csv`` (captions, or paths - image files become thumbnails)
or ``.npy`` image arrays ``(n, H, W[, C])`` (thumbnails). Everything is written to a temporary folder first and moved
into place at the end, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..difficulty import Difficulty
from ..inspection import Inspection, inspect

SHOW = 30          # rows per table in the report
MAP_POINTS = 3000  # points drawn in the 2-D maps
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_embeddings(path: str | os.PathLike) -> np.ndarray:
    """Rows from ``.npy`` / ``.npz`` (key ``embeddings``, ``x`` or the only array) / ``.pt`` (a
    tensor, or a dict with one of those keys), or a folder of such shards.

    Example:
        >>> load_embeddings("features.npy").shape  # doctest: +SKIP
        (50000, 384)
    """
    p = Path(path)
    if p.is_dir():
        shards = sorted(q for q in p.iterdir() if q.suffix in (".npy", ".npz", ".pt"))
        if not shards:
            raise FileNotFoundError(f"embeddings: no .npy/.npz/.pt shards in the folder {p}")
        return np.concatenate([_one_array(q) for q in shards])
    return _one_array(p)


def _one_array(p: Path) -> np.ndarray:
    if not p.exists():
        raise FileNotFoundError(f"embeddings: no file {p}")
    if p.suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
    elif p.suffix == ".npz":
        z = np.load(p, allow_pickle=False)
        arr = _pick(dict(z), p)
    elif p.suffix == ".pt":
        import torch

        obj = torch.load(p, map_location="cpu", weights_only=True)
        arr = (_pick(obj, p) if isinstance(obj, dict) else obj).detach().float().numpy()
    else:
        raise ValueError(f"embeddings: expected .npy, .npz, .pt or a folder of them, got {p.name}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)) or arr.ndim != 2:
        raise TypeError(f"embeddings: expected a 2-D numeric array in {p.name}, got {arr.dtype} {arr.shape}")
    return arr


def _pick(d: dict, p: Path) -> Any:
    for key in ("embeddings", "x"):
        if key in d:
            return d[key]
    if len(d) == 1:
        return next(iter(d.values()))
    raise ValueError(f"embeddings: {p.name} holds {sorted(d)}; expected a key 'embeddings' or 'x'")


def load_labels(path: str | os.PathLike, n: int) -> tuple[np.ndarray, list[str]]:
    """``(integer labels (n,), class names)`` from ``.npy`` / ``.txt`` / ``.csv``.

    Example:
        >>> load_labels("labels.txt", 3)  # doctest: +SKIP
        (array([0, 1, 0]), ['cat', 'dog'])
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"labels: no file {p}")
    if p.suffix == ".npy":
        raw = np.load(p, allow_pickle=False)
    elif p.suffix in (".txt", ".csv"):
        raw = np.array(_column(p, "label"))
    else:
        raise ValueError(f"labels: expected .npy, .txt or .csv, got {p.name}")
    if raw.ndim != 1 or len(raw) != n:
        raise ValueError(f"labels: expected {n} labels (one per embedding row), got shape {raw.shape}")
    names, y = np.unique(raw.astype(str) if raw.dtype.kind in "UOS" else raw, return_inverse=True)
    return y.astype(np.int64), [str(v) for v in names]


def load_items(path: str | os.PathLike, n: int) -> list[str] | np.ndarray:
    """Captions or paths (``.txt`` / ``.csv``) or image arrays (``.npy``, ``(n, H, W[, C])``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"items: no file {p}")
    items: list[str] | np.ndarray = np.load(p, allow_pickle=False) if p.suffix == ".npy" else _column(p, "item")
    if len(items) != n:
        raise ValueError(f"items: expected {n} items (one per embedding row), got {len(items)}")
    if isinstance(items, np.ndarray) and items.ndim not in (3, 4):
        raise ValueError(f"items: expected images (n, H, W) or (n, H, W, C), got shape {items.shape}")
    return items


def _column(p: Path, name: str) -> list[str]:
    lines = p.read_text(encoding="utf-8").splitlines()
    if p.suffix == ".txt":
        return lines
    rows = list(csv.reader(lines))
    if not rows:
        return []
    head = [h.strip().lower() for h in rows[0]]
    col = head.index(name) if name in head else 0
    body = rows[1:] if name in head or not _numeric(rows[0][col]) else rows
    return [r[col] for r in body]


def _numeric(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def run_inspect(embeddings: str, out: str, labels: str | None = None, items: str | None = None,
                metric: str = "cosine", k: int = 10, progress: bool | None = None) -> Inspection:
    """Load, score, and write ``out/scores.npz``, ``out/flagged.csv`` and ``out/report.html``.

    Example:
        >>> run_inspect("features.npy", "inspect-out", labels="labels.npy")  # doctest: +SKIP
    """
    x = load_embeddings(embeddings)
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(1))
        raise ValueError(f"embeddings: expected finite values, got NaN/inf in {len(bad)} rows (first: {bad[:5].tolist()})")
    y, names = load_labels(labels, len(x)) if labels else (None, [])
    shown = load_items(items, len(x)) if items else None
    res = inspect(x, y, metric=metric, k=k, progress=progress)
    final = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=".inspect-", dir=final.parent if final.parent.exists() else None))
    try:
        np.savez(tmp / "scores.npz", **res.scores)
        _write_flagged(tmp / "flagged.csv", res, names)
        (tmp / "report.html").write_text(render(res, x, names, shown), encoding="utf-8")
        final.mkdir(parents=True, exist_ok=True)
        for f in ("scores.npz", "flagged.csv", "report.html"):
            os.replace(tmp / f, final / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def _write_flagged(path: Path, res: Inspection, names: list[str]) -> None:
    s = res.scores
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["row", "reasons", "label", "neighbour_label", "label_noise", "outlier", "duplicate_group"])
        for r, why in res.flagged.items():
            w.writerow([r, ";".join(why), _name(res.labels, names, r), _name(s["neighbour_label"], names, r),
                        f"{s['label_noise'][r]:.4f}" if "label_noise" in s else "", f"{s['outlier'][r]:.4f}",
                        int(s["duplicate_group"][r])])


def _name(y: np.ndarray | None, names: list[str], r: int) -> str:
    if y is None or y[r] < 0:
        return ""
    return names[y[r]] if names else str(int(y[r]))


# ---------------------------------------------------------------- the page

CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top}
th{background:#f4f4f4}.num{text-align:right}.item{max-width:360px}.nb{color:#666;font-size:12px}
img.t{width:48px;height:48px;image-rendering:pixelated;margin-right:2px}
.summary td:first-child{font-weight:600}.maps{display:flex;gap:16px;flex-wrap:wrap}"""


def render(res: Inspection, x: np.ndarray, names: list[str], items: Any) -> str:
    """The report page (one string of HTML, nothing external)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>curriculum inspect</title>"
             f"<style>{CSS}</style></head><body><h1>curriculum inspect</h1>", _summary(res, x)]
    if res.labels is not None:
        parts.append(_label_issues(res, names, items))
    parts += [_duplicates(res, names, items), _extremes(res, names, items), _maps(res, x, names),
              _cluster_bars(res), _curriculum(res, names, items), "</body></html>"]
    return "\n".join(parts)


def summary_numbers(res: Inspection) -> dict[str, int]:
    """The numbers the report's summary shows, from the arrays."""
    s = res.scores
    reasons = [w for why in res.flagged.values() for w in why]
    sizes = np.bincount(s["cluster"])
    cur = np.bincount(s["cluster"][s["curated"] == 1], minlength=len(sizes))
    return {"rows": len(s["outlier"]), "label issues": reasons.count("label"),
            "duplicate groups": int(len(np.unique(s["duplicate_group"][s["duplicate_group"] >= 0]))),
            "rows in duplicate groups": reasons.count("duplicate"), "outliers": reasons.count("outlier"),
            "clusters": len(sizes), "largest / smallest cluster": int(round(sizes.max() / max(sizes.min(), 1))),
            "curated subset": int(s["curated"].sum()),
            "largest / smallest cluster in it": int(round(cur.max() / max(cur[cur > 0].min(), 1)))}


def _summary(res: Inspection, x: np.ndarray) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td class='num' data-key='{html.escape(k)}'>{v}</td></tr>"
                   for k, v in summary_numbers(res).items())
    return f"<section id='summary'><h2>Summary</h2><p>{x.shape[1]}-d embeddings, metric {res.metric}.</p>" \
           f"<table class='summary'>{rows}</table></section>"


def _item(items: Any, r: int) -> str:
    if items is None:
        return f"row {r}"
    if isinstance(items, np.ndarray):
        return f"<img class='t' alt='row {r}' src='{_png(items[r])}'>"
    text = str(items[r])
    if Path(text).suffix.lower() in IMAGE_SUFFIXES and Path(text).is_file():
        import matplotlib.image

        try:
            return f"<img class='t' alt='{html.escape(text)}' src='{_png(matplotlib.image.imread(text))}'>"
        except (OSError, ValueError):
            pass  # unreadable: show the path
    return html.escape(text[:200])


def _png(img: np.ndarray) -> str:
    import matplotlib.image

    a = np.asarray(img, np.float64)
    if a.ndim == 3 and a.shape[-1] not in (3, 4):
        a = a.mean(-1)
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, a, cmap="gray" if a.ndim == 2 else None, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _table(sid: str, title: str, head: list[str], rows: list[list[str]], note: str = "") -> str:
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<section id='{sid}'><h2>{title}</h2><p>{note}</p><table data-rows='{len(rows)}'><tr>{th}</tr>{body}</table></section>"


def _label_issues(res: Inspection, names: list[str], items: Any) -> str:
    rows = [r for r, why in res.flagged.items() if "label" in why]
    rows.sort(key=lambda r: -res.scores["label_noise"][r])
    s = res.scores
    def near(r: int) -> str:
        return " ".join(f"{_item(items, int(j))}<span class='nb'>{html.escape(_name(res.labels, names, int(j)))}</span>"
                        for j in res.neighbours[r][:3])

    return _table("label-issues", "Suspected label issues",
                  ["row", "item", "given label", "neighbours say", "score", "nearest neighbours (their labels)"],
                  [[str(r), _item(items, r), html.escape(_name(res.labels, names, r)),
                    html.escape(_name(s["neighbour_label"], names, r)), f"{s['label_noise'][r]:.3f}", near(r)]
                   for r in rows[:SHOW]],
                  f"{len(rows)} flagged: the neighbours' majority disagrees and the label-noise score is in the top "
                  f"quarter; the {min(SHOW, len(rows))} most likely shown.")


def _duplicates(res: Inspection, names: list[str], items: Any) -> str:
    groups = res.duplicate_groups()
    rows = [[str(len(g)), " ".join(_item(items, int(r)) if isinstance(items, np.ndarray) else f"{int(r)}: {_item(items, int(r))}<br>"
                                   for r in g[:6])] for g in groups[:SHOW]]
    return _table("duplicates", "Near-duplicate groups", ["size", "members"], rows,
                  f"{len(groups)} groups (cosine similarity above 0.98).")


def _extremes(res: Inspection, names: list[str], items: Any) -> str:
    d = res.scores["difficulty"]
    order = np.argsort(d, kind="stable")
    out = []
    for sid, title, rows in (("hardest", "Hardest samples", order[::-1][:SHOW // 2]),
                             ("easiest", "Easiest samples", order[:SHOW // 2])):
        out.append(_table(sid, title, ["row", "item", "label", "difficulty"],
                          [[str(r), _item(items, int(r)), html.escape(_name(res.labels, names, int(r))), f"{d[r]:.3f}"]
                           for r in rows]))
    return "\n".join(out)


def _maps(res: Inspection, x: np.ndarray, names: list[str]) -> str:
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(x), min(MAP_POINTS, len(x)), replace=False))
    z = np.asarray(x[rows], np.float64)
    z = z - z.mean(0)
    u = np.linalg.svd(z, full_matrices=False)[0][:, :2]
    u = (u - u.min(0)) / np.maximum(np.ptp(u, 0), 1e-12)
    svgs = []
    if res.labels is not None:
        svgs.append(_scatter(u, _palette(res.labels[rows]), "coloured by label"))
    key = "label_noise" if "label_noise" in res.scores else "outlier"
    svgs.append(_scatter(u, _ramp(Difficulty(res.scores[key]).rank()[rows]), f"coloured by {key} (dark = high)"))
    return f"<section id='map'><h2>Map of the embedding (PCA, {len(rows)} points)</h2><div class='maps'>{''.join(svgs)}</div></section>"


def _palette(y: np.ndarray) -> list[str]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [matplotlib.colors.to_hex(cmap(int(v) % 20)) for v in y]


def _ramp(t: np.ndarray) -> list[str]:
    import matplotlib

    cmap = matplotlib.colormaps["viridis_r"]
    return [matplotlib.colors.to_hex(cmap(float(v))) for v in t]


def _scatter(u: np.ndarray, colours: list[str], title: str, size: int = 420) -> str:
    dots = "".join(f"<circle cx='{5 + a * (size - 10):.1f}' cy='{5 + (1 - b) * (size - 10):.1f}' r='2' fill='{c}'/>"
                   for (a, b), c in zip(u, colours))
    return f"<figure><svg xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}' " \
           f"style='border:1px solid #ddd'>{dots}</svg><figcaption>{html.escape(title)}</figcaption></figure>"


def _cluster_bars(res: Inspection, width: int = 900, height: int = 160) -> str:
    s = res.scores
    sizes = np.bincount(s["cluster"])
    cur = np.bincount(s["cluster"][s["curated"] == 1], minlength=len(sizes))
    order = np.argsort(-sizes, kind="stable")
    bw = width / max(len(sizes), 1)
    bars = []
    for label, v, colour in (("pool", sizes[order] / sizes.sum(), "#999"), ("curated", cur[order] / max(cur.sum(), 1), "#1f77b4")):
        top = max(float(v.max()), 1e-12)
        rects = "".join(f"<rect x='{i * bw:.1f}' y='{height - h / top * (height - 10):.1f}' width='{max(bw - 1, 0.5):.1f}' "
                        f"height='{h / top * (height - 10):.1f}' fill='{colour}'/>" for i, h in enumerate(v))
        bars.append(f"<figure><svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>{rects}</svg>"
                    f"<figcaption>{label}: share of rows per cluster, largest cluster first</figcaption></figure>")
    return f"<section id='clusters'><h2>Clusters before and after a balanced 10% subset</h2>{''.join(bars)}</section>"


def _curriculum(res: Inspection, names: list[str], items: Any) -> str:
    order = np.argsort(res.scores["difficulty"], kind="stable")[:SHOW // 2]
    return _table("curriculum", "What a curriculum would draw first", ["row", "item", "label"],
                  [[str(r), _item(items, int(r)), html.escape(_name(res.labels, names, int(r)))] for r in order],
                  "The easiest samples by the difficulty score: the first batches of an easy-to-hard pacing.")


__all__ = ["load_embeddings", "load_labels", "load_items", "run_inspect", "render", "summary_numbers"]
