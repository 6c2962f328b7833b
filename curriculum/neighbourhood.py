"""Old path of :class:`curriculum.sampling.NeighbourhoodBatchSampler` and
:class:`curriculum.mining.IndexRefresher` (kept for one release; import from there)."""

from .mining.refresh import IndexRefresher  # noqa: F401
from .sampling.neighbourhood import NeighbourhoodBatchSampler  # noqa: F401
