"""Vanilla gradient saliency (Simonyan, Vedaldi & Zisserman 2014)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .gradients import input_gradients
from .objectives import BatchObjective
from .result import SaliencyResult


def vanilla_saliency(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    objectives: str | Sequence[str] = "score",
) -> SaliencyResult:
    """Saliency maps of a batch in one forward and one backward pass.

    For an input x and target class y the map is the maximum over colour channels of
    ``|d f_y(x) / d x|``, where ``f_y`` is the class score ``S_y`` (objective ``"score"``) or the
    cross-entropy loss of class y (``"loss"``). Simonyan, Vedaldi & Zisserman, "Deep Inside
    Convolutional Networks: Visualising Image Classification Models and Saliency Maps", ICLR
    Workshop 2014, section 3.1.

    Parameters
    ----------
    model
        Classifier in eval mode, ideally with frozen parameters.
    inputs
        ``(N, 3, H, W)`` preprocessed images.
    targets
        ``(N,)`` class indices; ``-1`` (or ``None`` for all) means the predicted class.
    objectives
        ``"score"`` or ``"loss"``, for all samples or one per sample.

    Returns
    -------
    SaliencyResult
        ``maps`` of shape ``(N, H, W)``, the logits and the resolved targets.
    """
    objective = BatchObjective(objectives, targets, inputs.shape[0])
    gradients, logits = input_gradients(model, inputs, objective)
    maps = gradients.abs().amax(dim=1)
    return SaliencyResult(maps=maps, logits=logits, targets=objective.targets)
