"""The embedding store: :class:`EmbeddingStore` (a façade over rows, index manager, search,
graph, persistence and embedding parts - see :mod:`curriculum.store.core` for the concurrency
model), :class:`ShardedStore` (the same over torch.distributed, sharded by id) and :class:`KMeansResult`."""

from .core import EmbeddingStore
from .graph import DEFAULT_NPROBE, EXACT_GRAPH_MIN_ROWS, KMeansResult
from .rows import MISSING, Snapshot
from .sharded import ShardedStore

__all__ = ["EmbeddingStore", "ShardedStore", "KMeansResult", "Snapshot", "MISSING", "DEFAULT_NPROBE", "EXACT_GRAPH_MIN_ROWS"]
