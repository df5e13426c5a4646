"""Independent expectations: the textbook way to compute what the service computes.

Deliberately naive (one image at a time, torchvision's stock transforms, ``.backward()``), so
that it shares no code with ``saliency_service`` beyond the model weights; and in float64, so
that it is the exact gradient rather than one more float32 rounding of it.
"""

from __future__ import annotations

import base64
import copy
import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision import transforms

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # ImageNet's, as torchvision's weights
# A black image in the normalised input space: Integrated Gradients' "black" baseline.
BLACK = (-torch.tensor(MEAN, dtype=torch.float64) / torch.tensor(STD)).view(3, 1, 1)


def preprocess(crop: int = 224, resize: int | None = 256) -> transforms.Compose:
    """torchvision's stock transforms: resize the short side (to ``crop`` if None), centre crop,
    to tensor, normalise."""
    return transforms.Compose(
        [
            transforms.Resize(resize or crop),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(mean=MEAN, std=STD),
        ]
    )


RESIZE_CROP = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
STANDARD_PREPROCESS = preprocess()


def load_rgb(data: bytes) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def gradient_map(
    model: torch.nn.Module, image: torch.Tensor, target: int | None = None, objective: str = "score"
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """(map (H, W), target class, logits) of one preprocessed (3, H, W) image, in its dtype.

    Simonyan et al. 2014, section 3.1: a fresh leaf tensor, one forward pass, ``.backward()`` of
    the class score S_y (``objective="score"``) or of the cross-entropy (``"loss"``), and the
    maximum over colour channels of |grad|. ``target`` None: the predicted class.
    """
    x = image.detach().clone().unsqueeze(0).requires_grad_(True)
    logits = model(x)
    y = int(logits.argmax()) if target is None else int(target)
    if objective == "score":
        logits[0, y].backward()
    else:
        F.cross_entropy(logits, torch.tensor([y])).backward()
    return x.grad[0].abs().max(dim=0).values, y, logits.detach()[0]


def saliency(
    model: torch.nn.Module, data: bytes, target: int | None = None, objective: str = "score"
) -> tuple[np.ndarray, int, torch.Tensor]:
    """(map (224, 224), target class, logits) for one encoded image, cs231n style: computed in
    float64, returned as float32."""
    exact = copy.deepcopy(model).double()
    image = STANDARD_PREPROCESS(load_rgb(data)).double()
    grad, y, logits = gradient_map(exact, image, target, objective)
    return grad.float().numpy(), y, logits.float()


# A float32 gradient of a max-pooling network is not a continuous function of rounding: where two
# pooled activations nearly tie, the summation order (kernel, memory layout, batch size) can send
# a patch's gradient through the other one. Measured against this float64 reference on the test
# photos (kitten, dog2, chelsea, coffee, skimage's astronaut and rocket, crops of them), float32
# maps in NCHW and in channels_last alike, alone or in batches of 8: at most 3.9 of 255 levels off,
# on at most 0.4% of the pixels; every other pixel within quantisation. A wrong map (another
# class, a neighbour's image, a skipped step) is off on most pixels.
MAX_LEVELS = 5
MIN_WITHIN_ONE_LEVEL = 0.99


def assert_maps_agree(
    a: np.ndarray, b: np.ndarray, scale: float, max_levels: float = MAX_LEVELS, band: float = 1
) -> None:
    """Maps of the same request agree up to float32 rounding, in 8-bit levels of ``scale``.

    No pixel is more than ``max_levels`` off, and at least 99% are within ``band`` levels.
    """
    levels = np.abs(a.astype(np.float64) - b.astype(np.float64)) / scale * 255
    within = float((levels <= band + 1e-6).mean())
    assert levels.max() <= max_levels + 1e-6, f"a pixel is {levels.max():.2f} levels off"
    assert within >= MIN_WITHIN_ONE_LEVEL, f"only {within:.2%} of pixels within {band} level(s)"


def decode_png(encoded: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())[0, 1])
