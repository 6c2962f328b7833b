"""Old path of :mod:`curriculum.cli.data` (an alias kept for one release; import from there)."""

import sys

from .cli import data as _module

sys.modules[__name__] = _module
