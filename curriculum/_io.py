"""Atomic, pickle-free persistence shared by the store and the difficulty scores."""

from __future__ import annotations

import os
import tempfile

import numpy as np


def atomic_savez(path: str, arrays: dict[str, np.ndarray], prefix: str = ".curriculum-") -> None:
    """Write ``arrays`` as an ``.npz`` zip to ``path`` atomically: a temp file in the same folder,
    fsync, rename, fsync of the folder. If anything fails the previous file is left untouched
    and the temp file removed. Loading needs only ``np.load(allow_pickle=False)``."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - directories cannot be fsynced on some platforms
        pass
