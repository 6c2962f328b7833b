"""Old path of :mod:`curriculum.sampling.loader` (an alias kept for one release; import from there)."""

import sys

from .sampling import loader as _module

sys.modules[__name__] = _module
