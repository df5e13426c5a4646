"""The photos the benchmarks send: scikit-image's real photos, or every image of a folder."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes  # what is POSTed
    size: tuple[int, int]


def jpeg(array: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def load_photos(folder: Path | None) -> list[Photo]:
    """scikit-image's real photos of several sizes as JPEG, or every image file in ``folder``."""
    if folder is not None:
        found = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in SUFFIXES:
                with Image.open(path) as image:
                    found.append(Photo(path.name, path.read_bytes(), image.size))
        if not found:
            raise SystemExit(f"error: no images in {folder}")
        return found
    from skimage import data

    arrays = {
        "chelsea": data.chelsea,
        "coffee": data.coffee,
        "astronaut": data.astronaut,
        "rocket": data.rocket,
        "motorcycle": lambda: data.stereo_motorcycle()[0],
        "hubble_deep_field": data.hubble_deep_field,
    }
    photos = []
    for name, make in arrays.items():
        array = make()
        photos.append(Photo(f"{name}.jpg", jpeg(array), (array.shape[1], array.shape[0])))
    return photos


def batch_rows(photos: list[Photo], size: int) -> list[bytes]:
    """``size`` photos' bytes, cycling through them."""
    return [photos[i % len(photos)].data for i in range(size)]
