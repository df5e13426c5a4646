"""The single-pass gradients of a batch: each row gets what its method needs, and no more.

A row wants the input gradient (vanilla), the Grad-CAM layer's output and gradient, or both.
Rows are grouped by what their gradient costs:

- **input**: a forward pass recording autograd from the input, and a backward pass to it
  (~3 forward passes' work). The layer's gradient comes along if a row wants it.
- **layer**: no graph below the layer; a backward pass through the head only (``gradients``).
- **closed**: the class score of a head with a closed-form gradient (``heads``): one forward
  pass without autograd, as classification costs. Grad-CAM of the score, the default, is here.

Closed rows need only the forward pass of their image: one whose image is also in another
group's pass (vanilla and Grad-CAM of the same photo) takes that pass's, and identical images
among them pass once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .gradients import PassGradients, pass_gradients
from .heads import PooledClassMaps
from .objectives import PREDICTED, BatchObjective, resolve_targets


def batch_pass(
    model: nn.Module,
    inputs: torch.Tensor,
    objectives: Sequence[str],
    requested: torch.Tensor | None,
    wants_input: Sequence[bool],
    wants_layer: Sequence[bool],
    layer: nn.Module | None = None,
) -> tuple[PassGradients, torch.Tensor]:
    """Every row's logits and the gradients it wants, however many passes that takes.

    Parameters
    ----------
    model
        Classifier in eval mode with frozen parameters.
    inputs
        ``(N, C, H, W)``; may be inference tensors.
    objectives
        ``"score"`` or ``"loss"`` per row.
    requested
        ``(N,)`` class indices, ``PREDICTED`` for the predicted class; ``None``: all predicted.
    wants_input, wants_layer
        Per row: its input gradient, and ``layer``'s output and gradient.
    layer
        The explained layer, needed if any row wants it.

    Returns
    -------
    passed, targets
        Row-aligned: logits ``(N, K)``; input gradients ``(N, C, H, W)`` (zero in rows that do
        not want them; ``None`` if none does); the layer's outputs and gradients (likewise);
        and the resolved targets ``(N,)``.
    """
    count = len(inputs)
    if not (len(objectives) == len(wants_input) == len(wants_layer) == count):
        raise ValueError("one objective, wants_input and wants_layer per row")
    if not any(wants_input) and not any(wants_layer):
        raise ValueError("no row wants a gradient")
    if any(wants_layer) and layer is None:
        raise ValueError("a row wants the layer's gradient and no layer was given")
    if requested is None:
        requested = torch.full((count,), PREDICTED, dtype=torch.long, device=inputs.device)
    head = PooledClassMaps.after(model, layer) if any(wants_layer) else None
    closed = [
        n
        for n in range(count)
        if head is not None and wants_layer[n] and not wants_input[n] and objectives[n] == "score"
    ]
    graded = {
        "input": [n for n in range(count) if wants_input[n]],
        "layer": [n for n in range(count) if wants_layer[n] and not wants_input[n]],
    }
    graded["layer"] = [n for n in graded["layer"] if n not in closed]
    copies = _copies(inputs, closed, graded["input"] + graded["layer"] + closed)

    rows = _Rows(count)
    for kind, members in graded.items():
        if not members:
            continue
        # The layer is hooked if a row wants it or a closed row takes this pass's forward.
        needed = any(wants_layer[n] or n in copies.values() for n in members)
        objective = BatchObjective(
            [objectives[n] for n in members], requested[members], len(members)
        )
        passed = pass_gradients(
            model,
            _take(inputs, members),
            objective,
            layer=layer if needed else None,
            wrt_inputs=kind == "input",
            keep=(head.relu,) if head is not None and needed else (),
        )
        assert objective.targets is not None
        rows.put(members, passed, objective.targets)
    if closed:
        assert head is not None and layer is not None
        own = [n for n in closed if copies[n] == n]  # images that no pass has seen yet
        if own:
            logits, activations, class_maps = _forward(model, _take(inputs, own), layer, head.relu)
            passed = PassGradients(logits, None, activations, None, (class_maps,))
            rows.put(own, passed, resolve_targets(logits, requested[own]))
        shared = [n for n in closed if copies[n] != n]
        if shared:
            rows.share(shared, [copies[n] for n in shared], requested[shared])
        at = torch.tensor(closed, device=inputs.device)
        fields = rows.fields
        fields["layer"][at] = head.score_gradients(fields["class_maps"][at], fields["targets"][at])
    return rows.result(), rows.fields["targets"]


class _Rows:
    """Row-aligned results assembled from several passes; rows no pass filled stay zero."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.fields: dict[str, torch.Tensor] = {}

    def _into(self, name: str, members: Sequence[int], values: torch.Tensor) -> None:
        if name not in self.fields:
            self.fields[name] = values.new_zeros((self.count, *values.shape[1:]))
        self.fields[name][list(members)] = values

    def put(self, members: Sequence[int], passed: PassGradients, targets: torch.Tensor) -> None:
        self._into("logits", members, passed.logits)
        self._into("targets", members, targets)
        if passed.inputs is not None:
            self._into("inputs", members, passed.inputs)
        if passed.activations is not None:
            self._into("activations", members, passed.activations)
            # zero until ``batch_pass`` writes the closed rows' gradients
            layer = passed.layer if passed.layer is not None else passed.activations.new_zeros(())
            self._into("layer", members, layer.expand_as(passed.activations))
        if passed.kept:
            self._into("class_maps", members, passed.kept[0])

    def share(self, rows: Sequence[int], sources: Sequence[int], requested: torch.Tensor) -> None:
        """``rows`` hold the images of ``sources``: the same forward pass, their own targets."""
        for name in ("logits", "activations", "class_maps"):
            self.fields[name][list(rows)] = self.fields[name][list(sources)]
        logits = self.fields["logits"][list(rows)]
        self.fields["targets"][list(rows)] = resolve_targets(logits, requested)

    def result(self) -> PassGradients:
        get = self.fields.get
        return PassGradients(get("logits"), get("inputs"), get("activations"), get("layer"))


def _take(inputs: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """The rows of a batch; the batch itself (no copy) when that is all of them."""
    return inputs if list(rows) == list(range(len(inputs))) else inputs[list(rows)]


def _forward(
    model: nn.Module, inputs: torch.Tensor, layer: nn.Module, relu: nn.Module
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, the layer's output and the head's ReLU output, without autograd."""
    outputs: dict[nn.Module, list[torch.Tensor]] = {layer: [], relu: []}
    hooks = [m.register_forward_hook(lambda m, _a, out: outputs[m].append(out)) for m in outputs]
    try:
        with torch.no_grad():
            logits = model(inputs)
    finally:
        for hook in hooks:
            hook.remove()
    if any(len(recorded) != 1 for recorded in outputs.values()):
        raise RuntimeError("the explained layer or the head ran more than once")
    return logits, outputs[layer][0], outputs[relu][0]


def _copies(inputs: torch.Tensor, rows: Sequence[int], candidates: Sequence[int]) -> dict[int, int]:
    """For each of ``rows``, the first of ``candidates`` (in order) holding the same image."""
    if not rows:
        return {}
    # A grid of a few values per image finds candidate pairs cheaply; torch.equal confirms each.
    step = max(1, min(inputs.shape[2:]) // 8)
    probe = inputs[:, :, ::step, ::step].cpu()
    return {
        n: next(
            m
            for m in candidates
            if m == n or (torch.equal(probe[m], probe[n]) and torch.equal(inputs[m], inputs[n]))
        )
        for n in rows
    }
