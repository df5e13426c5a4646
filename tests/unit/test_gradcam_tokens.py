"""Grad-CAM of a Vision Transformer block: its tokens taken as their patch grid, equal to
pytorch-grad-cam with the ``reshape_transform`` its documentation gives for ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torchvision.models.vision_transformer import VisionTransformer

from saliency_service.attribution.gradcam import gradcam, tokens_to_grid

SIDE = 7  # 224 / 32 patches a side


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = VisionTransformer(224, 32, 2, 2, 32, 64, num_classes=5)
        torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts it at zero
    return model.double().eval().requires_grad_(False)


def library_reshape(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ViT example: drop the class token, tokens to (N, D, h, w)."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), SIDE, SIDE, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def test_tokens_become_their_patch_grid() -> None:
    tokens = torch.arange(2 * 50 * 3, dtype=torch.float64).reshape(2, 50, 3)
    grid = tokens_to_grid(tokens)
    assert torch.equal(grid, library_reshape(tokens))
    assert torch.equal(tokens_to_grid(tokens[:, 1:]), grid)  # no class token: all of them
    with pytest.raises(ValueError, match="no square grid"):
        tokens_to_grid(tokens[:, :30])


def test_vit_block_maps_match_pytorch_grad_cam(vit) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(4)
        inputs = torch.randn(3, 3, 224, 224, dtype=torch.float64)
    targets = torch.tensor([0, 3, 4])
    # The last block's patch tokens reach the head only through the class token: their
    # gradient is zero. The one before (pytorch-grad-cam's advice) still mixes into it.
    block = vit.encoder.layers.encoder_layer_0
    result, coarse = gradcam(vit, block, inputs, targets, "score")
    assert coarse.shape == (3, SIDE, SIDE)
    with GradCAM(model=vit, target_layers=[block], reshape_transform=library_reshape) as cam:
        expected = cam(
            input_tensor=inputs.clone().requires_grad_(True),
            targets=[ClassifierOutputTarget(int(y)) for y in targets],
        )
    maps = result.maps.detach()
    low = maps.amin(dim=(1, 2), keepdim=True)
    ours = ((maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low)).numpy()
    assert (coarse.amax(dim=(1, 2)) > 0).all()
    for n in range(3):  # Pearson per image, as for the convolutional layers
        assert np.corrcoef(ours[n].ravel(), expected[n].ravel())[0, 1] >= 0.999
    # Another class gives another map: the comparison can fail.
    other, _ = gradcam(vit, block, inputs, torch.tensor([1, 1, 1]), "score")
    assert not torch.allclose(other.maps, result.maps)
