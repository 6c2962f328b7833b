"""Shared helpers for the benchmark scripts: timing, peak memory, tables, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    t = time.perf_counter()
    try:
        yield out
    finally:
        out["s"] = time.perf_counter() - t


def sgemm_gflops(n: int = 2048) -> float:
    """This machine's float32 matrix-product rate (GFLOP/s), measured now."""
    a = np.random.default_rng(0).random((n, 128), dtype=np.float32)
    b = np.random.default_rng(1).random((128, 32768), dtype=np.float32)
    a @ b
    t = time.perf_counter()
    reps = 5
    for _ in range(reps):
        a @ b
    return 2 * n * 128 * 32768 * reps / (time.perf_counter() - t) / 1e9


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for x in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(x, widths)))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def write_json(path: str, payload: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    print(f"wrote {path}")


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    hits = [len(set(a[a >= 0].tolist()) & set(b.tolist())) for a, b in zip(found, exact)]
    return float(np.sum(hits) / (k * len(exact)))
