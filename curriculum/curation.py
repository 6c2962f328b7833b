"""Old path of :mod:`curriculum.selection.curation` (an alias kept for one release; import from there)."""

import sys

from .selection import curation as _module

sys.modules[__name__] = _module
