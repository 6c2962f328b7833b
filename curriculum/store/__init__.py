"""The embedding store: :class:`EmbeddingStore` (a façade over rows, index manager, search,
graph, persistence and embedding parts - see :mod:`curriculum.store.core` for the concurrency
model) and :class:`KMeansResult`."""

from .core import EmbeddingStore
from .graph import DEFAULT_NPROBE, EXACT_GRAPH_MIN_ROWS, KMeansResult
from .rows import MISSING, Snapshot

__all__ = ["EmbeddingStore", "KMeansResult", "Snapshot", "MISSING", "DEFAULT_NPROBE", "EXACT_GRAPH_MIN_ROWS"]
