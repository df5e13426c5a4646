"""The photos the experiment explains: scikit-image's natural ones or a folder's, preprocessed
exactly as the server does (saliency_service.images)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from saliency_service import images

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# scikit-image's natural photos of something ImageNet has a class for (free to publish):
# name -> the skimage.data function. Textures, micrographs and drawings are left out.
SKIMAGE_PHOTOS = {
    "chelsea": "chelsea",  # a tabby cat
    "coffee": "coffee",  # an espresso
    "astronaut": "astronaut",  # Eileen Collins in a space suit (no ImageNet class fits well)
    "rocket": "rocket",  # a rocket on its launch pad
    "motorcycle": "stereo_motorcycle",  # the left view of the stereo pair
    "camera": "camera",  # the cameraman with his tripod (grayscale)
    "clock": "clock",  # a wall clock, motion-blurred (grayscale)
}


@dataclass(frozen=True)
class Photos:
    names: list[str]
    inputs: torch.Tensor  # (N, 3, 224, 224), preprocessed as the server does
    crops: list[Image.Image]  # what the model saw


def skimage_photos() -> dict[str, bytes]:
    """scikit-image's photos (SKIMAGE_PHOTOS), PNG-encoded: decoded as an upload would be."""
    from skimage import data

    encoded = {}
    for name, function in SKIMAGE_PHOTOS.items():
        pixels = getattr(data, function)()
        pixels = pixels[0] if isinstance(pixels, tuple) else pixels  # stereo: (left, right, ...)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded[name] = buffer.getvalue()
    return encoded


def folder_photos(folder: Path) -> dict[str, bytes]:
    """The folder's image files (by suffix), in name order, keyed by their stem."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SystemExit(f"error: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return {path.stem: path.read_bytes() for path in files}


def prepare(encoded: dict[str, bytes]) -> Photos:
    """Decode and preprocess each photo as the server does; the names keep their order."""
    prepared = [images.preprocess(images.decode(data)) for data in encoded.values()]
    return Photos(
        list(encoded), torch.stack([p.tensor for p in prepared]), [p.crop for p in prepared]
    )
