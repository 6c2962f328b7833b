"""curriculum: curriculum learning and global hard-sample mining for PyTorch.

A faiss-indexed :class:`EmbeddingStore` scores every sample for difficulty, pacing schedules
decide how much of the hard end is admitted as training goes on, and a sampler feeds the
user's own DataLoader so that what it yields shifts from easy to hard.
"""

from . import difficulty, pacing
from .difficulty import Difficulty, Recorder
from .inspection import Inspection, inspect
from .mining import HardNegativeMiner
from .sampling import CurriculumBatchSampler, CurriculumLoader, CurriculumSampler, wrap
from .selection import StreamSelector, curate
from .store import EmbeddingStore, KMeansResult

__version__ = "0.1.0"
__all__ = ["EmbeddingStore", "KMeansResult", "Difficulty", "Recorder", "CurriculumSampler", "CurriculumBatchSampler",
           "CurriculumLoader", "wrap", "HardNegativeMiner", "curate", "StreamSelector", "inspect", "Inspection",
           "difficulty", "pacing", "__version__"]
