"""Mining: in-batch miners (same tuples as pytorch-metric-learning), global hard negatives over
the whole store with its negatives table, contrastive losses, and the index refresher."""

from .contrastive import hard_negative_nce, info_nce, mochi
from .hard_negatives import HardNegativeMiner, Mined
from .inbatch import (BaseMiner, BatchHardMiner, CrossBatchMemory, MarginMiner, MultiSimilarityMiner, SemiHardMiner,
                      pairwise_distance)
from .refresh import IndexRefresher

__all__ = ["HardNegativeMiner", "Mined", "BaseMiner", "BatchHardMiner", "SemiHardMiner", "MarginMiner",
           "MultiSimilarityMiner", "CrossBatchMemory", "pairwise_distance", "IndexRefresher", "info_nce",
           "hard_negative_nce", "mochi"]
