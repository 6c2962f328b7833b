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

from curriculum.cli.bench import sgemm_gflops  # noqa: F401  (re-exported for the scripts)
from curriculum.cli.bench_sections import print_table  # noqa: F401


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


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}


def write_json(path: str, payload: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    print(f"wrote {path}")


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    hits = [len(set(a[a >= 0].tolist()) & set(b.tolist())) for a, b in zip(found, exact)]
    return float(np.sum(hits) / (k * len(exact)))
