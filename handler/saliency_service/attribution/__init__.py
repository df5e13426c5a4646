"""Gradient attribution for image classifiers, in pure PyTorch.

One algorithm per module behind one call signature ``method(model, inputs, targets, objectives,
...)``; the gradient plumbing lives in ``gradients`` alone, and the methods that average over
derived inputs share ``sampled``'s chunked passes.
"""

from .gradcam import cam_from_gradients, gradcam
from .gradients import PassGradients, input_gradients, pass_gradients
from .integrated_gradients import DEFAULT_STEPS, gauss_legendre, integrated_gradients
from .objectives import OBJECTIVES, PREDICTED, BatchObjective, class_score, cross_entropy
from .result import SaliencyResult
from .smoothgrad import DEFAULT_NOISE, DEFAULT_SAMPLES, MAX_SEED, smoothgrad_saliency
from .vanilla import vanilla_saliency

__all__ = [
    "DEFAULT_NOISE",
    "DEFAULT_SAMPLES",
    "DEFAULT_STEPS",
    "MAX_SEED",
    "OBJECTIVES",
    "PREDICTED",
    "BatchObjective",
    "PassGradients",
    "SaliencyResult",
    "cam_from_gradients",
    "class_score",
    "cross_entropy",
    "gauss_legendre",
    "gradcam",
    "input_gradients",
    "integrated_gradients",
    "pass_gradients",
    "smoothgrad_saliency",
    "vanilla_saliency",
]
