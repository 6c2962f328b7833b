"""Old path of :mod:`curriculum.neighbors` (kept for one release; import from there)."""

from .neighbors import *  # noqa: F401,F403
from .neighbors import __all__  # noqa: F401
