"""Gloo process groups in tests: loopback only, and one retry budget for the host's TCP set-up.

Gloo's full-mesh connect on a loaded CI host can fail before any of our code runs ("Connection
closed by peer" while the ranks pair up, or a master port taken between probing and binding). Such
a failure says nothing about the code under test, so the group is formed again - with a fresh
rendezvous - up to ``ATTEMPTS`` times; any other failure is raised at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable

ATTEMPTS = 3
CONNECT_FAILURES = ("connectFullMesh", "Connection closed by peer", "Connection reset by peer",
                    "EADDRINUSE", "address already in use")


def use_loopback() -> None:
    """Pin gloo to the loopback interface (inherited by spawned and torchrun processes)."""
    if sys.platform.startswith("linux"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def is_connect_failure(text: str) -> bool:
    return any(s in text for s in CONNECT_FAILURES)


def spawn(worker: Callable, world: int, tmp_path, *args) -> str:
    """``mp.spawn(worker, (world, out_prefix, init_file, *args))``; returns the output prefix."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "out")
    for attempt in range(ATTEMPTS):
        try:
            mp.spawn(worker, args=(world, out, str(tmp_path / f"init{attempt}"), *args), nprocs=world, join=True)
            return out
        except mp.ProcessRaisedException as e:
            if attempt == ATTEMPTS - 1 or not is_connect_failure(str(e)):
                raise
    return out


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, **kwargs)``, again on a connect failure."""
    for attempt in range(ATTEMPTS):
        res = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
        if res.returncode == 0 or attempt == ATTEMPTS - 1 or not is_connect_failure(res.stdout + res.stderr):
            return res
    return res
