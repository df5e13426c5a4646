"""The model-parameter randomisation test (Adebayo et al. 2018) and Spearman rank correlation.

A map that explains the *model* must change when the model's learned weights are destroyed; one
that barely changes shows the image (edges, texture), not what the network learned. Adebayo,
Gilmer, Muelly, Goodfellow, Hardt & Kim, "Sanity Checks for Saliency Maps", NeurIPS 2018, the
model parameter randomisation test with "cascading randomization": re-initialise the weights
layer by layer, from the output down to the input, and compare each randomised model's map with
the original one by rank correlation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from saliency_tools.ranks import spearman


@dataclass(frozen=True)
class RandomisationStep:
    """Maps after re-initialising every block down to ``block`` (``None``: the trained model)."""

    block: str | None
    maps: torch.Tensor  # (N, H, W)
    correlations: torch.Tensor  # (N,) Spearman rank correlation with the trained model's maps


def cascading_blocks(model: nn.Module) -> list[str]:
    """Blocks to randomise, output first: every parametrised layer, named by its first two name
    components (for torchvision's SqueezeNet: ``classifier.1`` (conv10), each Fire module
    ``features.12`` ... ``features.3``, then ``features.0`` (conv1)), in reverse forward order.

    The order of ``named_modules`` is the order of definition, which for sequential models such
    as SqueezeNet is the forward order.
    """
    blocks: list[str] = []
    for name, module in model.named_modules():
        if name and any(True for _ in module.parameters(recurse=False)):
            block = ".".join(name.split(".")[:2])
            if block not in blocks:
                blocks.append(block)
    return blocks[::-1]


def reinitialise(block: nn.Module, seed: int) -> None:
    """Re-draw every parameter of ``block`` as at the start of training, from a fixed seed.

    Weights of convolutions and linear layers (2 or more dimensions) get He initialisation
    (``kaiming_uniform_`` with the ReLU gain), the initialiser torchvision's SqueezeNet is trained
    from; biases become 0 and other 1-dimensional weights (normalisation scales) 1. PyTorch's
    generic ``reset_parameters`` would be a poor choice here: its smaller gain and random biases
    shrink the signal layer after layer until every ReLU of the randomised network is dead and
    every map is exactly 0, which says nothing about the method. The global random state is
    left untouched.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in block.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if parameter.dim() >= 2:
                    nn.init.kaiming_uniform_(parameter, nonlinearity="relu")
                elif name == "bias":
                    nn.init.zeros_(parameter)
                else:
                    nn.init.ones_(parameter)


def cascading_randomisation(
    model: nn.Module,
    explain: Callable[[nn.Module], torch.Tensor],
    blocks: Sequence[str] | None = None,
    seed: int = 0,
) -> list[RandomisationStep]:
    """Maps of the trained model, then after re-initialising each block in turn, cumulatively.

    Parameters
    ----------
    model
        The trained classifier; it is not modified (a copy is randomised).
    explain
        ``explain(model) -> (N, H, W)`` maps of fixed inputs for fixed target classes: the class
        each map explains must not follow the randomised model's (meaningless) prediction.
    blocks
        Submodule names in the order to randomise them; default ``cascading_blocks(model)``,
        from the output down to the input.
    seed
        Block k is re-initialised with seed ``seed + k``.

    Returns
    -------
    list[RandomisationStep]
        The trained model's step first (correlation 1), then one step per block.
    """
    return cascading_randomisation_many(model, lambda m: {"": explain(m)}, blocks, seed)[""]


def cascading_randomisation_many(
    model: nn.Module,
    explain: Callable[[nn.Module], Mapping[str, torch.Tensor]],
    blocks: Sequence[str] | None = None,
    seed: int = 0,
) -> dict[str, list[RandomisationStep]]:
    """``cascading_randomisation`` of several methods at once, ``explain(model) -> {method:
    (N, H, W) maps}``: every method sees the same randomised models, and one call per model
    lets the methods share its forward and backward passes."""
    original = dict(explain(model))
    steps = {name: [RandomisationStep(None, m, spearman(m, m))] for name, m in original.items()}
    randomised = copy.deepcopy(model)
    for k, block in enumerate(cascading_blocks(model) if blocks is None else blocks):
        reinitialise(randomised.get_submodule(block), seed + k)
        for name, maps in explain(randomised).items():
            steps[name].append(RandomisationStep(block, maps, spearman(original[name], maps)))
    return steps
