"""Grad-CAM (attribution.gradcam) against Captum's LayerGradCam and pytorch-grad-cam's GradCAM.

Captum gives the coarse 13 x 13 maps before upsampling; pytorch-grad-cam gives the full-size maps
after its own min-max scaling and OpenCV's bilinear resize. Neither shares code with
``saliency_service``.

Tolerances (each checked to still catch planted errors in ``test_*_discriminates``):

* Captum, float64: the same products summed in the same or another order. Measured difference 0
  (1 and 2 threads); ``RTOL = 1e-9`` of the map's maximum leaves a million-fold margin over
  float64 rounding and still fails for the map of another target, objective or layer, the map
  without its ReLU, and the map scaled by 1 + 1e-7.
* pytorch-grad-cam, float32 (it works in float32 numpy): both sides see bitwise the same forward
  pass of the same float32 model, so they differ only in how the channel weights (means of h*w
  gradients) and the weighted sum over K channels are rounded, and in the float32 resize. The
  bound ``cam_tolerance`` follows from that: (h*w + K + 4) float32 roundings of
  ``M = sum_k mean|dS/dA_k| |A_k|``, tripled for the min-max scaling, over the map's range.
  It comes to 1.1e-3 to 1.7e-3 here; the measured difference is at most 1.6e-6 (Pearson
  1 - 5e-13), 1 and 2 threads. Pearson >= 0.999 is checked as well. Both fail for another
  layer, another target, the negated loss, the score's map for the loss's, a missing ReLU,
  and corner-aligned or nearest-neighbour upsampling (differences 0.35 to 1).

Two computations are under test: the class score's layer gradient in closed form (``heads``: no
backward pass; every ``"score"`` comparison here) and the loss's by autograd from the logits to
the layer (every ``"loss"`` one). The closed form is also compared with autograd's gradient
directly, where both multiply the same float64 weights by the same mask and 1/(h w): RTOL again.

The model has random weights (no download): its logits are close to each other, it predicts the
same class for most images, and the loss's Grad-CAM of the predicted class is all zero (the
target's own map outweighs the softmax average of the others). The explicit targets are therefore
each image's 400th-ranked class, where the weighted sum has both signs and the ReLU matters
(checked in ``test_targets_exercise_the_relu``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import reference
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from saliency_service.attribution import PREDICTED, cam_from_gradients, gradcam, pass_gradients
from saliency_service.attribution.heads import PooledClassMaps
from saliency_service.attribution.passes import batch_pass

STANDARD = reference.STANDARD_PREPROCESS
RTOL = 1e-9
RANK = 400  # explicit target: the class ranked 400th, where the ReLU cuts (see module docstring)
U32 = 2.0**-24  # unit roundoff of float32


def layer(model: nn.Module, index: int = 12) -> nn.Module:
    """SqueezeNet 1.1's Fire module ``features[index]``; 12 is the service's Grad-CAM layer."""
    return model.features[index]


def score_of(targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-sample class score S_y of a batch of logits."""
    return lambda logits: logits.gather(1, targets[:, None]).squeeze(1)


def loss_of(targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-sample cross-entropy of the target, +CE as the service differentiates it."""
    return lambda logits: F.cross_entropy(logits, targets, reduction="none")


def captum_coarse(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    objective: str,
    index: int = 12,
    relu: bool = True,
) -> torch.Tensor:
    """Captum's coarse Grad-CAM ``(N, h, w)``; the loss as a forward function with one output
    per sample, which Captum differentiates without a target."""
    if objective == "score":
        cam = LayerGradCam(model, layer(model, index))
        maps = cam.attribute(inputs, target=targets, relu_attributions=relu)
    else:

        def forward(x: torch.Tensor) -> torch.Tensor:
            return loss_of(targets)(model(x))

        cam = LayerGradCam(forward, layer(model, index))
        maps = cam.attribute(inputs, relu_attributions=relu)
    return maps.detach()[:, 0]


def grad_cam_library(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, objective: str
) -> np.ndarray:
    """pytorch-grad-cam's min-max scaled full-size maps ``(N, H, W)``, float32 numpy.

    Its per-sample targets see one row of logits; ``"loss"`` is exactly the service's +CE,
    ``"-loss"`` its negation (a planted error). The model is frozen, so the input must require
    grad for the library's ``loss.backward()`` to reach the layer (it does not set that itself);
    a clone keeps the caller's tensor untouched.
    """
    sign = -1.0 if objective == "-loss" else 1.0
    if objective == "score":
        chosen = [ClassifierOutputTarget(int(y)) for y in targets]
    else:
        chosen = [
            lambda row, y=int(y): sign * F.cross_entropy(row[None], torch.tensor([y]))
            for y in targets
        ]
    with GradCAM(model=model, target_layers=[layer(model)]) as cam:
        return cam(input_tensor=inputs.clone().requires_grad_(True), targets=chosen)


def minmax(maps: torch.Tensor) -> np.ndarray:
    """Each map scaled to [0, 1] as pytorch-grad-cam does (in float64 here)."""
    maps = maps.detach().double()
    low = maps.amin(dim=(1, 2), keepdim=True)
    return ((maps - low) / (maps.amax(dim=(1, 2), keepdim=True) - low)).numpy()


def layer_terms(
    model: nn.Module, inputs: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's activations and gradients, the naive way (forward hook, autograd.grad)."""
    recorded: list[torch.Tensor] = []
    handle = layer(model).register_forward_hook(lambda _m, _a, out: recorded.append(out))
    try:
        logits = model(inputs.detach().clone().requires_grad_(True))  # frozen model
        (gradients,) = torch.autograd.grad(objective(logits).sum(), recorded)
    finally:
        handle.remove()
    return recorded[0].detach(), gradients


def cam_tolerance(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, objective: str
) -> np.ndarray:
    """Per-image bound on the float32 difference of two min-max scaled maps (module docstring)."""
    make = score_of if objective == "score" else loss_of
    activations, gradients = (t.double() for t in layer_terms(model, inputs, make(targets)))
    weights = gradients.abs().mean(dim=(2, 3), keepdim=True)
    magnitude = (weights * activations.abs()).sum(dim=1).amax(dim=(1, 2))
    cam = (gradients.mean(dim=(2, 3), keepdim=True) * activations).sum(dim=1).clamp_min(0)
    span = cam.amax(dim=(1, 2)) - cam.amin(dim=(1, 2))
    assert bool((span > 0).all()), "a constant map would make the comparison vacuous"
    count = activations.shape[1] + activations.shape[2] * activations.shape[3] + 4
    return (3 * count * U32 * magnitude / span + 8 * U32).numpy()


def assert_same_cam(actual: np.ndarray, expected: np.ndarray, tolerance: np.ndarray) -> None:
    """Min-max scaled maps equal within the derived bound, and Pearson >= 0.999, per image."""
    assert actual.shape == expected.shape
    for i, (ours, theirs) in enumerate(zip(actual, expected, strict=True)):
        pearson = np.corrcoef(ours.ravel(), theirs.astype(np.float64).ravel())[0, 1]
        assert pearson >= 0.999, f"image {i}: Pearson {pearson}"
        difference = float(np.abs(ours - theirs).max())
        assert difference <= tolerance[i], f"image {i}: {difference} > {tolerance[i]}"


def assert_coarse_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float64 rounding, relative to the map's scale (module docstring)."""
    assert actual.shape == expected.shape
    scale = float(expected.abs().max())
    assert scale > 0, "an all-zero reference map would make the comparison vacuous"
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * scale)


@pytest.fixture(scope="module")
def batch(chelsea: np.ndarray, coffee: np.ndarray) -> torch.Tensor:
    """Four float32 (3, 224, 224) inputs: the two photos and two seeded noise images."""
    photos = [STANDARD(Image.fromarray(array)) for array in (chelsea, coffee)]
    noise = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    return torch.cat([torch.stack(photos), noise])


@pytest.fixture(scope="module")
def exact_batch(batch: torch.Tensor) -> torch.Tensor:
    return batch.double()


@pytest.fixture(scope="module")
def logits(exact_model: nn.Module, exact_batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return exact_model(exact_batch)


@pytest.fixture(scope="module")
def targets(logits: torch.Tensor) -> torch.Tensor:
    return logits.argsort(dim=1, descending=True)[:, RANK]


@pytest.fixture(scope="module")
def runner_up(logits: torch.Tensor) -> torch.Tensor:
    """Another explicit class per image: the second best, where the score's map is all > 0."""
    return logits.argsort(dim=1, descending=True)[:, 1]


@pytest.mark.parametrize("objective", ["score", "loss"])
def test_targets_exercise_the_relu(exact_model, exact_batch, targets, objective) -> None:
    """Precondition of the comparisons: every coarse map has zeros and positive values."""
    raw = captum_coarse(exact_model, exact_batch, targets, objective, relu=False)
    assert bool((raw.amax(dim=(1, 2)) > 0).all())
    assert bool((raw.amin(dim=(1, 2)) < 0).all())


@pytest.mark.parametrize(
    ("objective", "which"), [("score", "targets"), ("score", "runner_up"), ("loss", "targets")]
)
def test_coarse_maps_match_captum(
    request, exact_model, exact_batch, logits, objective, which
) -> None:
    chosen = request.getfixturevalue(which)
    result, coarse = gradcam(exact_model, layer(exact_model), exact_batch, chosen, objective)
    assert coarse.shape == (4, 13, 13)
    assert result.maps.shape == (4, 224, 224)
    assert result.maps.dtype == coarse.dtype == torch.float64
    assert result.targets.tolist() == chosen.tolist()
    torch.testing.assert_close(result.logits, logits, rtol=RTOL, atol=RTOL)
    expected = captum_coarse(exact_model, exact_batch, chosen, objective)
    for i in range(4):
        assert_coarse_close(coarse[i], expected[i])


def test_captum_comparison_discriminates(exact_model, exact_batch, targets, runner_up) -> None:
    """The comparison above fails for each planted error."""
    images, chosen = exact_batch[:2], targets[:2]
    _, coarse = gradcam(exact_model, layer(exact_model), images, chosen, "score")
    expected = captum_coarse(exact_model, images, chosen, "score")
    planted = {
        "another layer": captum_coarse(exact_model, images, chosen, "score", index=10),
        "another target": captum_coarse(exact_model, images, runner_up[:2], "score"),
        "another objective": captum_coarse(exact_model, images, chosen, "loss"),
        "no ReLU": captum_coarse(exact_model, images, chosen, "score", relu=False),
        "scaled by 1 + 1e-7": expected * (1 + 1e-7),
    }
    for i in range(2):
        assert_coarse_close(coarse[i], expected[i])
        for name, wrong in planted.items():
            with pytest.raises(AssertionError):
                assert_coarse_close(coarse[i], wrong[i])
                pytest.fail(f"image {i}: {name} not caught")


@pytest.mark.parametrize("objective", ["score", "loss"])
def test_full_maps_match_pytorch_grad_cam(model, batch, targets, objective) -> None:
    """float32 on both sides (see the module docstring for the bound)."""
    result, _ = gradcam(model, layer(model), batch, targets, objective)
    expected = grad_cam_library(model, batch, targets, objective)
    assert expected.shape == (4, 224, 224)
    tolerance = cam_tolerance(model, batch, targets, objective)
    assert_same_cam(minmax(result.maps), expected, tolerance)


def test_non_square_inputs_match_pytorch_grad_cam(model) -> None:
    """Height and width are not swapped anywhere (cv2.resize takes (width, height))."""
    images = torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        chosen = model(images).argsort(dim=1, descending=True)[:, RANK]
    result, coarse = gradcam(model, layer(model), images, chosen)
    assert coarse.shape[1] < coarse.shape[2]
    assert result.maps.shape == (2, 160, 224)
    expected = grad_cam_library(model, images, chosen, "score")
    assert_same_cam(minmax(result.maps), expected, cam_tolerance(model, images, chosen, "score"))


def test_pytorch_grad_cam_comparison_discriminates(model, batch, targets, runner_up) -> None:
    images, chosen = batch[:2], targets[:2]
    expected = {o: grad_cam_library(model, images, chosen, o) for o in ("score", "loss")}
    tolerance = {o: cam_tolerance(model, images, chosen, o) for o in ("score", "loss")}
    _, coarse = gradcam(model, layer(model), images, chosen, "score")
    raw = captum_coarse(model, images, chosen, "score", relu=False)

    def upsampled(maps: torch.Tensor, **how: object) -> torch.Tensor:
        return F.interpolate(maps[:, None], size=(224, 224), **how)[:, 0]

    planted = {
        "another layer": ("score", gradcam(model, layer(model, 10), images, chosen)[0].maps),
        "another target": ("score", gradcam(model, layer(model), images, runner_up[:2])[0].maps),
        "score for loss": ("loss", gradcam(model, layer(model), images, chosen, "score")[0].maps),
        "no ReLU": ("score", upsampled(raw, mode="bilinear", align_corners=False)),
        "corner-aligned": ("score", upsampled(coarse, mode="bilinear", align_corners=True)),
        "nearest": ("score", upsampled(coarse, mode="nearest")),
    }
    # The library's map of -CE is not ours of +CE: the sign matters through the ReLU.
    ours_loss = gradcam(model, layer(model), images, chosen, "loss")[0].maps
    assert_same_cam(minmax(ours_loss), expected["loss"], tolerance["loss"])
    planted["negated loss"] = ("-loss", ours_loss)
    expected["-loss"] = grad_cam_library(model, images, chosen, "-loss")
    tolerance["-loss"] = tolerance["loss"]
    for name, (objective, maps) in planted.items():
        scaled = minmax(maps)
        for i in range(2):
            with pytest.raises(AssertionError):
                one = slice(i, i + 1)
                assert_same_cam(scaled[one], expected[objective][one], tolerance[objective][one])
                pytest.fail(f"image {i}: {name} not caught")


def test_batched_equals_one_at_a_time(exact_model, exact_batch, targets) -> None:
    """Mixed targets (PREDICTED among them) and objectives in one batch, float64."""
    requested = torch.tensor([int(targets[0]), PREDICTED, int(targets[2]), PREDICTED])
    objectives = ["loss", "score", "score", "score"]
    cam_layer = layer(exact_model)
    together, coarse = gradcam(exact_model, cam_layer, exact_batch, requested, objectives)
    for i in range(4):
        one = slice(i, i + 1)
        alone, alone_coarse = gradcam(
            exact_model, cam_layer, exact_batch[one], requested[one], objectives[i]
        )
        assert together.targets[i] == alone.targets[0]
        assert_coarse_close(coarse[i], alone_coarse[0])
        assert_coarse_close(together.maps[i], alone.maps[0])
        torch.testing.assert_close(together.logits[i], alone.logits[0], rtol=RTOL, atol=RTOL)
    assert together.targets[1] == together.logits[1].argmax()
    assert together.targets[3] == together.logits[3].argmax()


def test_backward_pass_stops_at_the_layer(exact_model) -> None:
    """No gradient flows below the explained layer: a hook on the first convolution's output
    never fires (and does fire when the input gradient is asked for, so the probe works)."""
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3)).double()
    fired: list[int] = []

    def probe(_module: nn.Module, _args: object, output: torch.Tensor) -> None:
        if output.requires_grad:
            output.register_hook(lambda grad: fired.append(grad.shape[0]))

    handle = exact_model.features[0].register_forward_hook(probe)
    try:
        result, coarse = gradcam(exact_model, layer(exact_model), images)
        assert fired == []
        pass_gradients(exact_model, images, score_of(result.targets), layer(exact_model))
        assert fired == [2]
    finally:
        handle.remove()
    assert coarse.shape == (2, 3, 3)  # 64 x 64 inputs work too
    assert result.maps.shape == (2, 64, 64)


def test_inference_tensors_and_no_weight_gradients(exact_model, exact_batch, targets) -> None:
    """TorchServe's inference mode, and an unfrozen model whose weights must get no .grad."""
    images, chosen = exact_batch[:2], targets[:2]
    reference, _ = gradcam(exact_model, layer(exact_model), images, chosen, "loss")
    with torch.inference_mode():
        frozen_inputs = images.clone()
        inside, _ = gradcam(exact_model, layer(exact_model), frozen_inputs, chosen, "loss")
    assert frozen_inputs.is_inference()
    trainable = copy.deepcopy(exact_model).requires_grad_(True)
    unfrozen, _ = gradcam(trainable, layer(trainable), images, chosen, "loss")
    assert all(p.grad is None for p in trainable.parameters())
    assert all(p.grad is None for p in exact_model.parameters())
    assert images.grad is None and not images.requires_grad
    for i in range(2):
        assert_coarse_close(inside.maps[i], reference.maps[i])
        assert_coarse_close(unfrozen.maps[i], reference.maps[i])


# --- The class score's gradient in closed form, and batches that mix what rows need -------------


def test_the_closed_form_head_is_found_only_where_it_holds(exact_model) -> None:
    head = PooledClassMaps.after(exact_model, layer(exact_model))
    assert head is not None
    assert head.conv is exact_model.classifier[1] and head.relu is exact_model.classifier[2]
    assert PooledClassMaps.after(exact_model, layer(exact_model, 10)) is None  # not the last
    assert PooledClassMaps.after(exact_model, None) is None
    training = copy.deepcopy(exact_model).train()  # dropout is not the identity
    assert PooledClassMaps.after(training, layer(training)) is None
    training.eval().classifier.train()  # nor where only the head trains
    assert PooledClassMaps.after(training, layer(training)) is None
    other = copy.deepcopy(exact_model)
    other.classifier[3] = nn.AdaptiveAvgPool2d((2, 2))
    assert PooledClassMaps.after(other, layer(other)) is None
    other = copy.deepcopy(exact_model)
    other.classifier[2] = nn.Sigmoid()
    assert PooledClassMaps.after(other, layer(other)) is None


def test_closed_form_gradient_equals_autograd(exact_model, exact_batch, targets, runner_up) -> None:
    """d S_y / d A for two targets per image, against autograd's through the whole head."""
    head = PooledClassMaps.after(exact_model, layer(exact_model))
    assert head is not None
    maps: list[torch.Tensor] = []
    hook = head.relu.register_forward_hook(lambda _m, _a, out: maps.append(out.detach()))
    try:
        with torch.no_grad():
            exact_model(exact_batch)
    finally:
        hook.remove()
    for chosen in (targets, runner_up):
        _, expected = layer_terms(exact_model, exact_batch, score_of(chosen))
        actual = head.score_gradients(maps[0], chosen)
        scale = float(expected.abs().max())
        assert scale > 0
        torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * scale)
    with pytest.raises(AssertionError):  # another target's gradient is told apart
        torch.testing.assert_close(
            head.score_gradients(maps[0], targets), expected, rtol=RTOL, atol=RTOL * scale
        )


def test_the_score_takes_no_backward_pass_and_the_loss_one_through_the_head(
    exact_model, exact_batch, targets
) -> None:
    """The head's class maps join an autograd graph for the loss only."""
    recorded: list[bool] = []
    head = exact_model.classifier[1]
    hook = head.register_forward_hook(lambda _m, _a, out: recorded.append(out.requires_grad))
    try:
        gradcam(exact_model, layer(exact_model), exact_batch[:2], targets[:2], "score")
        gradcam(exact_model, layer(exact_model), exact_batch[:2], targets[:2], "loss")
    finally:
        hook.remove()
    assert recorded == [False, True]


def test_a_batch_mixing_what_rows_need_gives_each_row_its_own_gradients(
    exact_model, exact_batch, targets
) -> None:
    """Vanilla rows, Grad-CAM rows of the score and of the loss, and copies of one image among
    them (one of them reusing another group's forward pass), against each row alone."""
    images = exact_batch[[0, 0, 0, 1, 1, 2, 3, 3]]
    wants_input = [True, False, False, False, False, False, True, False]
    objectives = ["score", "score", "score", "loss", "score", "score", "loss", "score"]
    chosen = targets[[0, 0, 0, 1, 1, 2, 3, 3]]
    requested = torch.tensor([PREDICTED, PREDICTED, *chosen[2:].tolist()])
    cam_layer = layer(exact_model)
    passes: list[int] = []
    hook = exact_model.register_forward_pre_hook(lambda _m, args: passes.append(len(args[0])))
    try:
        passed, resolved = batch_pass(
            exact_model,
            images,
            objectives,
            requested,
            wants_input,
            [not w for w in wants_input],
            cam_layer,
        )
    finally:
        hook.remove()
    # The input's pass (rows 0, 6); the loss's to the layer (row 3); one forward of image 2
    # (row 5). Rows 1, 2 take row 0's forward pass, row 4 row 3's, row 7 row 6's.
    assert passes == [2, 1, 1]
    assert passed.inputs is not None and passed.activations is not None
    assert passed.layer is not None
    for n in range(len(images)):
        one = slice(n, n + 1)
        alone, _ = batch_pass(
            exact_model,
            images[one],
            objectives[n : n + 1],
            requested[one],
            wants_input[n : n + 1],
            [not wants_input[n]],
            cam_layer,
        )
        assert int(resolved[n]) == int(alone.logits[0].argmax() if requested[n] < 0 else chosen[n])
        torch.testing.assert_close(passed.logits[n], alone.logits[0], rtol=RTOL, atol=RTOL)
        if wants_input[n]:
            assert alone.inputs is not None
            scale = float(alone.inputs.abs().max())
            torch.testing.assert_close(
                passed.inputs[n], alone.inputs[0], rtol=RTOL, atol=RTOL * scale
            )
        else:
            assert alone.activations is not None and alone.layer is not None
            assert_coarse_close(
                cam_from_gradients(passed.activations[n : n + 1], passed.layer[n : n + 1])[0],
                cam_from_gradients(alone.activations, alone.layer)[0],
            )
    # The copies explain their own targets, not their source's.
    assert int(resolved[2]) == int(chosen[2]) != int(resolved[0])
