"""Argument validation shared by every public entry point.

Each helper raises with a message naming the argument, what was expected and what arrived,
so that users see ``vectors: expected a 2-D float array of shape (n, 128), got shape (10, 64)``
rather than a faiss assertion from deep inside C++.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import duplicated_values

try:  # torch is a hard dependency, but keep this module importable without it for tooling
    import torch
except ImportError:  # pragma: no cover
    torch = None  # type: ignore[assignment]


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    if torch is not None and isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:200]


def to_numpy(x: Any, name: str) -> np.ndarray:
    """Turn a tensor / array / sequence into a numpy array without copying where possible."""
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16 (mixed-precision logits, embeddings)
            x = x.float()
        return x.cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"{name}: expected an array-like, got {_describe(x)}") from exc


def as_real(x: Any, name: str) -> np.ndarray:
    """A real-valued numeric array (integers or floats; not bool, complex, strings or objects),
    finite; returned as a numpy array."""
    arr = to_numpy(x, name)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name}: expected real numbers (an integer or float array), got {_describe(arr)}")
    if np.issubdtype(arr.dtype, np.floating) and arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf")
    return arr


def as_vectors(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Validate a 2-D matrix of finite floats; return it as C-contiguous float32."""
    arr = to_numpy(x, name)
    if arr.ndim == 1 and dim is not None and arr.shape[0] == dim:
        arr = arr[None, :]
    if arr.ndim != 2:
        want = f"(n, {dim})" if dim is not None else "(n, d)"
        raise ValueError(f"{name}: expected a 2-D array of shape {want}, got {_describe(arr)}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name}: expected {dim} columns (the store's dim), got shape {arr.shape}")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{name}: expected a float array, got {_describe(arr)}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"{name}: expected finite values, got NaN or inf in {bad} row(s)")
    return arr


def _int64(arr: np.ndarray, name: str, what: str) -> np.ndarray:
    """Integers as int64; whole-valued finite floats are accepted, anything else is an error."""
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            return arr.astype(np.int64)
        raise TypeError(f"{name}: expected integer {what}, got {_describe(arr)}")
    return arr.astype(np.int64, copy=False)


def as_ids(x: Any, name: str, n: int | None = None, unique: bool = True) -> np.ndarray:
    """Validate a 1-D array of non-negative integer ids; return it as int64."""
    arr = to_numpy(x, name)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of integer ids, got {_describe(arr)}")
    arr = _int64(arr, name, "ids")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name}: expected {n} ids (one per row), got {arr.shape[0]}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name}: expected non-negative ids, got {int(arr.min())}")
    if unique and arr.size:
        dup = duplicated_values(arr)[:5].tolist()
        if dup:
            raise ValueError(f"{name}: expected unique ids, got duplicates {dup}")
    return arr


def as_labels(x: Any, name: str, n: int) -> np.ndarray:
    """Validate ``n`` non-negative integer class labels; return int64."""
    arr = to_numpy(x, name)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name}: expected a 1-D array of {n} integer labels, got {_describe(arr)}")
    arr = _int64(arr, name, "labels")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name}: expected labels >= 0, got {int(arr.min())}")
    return arr


def positive_int(x: Any, name: str, minimum: int = 1) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer >= {minimum}, got {_describe(x)}")
    if x < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {x}")
    return int(x)


def finite_float(x: Any, name: str, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {_describe(x)}")
    v = float(x)
    if not np.isfinite(v):
        raise ValueError(f"{name}: expected a finite number, got {v}")
    lo_bad = low is not None and (v <= low if low_open else v < low)
    hi_bad = high is not None and (v >= high if high_open else v > high)
    if lo_bad or hi_bad:
        lb = "(" if low_open else "["
        hb = ")" if high_open else "]"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name}: expected a value in {lb}{lo}, {hi}{hb}, got {v}")
    return v


def choice(x: Any, name: str, options: tuple[str, ...]) -> str:
    if x not in options:
        raise ValueError(f"{name}: expected one of {list(options)}, got {x!r}")
    return x


def state_format(state: Any, fmt: str, versions: tuple[int, ...], what: str) -> int:
    """Check a saved state's ``format`` and ``version`` (states written before formats were
    recorded carry neither: read as ``fmt`` version 1) and return the version; a dict is required.

    Example:
        >>> state_format({"format": "curriculum.loader", "version": 1}, "curriculum.loader", (1,), "loader")
        1
    """
    if not isinstance(state, dict):
        raise TypeError(f"state: expected a dict from {what}.state_dict(), got {type(state).__name__}")
    got, version = state.get("format", fmt), state.get("version", 1)
    if got != fmt or version not in versions:
        raise ValueError(f"state: format {got!r} version {version!r} is not a {what} state this curriculum reads "
                         f"({fmt!r} version {', '.join(map(str, versions))})")
    return int(version)
