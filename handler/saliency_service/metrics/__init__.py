"""How far a saliency map can be trusted: causal deletion/insertion curves and sanity checks.

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
    average_ranks,
    cascading_blocks,
    cascading_randomisation,
    reinitialise,
    spearman,
)

__all__ = [
    "PIXELS_PER_STEP",
    "Curves",
    "RandomisationStep",
    "auc",
    "average_ranks",
    "blur",
    "cascading_blocks",
    "cascading_randomisation",
    "causal_curves",
    "deletion_curves",
    "insertion_curves",
    "reinitialise",
    "saliency_order",
    "spearman",
]
