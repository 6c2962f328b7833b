"""Gloo process groups in tests: loopback only, and one retry budget for the host's TCP set-up.

Gloo's full-mesh connect on a loaded CI host can fail before any of our code runs ("Connection
closed by peer" while the ranks pair up, or a master port taken between probing and binding). Such
a failure says nothing about the code under test, so the group is formed again - with a fresh
rendezvous - up to ``ATTEMPTS`` times; any other failure is raised at once. A subprocess run that
hangs (a rendezvous that never completes) is killed with its workers and run again the same way.
"""

from __future__ import annotations

import os
import signal
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


def run(cmd: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)``, again on a connect failure or a hang.

    Each attempt runs in its own process group and is killed whole (torchrun and its workers) after
    ``timeout`` seconds; a hang that repeats on every attempt is a real failure and is raised.
    """
    for attempt in range(ATTEMPTS):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            if attempt == ATTEMPTS - 1:
                raise AssertionError(f"{cmd} hung {ATTEMPTS} times ({timeout:.0f} s each):\n{out[-2000:]}{err[-4000:]}")
            continue
        res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        if res.returncode == 0 or attempt == ATTEMPTS - 1 or not is_connect_failure(out + err):
            return res
    return res
