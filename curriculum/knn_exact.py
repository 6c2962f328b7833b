"""Old path of :func:`curriculum.neighbors.exact_knn_graph` (kept for one release)."""

from .neighbors.exact import exact_knn_graph  # noqa: F401
