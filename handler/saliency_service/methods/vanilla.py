"""``vanilla``: the gradient map of Simonyan, Vedaldi & Zisserman (2014), the default."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..attribution.gradients import PassGradients
from .base import ExplainContext, SinglePassMethod


class Vanilla(SinglePassMethod):
    """``max_c |d f_y / d x_c|``: how much each pixel's change would change the objective.

    Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps", ICLR Workshop 2014, section 3.1.
    """

    name = "vanilla"
    summary = "gradient magnitude per pixel (Simonyan et al. 2014): one pass, sharp but noisy"

    def maps(
        self,
        passed: PassGradients,
        rows: Sequence[int],
        size: tuple[int, int],
        context: ExplainContext,
    ) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        assert passed.inputs is not None
        return [(passed.inputs[row].abs().amax(dim=0), {}) for row in rows]
