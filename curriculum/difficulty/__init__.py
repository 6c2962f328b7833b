"""Difficulty scores: a float per dataset id, higher = harder, never NaN.

Geometry scores read the :class:`~curriculum.EmbeddingStore`; dynamics scores read a
:class:`Recorder` fed from the training loop; :func:`label_probe` fits out-of-fold linear probes
on the store (model-based label-noise scores); :func:`combine` fuses them by rank.
"""

from .base import Difficulty, as_difficulty, load_with_store, save_with_store
from .dynamics import Recorder
from .fusion import combine
from .probe import PROBE_KINDS, Probe, label_noise, label_probe
from .geometry import (class_margin, knn_distance, label_disagreement, label_entropy, label_k, near_duplicates,
                       prototype_distance)

__all__ = ["Difficulty", "as_difficulty", "save_with_store", "load_with_store", "Recorder", "combine", "knn_distance", "prototype_distance",
           "label_disagreement", "label_entropy", "label_k", "class_margin", "near_duplicates", "Probe", "label_probe", "label_noise", "PROBE_KINDS"]
