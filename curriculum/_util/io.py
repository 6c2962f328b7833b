"""Atomic, pickle-free persistence shared by the store and the difficulty scores."""

from __future__ import annotations

import glob
import os
import tempfile

import numpy as np


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's live process
        return True
    return True


def _clean_leftovers(folder: str, stem: str) -> None:
    """Remove temp files of earlier saves to the same path whose process is gone (a save killed
    midway cannot clean up after itself)."""
    for tmp in glob.glob(os.path.join(folder, f"{stem}*.tmp")):
        parts = os.path.basename(tmp)[len(stem):].split(".")
        if parts and parts[0].isdigit() and int(parts[0]) != os.getpid() and not _pid_alive(int(parts[0])):
            try:
                os.unlink(tmp)
            except OSError:  # pragma: no cover - removed concurrently
                pass


def _mode_for(path: str) -> int:
    """The mode a plain ``open(path, "w")`` would give: the existing file's, else 0666 & ~umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_savez(path: str, arrays: dict[str, np.ndarray], prefix: str = ".curriculum-") -> None:
    """Write ``arrays`` as an ``.npz`` zip to ``path`` atomically: a temp file in the same folder,
    fsync, rename, fsync of the folder. If anything fails the previous file is left untouched
    and the temp file removed; temp files left by saves that were killed are removed by the next
    save to the same path. The file keeps the mode a plain write would give it. Loading needs
    only ``np.load(allow_pickle=False)``."""
    _atomic(path, lambda f: np.savez(f, **arrays), prefix)


def atomic_write_bytes(path: str, data: bytes, prefix: str = ".curriculum-") -> None:
    """Write ``data`` to ``path`` atomically, as :func:`atomic_savez` does.

    Example:
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "m.json"); atomic_write_bytes(p, b"{}"); open(p).read()
        '{}'
    """
    _atomic(path, lambda f: f.write(data), prefix)


def _atomic(path: str, write, prefix: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    stem = f"{prefix}{os.path.basename(path)}."
    _clean_leftovers(d, stem)
    fd, tmp = tempfile.mkstemp(prefix=f"{stem}{os.getpid()}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fchmod(f.fileno(), _mode_for(path))
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
