"""``gradcam``: Grad-CAM on the model's last convolutional block (Selvaraju et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .. import errors
from ..attribution.gradcam import cam_from_gradients, upsample
from ..attribution.gradients import PassGradients
from .base import ExplainContext, SinglePassMethod


class GradCam(SinglePassMethod):
    """ReLU of the layer's activations weighted by their spatially averaged gradients, upsampled
    bilinearly to the input; see ``attribution.gradcam``."""

    name = "gradcam"
    summary = "class-discriminative regions at the last conv block (Selvaraju et al. 2017)"
    wants_input_gradient = False
    wants_layer = True

    def check(self, context: ExplainContext) -> None:
        if context.cam_layer is None:
            raise errors.invalid_option(
                "method",
                f"gradcam needs a convolutional layer, and {context.cam_missing}; the other "
                "methods work",
            )

    def maps(
        self,
        passed: PassGradients,
        rows: Sequence[int],
        size: tuple[int, int],
        context: ExplainContext,
    ) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        assert passed.activations is not None and passed.layer is not None
        index = torch.tensor(list(rows), device=passed.layer.device)
        coarse = cam_from_gradients(passed.activations[index], passed.layer[index])
        fine = upsample(coarse, size)
        height, width = coarse.shape[1:]
        extra = {"layer": context.cam_layer_name, "coarse_width": width, "coarse_height": height}
        return [(fine[n], dict(extra)) for n in range(len(rows))]
