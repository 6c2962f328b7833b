"""Saving and loading the store: a zip of plain ``.npy`` arrays, a JSON header and faiss's own
index serialisation - no pickle, so loading a file from elsewhere can never run code. Every
field is checked on load; a bad file raises ``ValueError`` naming the field and the file."""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import faiss
import numpy as np

from .._util.arrays import sorted_unique
from .._util.io import atomic_savez

FORMAT_NAME = "curriculum.EmbeddingStore"
FORMAT_VERSION = 1
HEADER_KEYS = ("format", "version", "dim", "metric", "index", "exact_threshold", "rebuild_threshold", "n")
ARRAYS = ("vectors", "ids", "labels", "steps")


def check_extra(extra: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """``extra`` arrays as ``{"extra:" + key: array}``; object arrays (pickles) are refused."""
    out = {}
    for key, val in (extra or {}).items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"extra: expected non-empty string keys, got {key!r}")
        arr = np.asarray(val)
        if arr.dtype == object:
            raise TypeError(f"extra[{key!r}]: expected a numeric array (no pickled objects), got dtype object")
        out["extra:" + key] = arr
    return out


def write(path: str, header: dict[str, Any], arrays: dict[str, np.ndarray], index: Any) -> None:
    """Write one store file atomically (``index`` serialised when given)."""
    arrays = {"header": np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays}
    if index is not None:
        arrays["index"] = faiss.serialize_index(index)
    atomic_savez(path, arrays, prefix=".store-")


def read(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray], Any]:
    """``(header, arrays, index or None)`` of a store file, every field checked."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no store file at {path!r}")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"path: {path!r} is not a readable curriculum store (truncated or foreign file: {exc})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise ValueError(f"path: {path!r} holds a single array, not a curriculum store (a zip of arrays)")
    try:
        with z:
            if "header" not in z.files:
                raise ValueError(f"path: {path!r} is not a readable curriculum store (no curriculum header)")
            header = _header(bytes(z["header"]), path)
            missing = [a for a in ARRAYS if a not in z.files]
            if missing:
                raise ValueError(f"path: {path!r} lacks the array(s) {missing}")
            arrays = {k: z[k] for k in ARRAYS}
            raw_index = z["index"] if "index" in z.files else None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise ValueError(f"path: {path!r} is not a readable curriculum store (truncated or foreign file: {exc})") from None
    _check_arrays(header, arrays, path)
    return header, arrays, _index(raw_index, header, path)


def _header(raw: bytes, path: str) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"header: {path!r} holds an unreadable header ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError(f"header: expected a JSON object in {path!r}, got {type(header).__name__}")
    if header.get("format") != FORMAT_NAME:
        raise ValueError(f"header.format: {path!r} holds format {header.get('format')!r}, expected {FORMAT_NAME!r}")
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(f"header.version: {path!r} has store format version {header.get('version')!r}, "
                         f"this curriculum reads version {FORMAT_VERSION}")
    missing = [k for k in HEADER_KEYS if k not in header]
    if missing:
        raise ValueError(f"header: {path!r} lacks the field(s) {missing}")
    for key in ("dim", "n", "exact_threshold"):
        v = header[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "dim" else 0):
            raise ValueError(f"header.{key}: expected a non-negative integer in {path!r}, got {v!r}")
    return header


def _check_arrays(header: dict[str, Any], a: dict[str, np.ndarray], path: str) -> None:
    n, dim = header["n"], header["dim"]
    want = {"vectors": ((n, dim), np.floating), "ids": ((n,), np.integer), "labels": ((n,), np.integer),
            "steps": ((n,), np.integer)}
    for key, (shape, kind) in want.items():
        arr = a[key]
        if arr.shape != shape or not np.issubdtype(arr.dtype, kind):
            raise ValueError(f"{key}: expected shape {shape} of {kind.__name__} in {path!r} (header n={n}, "
                             f"dim={dim}), got shape {arr.shape} and dtype {arr.dtype}")
    if n and not np.isfinite(a["vectors"]).all():
        raise ValueError(f"vectors: expected finite values in {path!r}, got NaN or inf in "
                         f"{int((~np.isfinite(a['vectors'])).any(1).sum())} row(s)")
    ids = a["ids"]
    if n and ids.min() < 0:
        raise ValueError(f"ids: expected non-negative ids in {path!r}, got {int(ids.min())}")
    distinct = len(sorted_unique(ids))
    if distinct != n:
        raise ValueError(f"ids: expected unique ids in {path!r}, got {n - distinct} duplicate(s)")
    for key in ("labels", "steps"):
        if n and a[key].min() < -1:
            raise ValueError(f"{key}: expected values >= 0 (or -1 for none) in {path!r}, got {int(a[key].min())}")


def _index(raw: np.ndarray | None, header: dict[str, Any], path: str) -> Any:
    if raw is None:
        return None
    try:
        index = faiss.deserialize_index(np.ascontiguousarray(raw, np.uint8))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise ValueError(f"index: the faiss index in {path!r} is corrupt ({first})") from None
    if index.d != header["dim"]:
        raise ValueError(f"index: expected dimension {header['dim']} (the header's dim) in {path!r}, got {index.d}")
    return index


__all__ = ['FORMAT_NAME', 'FORMAT_VERSION', 'HEADER_KEYS', 'ARRAYS', 'check_extra', 'write', 'read']
