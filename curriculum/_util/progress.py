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
