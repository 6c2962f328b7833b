"""Old path of :mod:`curriculum.mining.contrastive` (an alias kept for one release; import from there)."""

import sys

from .mining import contrastive as _module

sys.modules[__name__] = _module
