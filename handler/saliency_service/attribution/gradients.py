"""The one place where autograd is switched on: gradients of per-sample objectives.

TorchServe runs handlers under ``torch.inference_mode()``, where ``enable_grad`` alone does not
bring autograd back: every pass here leaves inference mode first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PassGradients:
    """What one forward and one backward pass of a batch give, detached."""

    logits: torch.Tensor  # (N, K)
    inputs: torch.Tensor | None  # d objective / d inputs, (N, C, H, W); None if not asked for
    activations: torch.Tensor | None  # the layer's output, (N, C', H', W'); None without a layer
    layer: torch.Tensor | None  # d objective / d activations; None without a layer
    kept: tuple[torch.Tensor, ...] = ()  # outputs of the modules ``keep`` named, detached


def input_gradients(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and one backward pass of a batch; gradients w.r.t. the inputs only.

    Parameters
    ----------
    model
        A classifier in eval mode. Its parameters should be frozen (``requires_grad_(False)``) so
        that no weight gradient is computed or accumulated; the result is the same either way.
        Any function of the batch computed by such modules will do, e.g. one that gives only the
        values to differentiate (``heads.TargetScores``, with an identity ``objective``).
    inputs
        ``(N, C, H, W)``. May be an inference tensor.
    objective
        Maps the logits ``(N, K)`` to one value per sample ``(N,)``; their sum is differentiated.
        Samples are independent in eval mode, so sample i's gradient is its own objective's.

    Returns
    -------
    gradients, logits
        ``d objective_i / d inputs_i`` of shape ``(N, C, H, W)``, and the detached logits.
    """
    result = pass_gradients(model, inputs, objective)
    assert result.inputs is not None
    return result.inputs, result.logits


def pass_gradients(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    layer: nn.Module | None = None,
    wrt_inputs: bool = True,
    keep: Sequence[nn.Module] = (),
) -> PassGradients:
    """One forward and one backward pass giving the input and/or a layer's gradients.

    With ``layer``, its output is recorded by a forward hook and differentiated too: one
    backward pass serves maps from the input gradient (vanilla) and from the layer (Grad-CAM).
    With ``wrt_inputs=False`` the layer's output becomes a leaf: no graph is recorded before it
    and the backward pass stops there, which is much cheaper. The outputs of the modules in
    ``keep`` (each run once) come back too, for what else needs this forward pass.
    """
    if layer is None and not wrt_inputs:
        raise ValueError("nothing to differentiate: give a layer or wrt_inputs=True")
    recorded: list[torch.Tensor] = []

    def record(_module: nn.Module, _args: object, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"the explained layer returns a {type(output).__name__}")
        if not wrt_inputs:  # a fresh leaf: no graph is built (or kept) before the layer
            output = output.detach().requires_grad_(True)
        recorded.append(output)
        return output

    hook = layer.register_forward_hook(record) if layer is not None else None
    kept: dict[nn.Module, list[torch.Tensor]] = {module: [] for module in keep}
    keepers = [m.register_forward_hook(lambda m, _a, out: kept[m].append(out)) for m in kept]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            # An inference tensor cannot enter autograd: a clone made outside inference mode can.
            x = inputs.clone() if inputs.is_inference() else inputs.detach()
            x.requires_grad_(wrt_inputs)
            logits = model(x)
            if layer is not None and len(recorded) != 1:
                raise RuntimeError(f"the explained layer ran {len(recorded)} times, not once")
            if any(len(outputs) != 1 for outputs in kept.values()):
                raise RuntimeError("a module to keep did not run exactly once")
            wanted = ([x] if wrt_inputs else []) + recorded
            gradients = torch.autograd.grad(objective(logits).sum(), wanted)
    finally:
        for handle in [hook, *keepers]:
            if handle is not None:
                handle.remove()
    input_gradient = gradients[0] if wrt_inputs else None
    layer_gradient = gradients[-1] if layer is not None else None
    activations = recorded[0].detach() if layer is not None else None
    outputs = tuple(kept[module][0].detach() for module in keep)
    return PassGradients(logits.detach(), input_gradient, activations, layer_gradient, outputs)
