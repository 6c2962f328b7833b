"""Matrix products of numpy arrays that run next to faiss without stealing its cores.

numpy's OpenBLAS keeps its worker threads spinning for a while after each product; when a faiss
call (OpenMP) follows, the two pools fight over the cores. On 2 cores a stream selector that
alternates a numpy Gram matrix with faiss searches ran at 18k items/s, and at 41-50k with the
same product done by torch, whose OpenMP threads go to sleep almost at once. Hot loops that
interleave products with faiss calls use :func:`matmul`.
"""

from __future__ import annotations

import numpy as np


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-D float32 / float64 numpy arrays (the result in their common dtype), through
    torch's BLAS.

    Example:
        >>> import numpy as np
        >>> matmul(np.eye(2, dtype=np.float32), np.array([[1., 2], [3, 4]], np.float32)).tolist()
        [[1.0, 2.0], [3.0, 4.0]]
    """
    import torch

    dtype = np.result_type(a.dtype, b.dtype)
    if dtype not in (np.float32, np.float64) or a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"a, b: expected 2-D float32/float64 arrays, got {a.dtype} {a.shape} and {b.dtype} {b.shape}")
    ta = torch.from_numpy(np.asarray(a, dtype))
    tb = torch.from_numpy(np.asarray(b, dtype))
    return (ta @ tb).numpy()


__all__ = ["matmul"]
