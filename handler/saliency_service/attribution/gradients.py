"""The one place where autograd is switched on: gradients of per-sample objectives w.r.t. inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def input_gradients(
    model: nn.Module,
    inputs: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and one backward pass of a batch; gradients w.r.t. the inputs only.

    Parameters
    ----------
    model
        A classifier in eval mode. Its parameters should be frozen (``requires_grad_(False)``) so
        that no weight gradient is computed or accumulated; the result is the same either way.
    inputs
        ``(N, C, H, W)``. May be an inference tensor: TorchServe runs handlers under
        ``torch.inference_mode()``, where ``enable_grad`` alone does not bring autograd back.
    objective
        Maps the logits ``(N, K)`` to one value per sample ``(N,)``; their sum is differentiated.

    Returns
    -------
    gradients, logits
        ``d objective_i / d inputs_i`` of shape ``(N, C, H, W)``, and the detached logits.
    """
    with torch.inference_mode(False), torch.enable_grad():
        # An inference tensor cannot enter autograd: a clone made outside inference mode can.
        x = inputs.clone() if inputs.is_inference() else inputs.detach()
        x.requires_grad_(True)
        logits = model(x)
        (gradients,) = torch.autograd.grad(objective(logits).sum(), x)
    return gradients, logits.detach()
