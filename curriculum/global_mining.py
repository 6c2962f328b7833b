"""Old path of :mod:`curriculum.mining.hard_negatives` (an alias kept for one release; import from there)."""

import sys

from .mining import hard_negatives as _module

sys.modules[__name__] = _module
