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
"""

from __future__ import annotations

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
