"""Vanilla gradient saliency against the naive per-image reference (tests/reference.py).

The reference is the textbook recipe (Simonyan et al. 2014, section 3.1) for one image at a time:
a fresh leaf tensor, one forward pass, ``.backward()`` of S_y or of the cross-entropy, and the
maximum over colour channels of |grad|. It shares nothing with ``saliency_service`` but the model.

Tolerance: the comparisons are about exactness, so model and inputs are float64. A batched and a
single-image pass sum the same products in a different order; in float64 the maps agree to
~1e-15 of their maximum (measured; 1 and 2 threads). In float32 they do not agree to any
tolerance that would still catch a small bug on every CPU: where two pooled activations nearly
tie, the kernel's summation order sends a patch's gradient through the other one (up to 2e-4 of
the maximum was seen on an AMD EPYC; tests/reference.py). ``rtol = atol / max = 1e-9`` leaves a
million-fold margin over float64 rounding, and the ``discriminates`` test checks that it still
tells a map from one of another target, objective or image, and from the map scaled by 1 + 1e-7.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from reference import STANDARD_PREPROCESS, gradient_map

from saliency_service.attribution import (
    PREDICTED,
    BatchObjective,
    class_score,
    cross_entropy,
    input_gradients,
    vanilla_saliency,
)
from saliency_service.attribution.objectives import resolve_targets

RTOL = 1e-9
Reference = Callable[[int, int | None, str], tuple[torch.Tensor, int, torch.Tensor]]


def assert_maps_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Close up to float64 summation order (see the module docstring)."""
    assert actual.shape == expected.shape
    scale = float(expected.abs().max())
    assert scale > 0, "a zero reference map would make the comparison vacuous"
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * scale)


@pytest.fixture(scope="module")
def model(exact_model: torch.nn.Module) -> torch.nn.Module:
    return exact_model


@pytest.fixture(scope="module")
def batch(chelsea: np.ndarray, coffee: np.ndarray) -> torch.Tensor:
    """Four (3, 224, 224) float64 inputs: two real photos and two seeded noise images."""
    photos = [STANDARD_PREPROCESS(Image.fromarray(array)) for array in (chelsea, coffee)]
    noise = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    return torch.cat([torch.stack(photos), noise]).double()


@pytest.fixture(scope="module")
def logits(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(batch)


@pytest.fixture(scope="module")
def explicit_targets(logits: torch.Tensor) -> list[int]:
    """A non-predicted class with a positive score per image (S_y = 0 after the final ReLU would
    give an all-zero map), different between images."""
    chosen: list[int] = []
    for row in logits:
        ranked = row.argsort(descending=True).tolist()
        candidates = [c for c in ranked[1:] if row[c] > 0 and c not in chosen]
        chosen.append(candidates[len(chosen)])  # the 2nd, 3rd, ... best: not the prediction
    return chosen


@pytest.fixture(scope="module")
def reference(model: torch.nn.Module, batch: torch.Tensor) -> Reference:
    """``gradient_map`` of ``batch[i]`` for a target (None: the predicted class) and objective,
    each computed once per module: most tests check against the same few of the 16 maps. Filled
    lazily, so that a test's outcome does not depend on which ran before it; never modified."""
    computed: dict[tuple[int, int | None, str], tuple[torch.Tensor, int, torch.Tensor]] = {}

    def of(i: int, target: int | None, objective: str) -> tuple[torch.Tensor, int, torch.Tensor]:
        key = (i, target, objective)
        if key not in computed:
            computed[key] = gradient_map(model, batch[i], target, objective)
        return computed[key]

    return of


def check_against_reference(reference: Reference, result, images, targets, objectives) -> None:
    """Row n of ``result`` against the reference of image ``images[n]``."""
    for n, (i, target, objective) in enumerate(zip(images, targets, objectives, strict=True)):
        expected, y, _ = reference(i, target, objective)
        assert int(result.targets[n]) == y, f"image {i}"
        assert_maps_close(result.maps[n], expected)


@pytest.mark.parametrize("objective", ["score", "loss"])
def test_predicted_targets_match_reference(model, batch, logits, reference, objective) -> None:
    result = vanilla_saliency(model, batch, objectives=objective)
    assert result.maps.shape == (4, 224, 224)
    assert result.maps.dtype == batch.dtype
    assert bool((result.maps >= 0).all())
    assert result.targets.dtype == torch.int64
    assert result.targets.tolist() == logits.argmax(dim=1).tolist()
    torch.testing.assert_close(result.logits, logits, rtol=RTOL, atol=RTOL)
    check_against_reference(reference, result, range(4), [None] * 4, [objective] * 4)


@pytest.mark.parametrize("objective", ["score", "loss"])
def test_explicit_targets_match_reference(
    model, batch, explicit_targets, reference, objective
) -> None:
    targets = torch.tensor(explicit_targets)
    result = vanilla_saliency(model, batch, targets, objective)
    assert result.targets.tolist() == explicit_targets
    check_against_reference(reference, result, range(4), explicit_targets, [objective] * 4)


def test_mixed_batch_matches_reference(model, batch, explicit_targets, reference) -> None:
    """Per-sample objectives and targets, PREDICTED mixed with explicit classes."""
    targets = [explicit_targets[0], None, explicit_targets[2], None]
    objectives = ["score", "loss", "loss", "score"]
    requested = torch.tensor([PREDICTED if t is None else t for t in targets])
    result = vanilla_saliency(model, batch, requested, objectives)
    check_against_reference(reference, result, range(4), targets, objectives)


def test_tolerance_discriminates(model, batch, explicit_targets, reference) -> None:
    """The comparison above would notice another target, objective or image, or a 1e-7 scale."""
    result = vanilla_saliency(model, batch[:2], objectives="score")
    own = reference(0, None, "score")[0]
    others = [
        reference(0, explicit_targets[0], "score")[0],  # other class
        reference(0, None, "loss")[0],  # other objective
        reference(1, None, "score")[0],  # other image
        own * (1 + 1e-7),  # a tiny scale error
    ]
    assert_maps_close(result.maps[0], own)
    for other in others:
        with pytest.raises(AssertionError):
            assert_maps_close(result.maps[0], other)


def test_batched_equals_unbatched(model, batch, explicit_targets) -> None:
    requested = torch.tensor([explicit_targets[0], PREDICTED, PREDICTED, explicit_targets[3]])
    objectives = ["loss", "score", "loss", "score"]
    together = vanilla_saliency(model, batch, requested, objectives)
    for i in range(batch.shape[0]):
        alone = vanilla_saliency(model, batch[i : i + 1], requested[i : i + 1], [objectives[i]])
        assert alone.maps.shape == (1, 224, 224)
        assert_maps_close(together.maps[i], alone.maps[0])
        assert together.targets[i] == alone.targets[0]
        torch.testing.assert_close(together.logits[i], alone.logits[0], rtol=RTOL, atol=RTOL)


def test_smaller_inputs_are_accepted(model) -> None:
    """SqueezeNet ends in adaptive average pooling: 64x64 inputs work too."""
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)).double()
    result = vanilla_saliency(model, images, objectives="loss")
    assert result.maps.shape == (2, 64, 64)
    assert result.logits.shape == (2, 1000)

    def of(i: int, target: int | None, objective: str) -> tuple[torch.Tensor, int, torch.Tensor]:
        return gradient_map(model, images[i], target, objective)

    check_against_reference(of, result, range(2), [None, None], ["loss", "loss"])


def test_no_parameter_gradients_and_inputs_untouched(model, batch) -> None:
    inputs = batch[:2].clone()
    vanilla_saliency(model, inputs, objectives=["score", "loss"])
    assert all(p.grad is None for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())
    assert inputs.grad is None
    assert not inputs.requires_grad
    torch.testing.assert_close(inputs, batch[:2], rtol=0, atol=0)


def test_unfrozen_model_gives_the_same_maps_without_weight_gradients(model, batch) -> None:
    trainable = copy.deepcopy(model).requires_grad_(True)
    frozen = vanilla_saliency(model, batch[:2])
    unfrozen = vanilla_saliency(trainable, batch[:2])
    assert all(p.grad is None for p in trainable.parameters())
    assert all(p.requires_grad for p in trainable.parameters())
    assert_maps_close(unfrozen.maps[0], frozen.maps[0])
    assert_maps_close(unfrozen.maps[1], frozen.maps[1])


def test_inference_tensors_as_inputs(model, batch, explicit_targets, reference) -> None:
    with torch.inference_mode():
        inputs = batch[:2].clone()
        requested = torch.tensor([explicit_targets[0], PREDICTED])
    assert inputs.is_inference()
    result = vanilla_saliency(model, inputs, requested, "score")
    check_against_reference(reference, result, range(2), [explicit_targets[0], None], ["score"] * 2)


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_called_where_autograd_is_off(model, batch, explicit_targets, reference, mode) -> None:
    """TorchServe calls handlers under torch.inference_mode()."""
    context = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with context:
        inputs = batch[2:].clone()
        requested = torch.tensor([PREDICTED, explicit_targets[3]])
        result = vanilla_saliency(model, inputs, requested, ["loss", "score"])
    check_against_reference(
        reference, result, range(2, 4), [None, explicit_targets[3]], ["loss", "score"]
    )
    assert all(p.grad is None for p in model.parameters())


def test_input_gradients_of_a_custom_objective(model, batch) -> None:
    """The gradient of sample i's own objective, whatever the objective is."""
    inputs = batch[:2]
    gradients, logits = input_gradients(model, inputs, lambda out: 3.0 * out[:, 5] - out[:, 9])
    assert gradients.shape == inputs.shape
    assert not logits.requires_grad
    for i in range(2):
        x = inputs[i].clone().requires_grad_()
        out = model(x[None])
        (3.0 * out[0, 5] - out[0, 9]).backward()
        scale = float(x.grad.abs().max())
        torch.testing.assert_close(gradients[i], x.grad, rtol=RTOL, atol=RTOL * scale)


def test_objectives_are_the_textbook_formulas() -> None:
    logits = torch.randn(5, 1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    targets = torch.tensor([0, 999, 17, 17, 500])
    expected_score = torch.stack([logits[i, t] for i, t in enumerate(targets.tolist())])
    log_z = torch.logsumexp(logits, dim=1)
    torch.testing.assert_close(class_score(logits, targets), expected_score)
    torch.testing.assert_close(cross_entropy(logits, targets), log_z - expected_score)


def test_resolve_targets_replaces_only_predicted() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [5.0, 0.0, 1.0], [0.0, 0.0, 3.0]])
    assert resolve_targets(logits, None).tolist() == [1, 0, 2]
    assert resolve_targets(logits, torch.tensor([PREDICTED, 2, PREDICTED])).tolist() == [1, 2, 2]


def test_batch_objective_per_sample_values_and_targets() -> None:
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    objective = BatchObjective(["loss", "score", "loss"], torch.tensor([4, PREDICTED, 7]), 3)
    values = objective(logits)
    predicted = int(logits[1].argmax())
    assert objective.targets.tolist() == [4, predicted, 7]
    expected = [
        -torch.log_softmax(logits[0], 0)[4],
        logits[1, predicted],
        -torch.log_softmax(logits[2], 0)[7],
    ]
    torch.testing.assert_close(values, torch.stack(expected))


@pytest.mark.parametrize(
    ("names", "requested", "size"),
    [
        (["score", "loss"], None, 3),  # too few objectives
        ("score", torch.tensor([1, 2]), 3),  # too few targets
        (["score", "gradcam", "loss"], None, 3),  # unknown objective
        ("bogus", None, 1),
    ],
)
def test_batch_objective_rejects_inconsistent_arguments(names, requested, size) -> None:
    with pytest.raises(ValueError):
        BatchObjective(names, requested, size)
