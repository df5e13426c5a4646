"""Shared fixtures of the unit tests: a deterministic random-init model, the real labels, photos.

Nothing here reads files outside the repository or downloads anything: the model is SqueezeNet 1.1
with a seeded random initialisation, the class names ship with torchvision and the photos with
scikit-image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from hardening import encode

from saliency_service.labels import Labels, torchvision_categories
from saliency_service.model import build_model

SEED = 1234


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Unit tests run small batches, which gain little from more intra-op threads, while on a
    busy 2-core machine two OpenMP threads thrash (suite measured there: 110 s with 2, 28 s with 1).
    The previous setting comes back after each module, for whatever runs next."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def model() -> torch.nn.Module:
    """SqueezeNet 1.1, eval mode, frozen, randomly initialised from a fixed seed.

    ``fork_rng`` keeps the global random state of the other tests untouched.
    """
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return build_model()


@pytest.fixture(scope="session")
def labels() -> Labels:
    return Labels(torchvision_categories())


@pytest.fixture(scope="session")
def chelsea() -> np.ndarray:
    from skimage import data

    return data.chelsea()  # 451x300 RGB cat


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    from skimage import data

    return data.coffee()  # 600x400 RGB espresso cup


@pytest.fixture(scope="session")
def chelsea_png(chelsea: np.ndarray) -> bytes:
    return encode(chelsea, "PNG")


@pytest.fixture(scope="session")
def coffee_png(coffee: np.ndarray) -> bytes:
    return encode(coffee, "PNG")


@pytest.fixture(scope="session")
def chelsea_jpeg(chelsea: np.ndarray) -> bytes:
    return encode(chelsea, "JPEG", quality=90)


@pytest.fixture(scope="session")
def encoder() -> Callable[..., bytes]:
    """``encode`` as a fixture, so that test modules need not import this conftest."""
    return encode
