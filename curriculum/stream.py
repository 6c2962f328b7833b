"""Old path of :mod:`curriculum.selection.stream` (an alias kept for one release; import from there)."""

import sys

from .selection import stream as _module

sys.modules[__name__] = _module
