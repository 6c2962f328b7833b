"""Array kernels with no store: the :class:`Metric` convention, exact search, the blocked and the
exact all-points kNN graph engines and the blocked engine's recall plan.

Everything here takes plain float32 matrices (rows prepared by :meth:`Metric.prepare`) and
returns ``(distances, rows)``, smaller = nearer; nothing here keeps state between calls.
"""

from .blocked import block_plan, block_purity, blocked_knn, probe_lists, probe_lists_other_label, run_blocks
from .descent import descent_knn, merge_knn, pca_basis, pca_projection, project
from .device import checked_device, device_knn, device_topk, on_device
from .exact import exact_knn_graph
from .kernels import brute_knn, exact_topk, first_k_valid, nearest_rows, sort_dedupe
from .metric import METRICS, Metric, faiss_metric, get_metric, normalize, pair_distances, to_distance
from .plan import PLAN_SAMPLE, RecallPlan, nprobe_for, plan_recall, probe_ranks, sample_truth, sampled_recall

__all__ = ["Metric", "METRICS", "get_metric", "faiss_metric", "to_distance", "normalize", "pair_distances",
           "brute_knn", "exact_topk", "nearest_rows", "first_k_valid", "sort_dedupe", "block_plan", "block_purity",
           "blocked_knn", "probe_lists", "probe_lists_other_label", "run_blocks", "exact_knn_graph", "PLAN_SAMPLE", "RecallPlan",
           "nprobe_for", "plan_recall", "probe_ranks", "sample_truth", "sampled_recall", "descent_knn", "merge_knn",
           "pca_projection", "pca_basis", "project", "device_knn", "device_topk", "on_device", "checked_device"]
