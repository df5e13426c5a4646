"""How far a saliency map can be trusted: causal deletion/insertion curves, sanity checks, and
the statistics over photos (Student-t intervals, paired differences) that summarise them.

Pure PyTorch like ``attribution``: these run offline (``scripts/evaluate.py``), never per request.
"""

from .faithfulness import (
    PIXELS_PER_STEP,
    Curves,
    auc,
    blur,
    causal_curves,
    deletion_curves,
    insertion_curves,
    saliency_order,
)
from .randomisation import (
    RandomisationStep,
    cascading_blocks,
    cascading_randomisation,
    cascading_randomisation_many,
    reinitialise,
)
from .statistics import (
    LEVEL,
    Interval,
    across_photos,
    half_life,
    mean_interval,
    paired_difference,
    t_critical,
    t_within,
)

__all__ = [
    "LEVEL",
    "PIXELS_PER_STEP",
    "Curves",
    "Interval",
    "RandomisationStep",
    "across_photos",
    "auc",
    "blur",
    "cascading_blocks",
    "cascading_randomisation",
    "cascading_randomisation_many",
    "causal_curves",
    "deletion_curves",
    "half_life",
    "insertion_curves",
    "mean_interval",
    "paired_difference",
    "reinitialise",
    "saliency_order",
    "t_critical",
    "t_within",
]
