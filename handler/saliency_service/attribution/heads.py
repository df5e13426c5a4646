"""A class score's gradient at the last convolutional block, in closed form where the head allows.

SqueezeNet's classifier after its last Fire module (``features[12]``, the Grad-CAM layer) is
dropout (the identity in eval mode), a 1x1 convolution to one map per class, ReLU and global
average pooling. With ``A`` the layer's output (C, h, w) and ``z = W A + b`` the class maps::

    S_y = 1/(h w) sum_ij ReLU(z_yij)      so      d S_y / d A_kij = W_yk [z_yij > 0] / (h w)

Autograd gets the same gradient by multiplying a dense (N h w x K) gradient, nonzero in one
column per sample, by the (K x C) weights: for SqueezeNet 1.1 (K = 1000, C = 512, 13 x 13) about
87 M multiply-adds per image, a quarter of the whole forward pass. The closed form needs the
forward pass's class map of the target (to know where ReLU passes) and C h w products.

Only the class score has this shortcut: the cross-entropy's gradient mixes every class's map,
which is the dense product again (``passes`` differentiates it with autograd).

The same head makes input gradients of the class score cheaper (``TargetScores``, used by the
sampled methods): the score is ``S_y = mean_ij ReLU(sum_k W_yk A_kij + b_y)``, so a forward pass
through the features followed by the target's class map alone (C h w multiply-adds instead of
K C h w) gives exactly the logit that the whole model computes, and autograd differentiates it
from there down to the input. The 1x1 convolution's 87 M multiply-adds per image go from both the
forward and the backward pass: a quarter of the multiply-adds, but less of the time on a CPU,
where memory-bound passes (ReLU's backward, pooling, concatenation) weigh as much as the
convolutions. The features also pool before their first ReLU instead of after it (the same
numbers, a quarter of that ReLU's work: ``_pooled_first``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import SqueezeNet


@dataclass(frozen=True)
class PooledClassMaps:
    """A head ``flatten(avgpool(ReLU(conv1x1(dropout(A)))))`` after the explained layer."""

    conv: nn.Conv2d  # the 1x1 convolution to class maps
    relu: nn.Module  # its output marks where each class map is positive

    @classmethod
    def after(cls, model: nn.Module, layer: nn.Module | None) -> PooledClassMaps | None:
        """The head if ``model`` is torchvision's SqueezeNet (its own ``forward``), in eval mode,
        with its stock classifier, and ``layer`` is its last feature module; else ``None``."""
        if layer is None or not isinstance(model, SqueezeNet) or model.training:
            return None
        if type(model).forward is not SqueezeNet.forward or not len(model.features):
            return None
        if model.features[-1] is not layer or not isinstance(model.classifier, nn.Sequential):
            return None
        parts = list(model.classifier)
        kinds = (nn.Dropout, nn.Conv2d, nn.ReLU, nn.AdaptiveAvgPool2d)
        if len(parts) != len(kinds) or any(
            type(part) is not kind or part.training for part, kind in zip(parts, kinds, strict=True)
        ):
            return None
        _, conv, relu, pool = parts
        pointwise = (
            conv.kernel_size == (1, 1)
            and conv.stride == (1, 1)
            and conv.padding == (0, 0)
            and conv.dilation == (1, 1)
            and conv.groups == 1
        )
        if not pointwise or pool.output_size not in (1, (1, 1)):
            return None
        return cls(conv, relu)

    def score_gradients(self, class_maps: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``d S_y / d A`` of shape (N, C, h, w), from the ReLU's output (N, K, h, w) of the
        forward pass and the resolved targets (N,)."""
        rows = torch.arange(len(targets), device=class_maps.device)
        height, width = class_maps.shape[2:]
        # Where ReLU lets the target's map through, times the pooling's 1/(h w): what autograd
        # sends back through ReLU and the average, multiplied into the target's weights below.
        passes = (class_maps[rows, targets] > 0).to(class_maps.dtype) / (height * width)
        weights = self.conv.weight[targets, :, 0, 0].to(class_maps.dtype)  # (N, C)
        return weights[:, :, None, None] * passes[:, None]

    def scores(self, activations: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``S_y`` of each sample (N,), differentiable, from the layer's output ``A`` (N, C, h, w)
        and the resolved targets (N,): the target's class map ``z_y = W_y A + b_y`` alone, through
        ReLU and the average. Equal to the whole head's logit ``y`` up to float rounding."""
        weights = self.conv.weight[targets, :, 0, 0].to(activations.dtype)  # (N, C)
        class_maps = torch.einsum("nc,nchw->nhw", weights, activations)
        if self.conv.bias is not None:
            class_maps = class_maps + self.conv.bias[targets].to(activations.dtype)[:, None, None]
        return class_maps.relu().mean(dim=(1, 2))


@dataclass(frozen=True)
class TargetScores:
    """A whole SqueezeNet's class score ``S_y`` per sample, from its features and one class map.

    Called with a batch and its targets it returns what ``logits.gather(1, targets[:, None])``
    of ``model(inputs)`` would, without the other classes' maps: a differentiable function of the
    inputs whose gradient is the class score's input gradient.
    """

    layers: tuple[nn.Module, ...]  # the features' modules, in the order they run here
    head: PooledClassMaps

    @classmethod
    def of(cls, model: nn.Module) -> TargetScores | None:
        """The shortcut if ``model`` is torchvision's SqueezeNet with a recognised head (eval
        mode, its own ``forward``: ``PooledClassMaps.after`` its last feature module) and no hook
        on the model or its head, which the shortcut would skip; else ``None``."""
        if not isinstance(model, SqueezeNet) or not isinstance(model.features, nn.Sequential):
            return None
        head = PooledClassMaps.after(model, model.features[-1]) if len(model.features) else None
        if head is None or _hooked([model, model.classifier, *model.classifier]):
            return None
        return cls(_pooled_first(model.features), head)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Targets resolved under TorchServe's inference mode are inference tensors, which autograd
        # cannot save (it keeps the index of a trainable weight): a clone made here can be saved.
        targets = targets.clone() if targets.is_inference() else targets
        activations = inputs
        for layer in self.layers:
            activations = layer(activations)
        return self.head.scores(activations, targets)


def _pooled_first(features: nn.Sequential) -> tuple[nn.Module, ...]:
    """The modules of ``features`` in an order that gives the same output and gradient, faster:
    a ReLU followed by max pooling runs after it instead.

    ``maxpool(ReLU(z)) = ReLU(maxpool(z))`` exactly, ReLU being monotone, and so is the gradient:
    where a window's maximum is positive both send it to the same (first) maximal element, where
    it is not both send nothing. SqueezeNet's first ReLU then works on a quarter of the elements
    (55 x 55 instead of 111 x 111): its backward pass is a large memory-bound pass over the
    biggest activations, ~7% of an input gradient. Modules with hooks keep their order (the
    hooks would see other tensors), and a hooked ``features`` runs as itself.
    """
    if _hooked([features]):
        return (features,)
    layers = list(features)
    for n in range(len(layers) - 1):
        relu, pool = layers[n], layers[n + 1]
        if type(relu) is nn.ReLU and type(pool) is nn.MaxPool2d and not pool.return_indices:
            layers[n : n + 2] = [relu, pool] if _hooked([relu, pool]) else [pool, relu]
    return tuple(layers)


def _hooked(modules: Iterable[nn.Module]) -> bool:
    """Whether any of the modules has a forward or backward hook of its own."""
    kinds = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
    return any(getattr(module, kind, None) for module in modules for kind in kinds)
