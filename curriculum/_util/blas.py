"""Which kernels faiss's bundled BLAS runs, and the environment that fixes a generic fallback.

faiss-cpu's wheels bundle their own OpenBLAS (1.15.1: OpenBLAS 0.3.15, from 2021). An OpenBLAS
that does not recognise the CPU runs generic kernels: on a Sapphire Rapids machine 0.3.15 picks
its SSE3 ("Prescott") ones, and faiss's k-means and flat search run at ~33 GFLOP/s where torch's
products reach 200. ``OPENBLAS_CORETYPE`` (read when the library loads) picks the kernels instead.
curriculum's heavy paths do not depend on it (they run on torch products); ``curriculum info``
reports it and ``curriculum bench`` runs the faiss peers with it, at their best.
"""

from __future__ import annotations

import ctypes
import glob
import os
from typing import Optional

GENERIC_CORES = ("Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom", "Katmai", "Coppermine",
                 "Northwood", "Banias", "Generic")  # OpenBLAS's names of pre-AVX kernels
CORE_FOR_CAPABILITY = {"AVX512": "SkylakeX", "AVX2": "Haswell"}  # torch's CPU capability -> OpenBLAS kernels


def faiss_blas_core() -> Optional[str]:
    """The kernel set (OpenBLAS core name) of the OpenBLAS bundled with faiss, or ``None`` where
    faiss brings none (a conda or MKL build) or it cannot be asked.

    Example:
        >>> core = faiss_blas_core()
        >>> core is None or isinstance(core, str)
        True
    """
    import faiss

    root = os.path.dirname(os.path.dirname(os.path.abspath(faiss.__file__)))
    for path in sorted(glob.glob(os.path.join(root, "faiss_cpu.libs", "libopenblas*.so*"))):
        try:
            fn = ctypes.CDLL(path).openblas_get_corename  # the copy faiss loaded: same handle
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_char_p
        name = fn()
        return name.decode() if name else None
    return None


def faiss_blas_env() -> Optional[dict[str, str]]:
    """The process environment with ``OPENBLAS_CORETYPE`` set to the kernels this CPU runs
    (``SkylakeX`` with AVX-512, ``Haswell`` with AVX2, as torch detects them) where faiss's
    OpenBLAS fell back to generic ones and the variable is unset; else ``None`` (nothing to fix).
    A child process started with it gives faiss the kernels it should have picked.

    Example:
        >>> env = faiss_blas_env()
        >>> env is None or env["OPENBLAS_CORETYPE"] in ("SkylakeX", "Haswell")
        True
    """
    import torch

    if "OPENBLAS_CORETYPE" in os.environ or faiss_blas_core() not in GENERIC_CORES:
        return None
    core = CORE_FOR_CAPABILITY.get(torch.backends.cpu.get_cpu_capability())
    return None if core is None else {**os.environ, "OPENBLAS_CORETYPE": core}


__all__ = ["GENERIC_CORES", "CORE_FOR_CAPABILITY", "faiss_blas_core", "faiss_blas_env"]
