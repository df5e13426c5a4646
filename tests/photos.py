"""Real photos with known ImageNet classes, from places that exist on any machine.

scikit-image bundles chelsea (a cat) and coffee (an espresso). More labelled photos can be
added with SALIENCY_TEST_IMAGES=/dir (files named after ``KNOWN_CLASSES``); CI points it at the
team's shared photos.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CAT_CLASSES = set(range(281, 288))  # tabby ... cheetah-free cat classes 281-287
KNOWN_CLASSES = {  # file stem -> acceptable ImageNet classes in the top 3
    "chelsea": CAT_CLASSES,
    "coffee": {967},
    "kitten": CAT_CLASSES,
    "dog2": {207, 208},
}


def encode(image: Image.Image | np.ndarray, fmt: str = "PNG", **params: Any) -> bytes:
    """The file bytes of ``image`` (pixels or a PIL image) in ``fmt``, with Pillow's ``params``."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def packaged_photos() -> dict[str, bytes]:
    from skimage import data

    return {"chelsea": encode(data.chelsea()), "coffee": encode(data.coffee())}


def extra_photos() -> dict[str, bytes]:
    folder = os.environ.get("SALIENCY_TEST_IMAGES")
    if not folder:
        return {}
    found = {
        path.stem: path.read_bytes()
        for path in sorted(Path(folder).iterdir())
        if path.stem in KNOWN_CLASSES and path.is_file()
    }
    if not found:
        raise FileNotFoundError(
            f"SALIENCY_TEST_IMAGES={folder} holds none of {sorted(KNOWN_CLASSES)}"
        )
    return found


def labelled_photos() -> dict[str, bytes]:
    """Every labelled photo available here: scikit-image's, plus SALIENCY_TEST_IMAGES' if set."""
    return {**packaged_photos(), **extra_photos()}
