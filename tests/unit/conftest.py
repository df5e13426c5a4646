"""Shared fixtures of the unit tests: a deterministic random-init model, the real labels, photos.

Nothing here reads files outside the repository or downloads anything: the model is SqueezeNet 1.1
with a seeded random initialisation, the class names ship with torchvision and the photos with
scikit-image.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from photos import encode

from saliency_service.labels import Labels, torchvision_categories
from saliency_service.model import build_model

SEED = 1234
# Intra-op threads of the unit tests. Small batches gain little from more, while on a busy 2-core
# machine two OpenMP threads thrash (suite measured there: 110 s with 2, 28 s with 1). Results
# must not depend on it: SALIENCY_TEST_THREADS=2 runs the suite with two.
THREADS = int(os.environ.get("SALIENCY_TEST_THREADS", "1"))


@pytest.fixture(scope="module", autouse=True)
def torch_threads():
    """The previous setting comes back after each module, for whatever runs next."""
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def pristine_model() -> torch.nn.Module:
    """SqueezeNet 1.1, eval mode, frozen, randomly initialised from a fixed seed; never handed
    out itself. ``fork_rng`` keeps the global random state of the other tests untouched."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        return build_model()


@pytest.fixture(scope="module")
def model(pristine_model: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of its own for each module. A ``SaliencyService`` owns its model and
    re-lays it out in place (channels_last): one shared instance made every later module's
    results depend on which modules ran before it."""
    return copy.deepcopy(pristine_model)


@pytest.fixture(scope="module")
def exact_model(pristine_model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in float64, for comparisons whose point is exactness (batched against
    one at a time, vectorised against naive). In float32 those differ by more than rounding on
    some CPUs: near-ties in max pooling route a patch's gradient through the other branch
    depending on the kernel's summation order (tests/reference.py); in float64 the near-ties
    that float32 rounding can flip are ~1e9 times rarer and smaller."""
    return copy.deepcopy(pristine_model).double()


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


@pytest.fixture(scope="session")
def tiny_programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The custom 10-class CNN (tests/custom_models.py) saved as TorchScript, as a torch.export
    program with a dynamic batch and as one with a fixed batch (``static``). Exporting takes
    about a second; the files are only read (test_custom_models.py, test_build_mar_custom.py)."""
    from custom_models import save_exported, save_torchscript, tiny_net

    directory = tmp_path_factory.mktemp("tiny_programs")
    net = tiny_net()
    return {
        "torchscript": save_torchscript(net, directory / "tiny.pt"),
        "export": save_exported(net, directory / "tiny.pt2"),
        "static": save_exported(net, directory / "static.pt2", dynamic=False),
    }
