"""Gradient attribution for image classifiers, in pure PyTorch.

One algorithm per module behind one call signature ``method(model, inputs, targets, objectives)``;
the gradient plumbing lives in ``gradients`` alone.
"""

from .gradients import input_gradients
from .objectives import OBJECTIVES, PREDICTED, BatchObjective, class_score, cross_entropy
from .smoothgrad import DEFAULT_NOISE, DEFAULT_SAMPLES, smoothgrad_saliency
from .vanilla import SaliencyResult, vanilla_saliency

__all__ = [
    "DEFAULT_NOISE",
    "DEFAULT_SAMPLES",
    "OBJECTIVES",
    "PREDICTED",
    "BatchObjective",
    "SaliencyResult",
    "class_score",
    "cross_entropy",
    "input_gradients",
    "smoothgrad_saliency",
    "vanilla_saliency",
]
