"""Selection: curation of long-tailed pools (hierarchical k-means, balanced sampling, dedup) and
selection from streams."""

from .curation import Hierarchy, balanced_select, cluster_groups, curate, deduplicate, hierarchical_kmeans
from .stream import SlidingWindowStore, StreamSelector

__all__ = ["curate", "deduplicate", "cluster_groups", "hierarchical_kmeans", "balanced_select", "Hierarchy",
           "StreamSelector", "SlidingWindowStore"]
