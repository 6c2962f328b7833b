"""Sampling: :class:`CurriculumSampler` (owns its position), its batch form, neighbourhood
batches, and :func:`wrap` for an existing DataLoader."""

from .._util.dist import dist_info
from .loader import CurriculumLoader, wrap
from .neighbourhood import NeighbourhoodBatchSampler
from .sampler import STATE_VERSION, STRATEGIES, CurriculumBatchSampler, CurriculumSampler

__all__ = ["CurriculumSampler", "CurriculumBatchSampler", "CurriculumLoader", "wrap", "NeighbourhoodBatchSampler",
           "STRATEGIES", "STATE_VERSION", "dist_info"]
