"""One progress bar for every long operation (embedding, index builds, scoring, benchmarks)."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int | None = None, desc: str = "", disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr; silenced by ``disable`` or ``CURRICULUM_PROGRESS=0``."""
    off = disable or os.environ.get("CURRICULUM_PROGRESS", "1") == "0"
    return tqdm(total=total, desc=desc, disable=off, file=sys.stderr, dynamic_ncols=True, leave=False, **kwargs)


LONG_ROWS = 50_000  # from here on, a kNN graph, k-means or scoring pass takes seconds: show a bar


def want(progress: bool | None, rows: int, long_from: int = LONG_ROWS) -> bool:
    """Resolve a public ``progress`` argument: ``None`` means "on when the work is long" (``rows``
    at or above ``long_from``); ``True``/``False`` are kept.

    Example:
        >>> want(None, 1_000), want(None, 1_000_000), want(False, 1_000_000)
        (False, True, False)
    """
    if progress is None:
        return rows >= long_from
    if not isinstance(progress, (bool, int)):
        raise TypeError(f"progress: expected True, False or None (on when the work is long), got {type(progress).__name__}")
    return bool(progress)
