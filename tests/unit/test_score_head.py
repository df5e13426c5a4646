"""The class score's shortcut for input gradients (``heads.TargetScores``, ``attribution.sampled``).

On torchvision's SqueezeNet the class score is ``S_y = mean_ij ReLU(W_y A_ij + b_y)`` of the last
Fire module's output ``A``: the sampled methods (Integrated Gradients, the SmoothGrad family)
differentiate that, one class map per sample, instead of all 1000. Every comparison here is
against autograd through the *whole* model, in float64 at ``RTOL = 1e-9`` of the largest value (as
the other attribution tests). Measured: the gradients are identical, the scores differ by at most
~1e-15 (another summation order); each planted bug below (another class's row, no bias, no ReLU)
is caught. The shortcut also pools before SqueezeNet's first ReLU instead of after it: the same
output and gradient exactly (``test_relu_then_max_pooling_runs_as_pooling_then_relu``).

Models: the unit tests' seeded random initialisation with its classifier's biases redrawn
(torchvision starts them at zero, which would hide a missing bias), and SqueezeNet 1.1's
pretrained ImageNet weights where ``$SQUEEZENET_WEIGHTS`` names them (skipped otherwise).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from functools import partial

import numpy as np
import pytest
import reference
import torch
from PIL import Image
from torch import nn
from torchvision.models import SqueezeNet

from saliency_service.attribution import integrated_gradients, smoothgrad_saliency
from saliency_service.attribution.gradients import input_gradients
from saliency_service.attribution.heads import PooledClassMaps, TargetScores
from saliency_service.attribution.objectives import class_score
from saliency_service.attribution.sampled import memory_format_of
from saliency_service.methods import METHODS
from saliency_service.methods.base import ExplainContext, Job
from saliency_service.methods.engine import explain
from saliency_service.model import build_model, load_state_dict

SIZE = 112  # 6 x 6 class maps: enough positions for ReLU to clip some and pass others
SMALL = reference.preprocess(SIZE, resize=None)
BLACK = reference.BLACK
RTOL = 1e-9


@pytest.fixture(scope="module")
def inputs(chelsea: np.ndarray, coffee: np.ndarray) -> torch.Tensor:
    """Two photos, a noise image and the first photo again (to be explained for another
    class), float64."""
    photos = [SMALL(Image.fromarray(photo)) for photo in (chelsea, coffee)]
    noise = torch.randn(3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    return torch.stack([*photos, noise, photos[0]]).double()


@pytest.fixture(scope="module", params=["seeded", "pretrained"])
def model(request, exact_model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """float64 SqueezeNet 1.1 in eval mode, frozen, with nonzero classifier biases."""
    if request.param == "pretrained":
        path = os.environ.get("SQUEEZENET_WEIGHTS")
        if not path:
            pytest.skip("$SQUEEZENET_WEIGHTS does not name SqueezeNet 1.1's pretrained weights")
        return build_model(load_state_dict(path)).double()
    seeded = copy.deepcopy(exact_model)
    conv = seeded.classifier[1]
    with torch.no_grad():
        maps = conv(seeded.features(inputs)) - conv.bias[:, None, None]
        spread = float(maps.std())
        generator = torch.Generator().manual_seed(5)
        draw = torch.randn(conv.bias.shape, generator=generator, dtype=torch.float64)
        conv.bias.copy_(0.5 * spread * draw)
    return seeded


@pytest.fixture(scope="module")
def targets(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """A different kind of class per row, so that every term of the score matters: the
    predicted class; the class whose map is positive at the fewest (but some) positions, where
    ReLU clips most; the runner-up; and the best class whose map the bias moves across zero
    somewhere, where a missing bias changes the gradient (the pretrained biases are ~1e-3 of the
    maps: few classes have one)."""
    with torch.no_grad():
        logits = model(inputs)
        maps = class_maps(model, inputs)
    ranked = logits.argsort(dim=1, descending=True)
    positive = (maps[1] > 0).flatten(1).sum(dim=1)
    clipped = torch.where(positive > 0, positive, maps.shape[2] * maps.shape[3] + 1).argmin()
    bias = model.classifier[1].bias[:, None, None]
    moved = ((maps[3] > 0) != (maps[3] - bias > 0)).flatten(1).any(dim=1)
    assert bool(moved.any()), "no class's map crosses zero with its bias: pick other photos"
    crossing = ranked[3][moved[ranked[3]]][0]
    return torch.stack([ranked[0, 0], clipped, ranked[2, 1], crossing])


def class_maps(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The classifier's pre-ReLU class maps (N, K, h, w)."""
    return model.classifier[1](model.features(x))


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float64 rounding, relative to the largest value."""
    scale = float(expected.abs().max())
    assert scale > 0, "an all-zero comparison would be vacuous"
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * scale)


def whole_model(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class scores and their input gradients by autograd through the whole model."""
    gradients, logits = input_gradients(model, x, lambda logits: class_score(logits, targets))
    return class_score(logits, targets), gradients


def shortcut(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same from the features and the targets' class maps alone."""
    scores = TargetScores.of(model)
    assert scores is not None
    gradients, values = input_gradients(partial(scores, targets=targets), x, lambda v: v)
    return values, gradients


class Opaque(nn.Sequential):
    """The same modules as SqueezeNet's forward, in a container the shortcut does not know."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model.features, model.classifier, nn.Flatten())


class Doubled(SqueezeNet):
    """A subclass with its own forward (twice the logits): the shortcut would be wrong here."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def doubled(model: nn.Module) -> Doubled:
    twin = Doubled(version="1_1")
    twin.load_state_dict(model.state_dict())
    return twin.double().eval().requires_grad_(False)


def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch sizes of every call of the shortcut, from now on."""
    sizes: list[int] = []
    original = TargetScores.__call__

    def spy(self: TargetScores, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        return original(self, x, targets)

    monkeypatch.setattr(TargetScores, "__call__", spy)
    return sizes


def test_scores_and_gradients_equal_the_whole_models(model, inputs, targets) -> None:
    """Four samples, four kinds of target, one pass each way."""
    expected_scores, expected = whole_model(model, inputs, targets)
    actual_scores, actual = shortcut(model, inputs, targets)
    close(actual_scores, expected_scores)
    close(actual, expected)
    # Not vacuous: every gradient is nonzero, ReLU clips row 1's map and passes some of it.
    assert all(bool(gradient.abs().max() > 0) for gradient in actual)
    with torch.no_grad():
        maps = class_maps(model, inputs)[torch.arange(len(targets)), targets]
    assert bool((maps[1] > 0).any()) and bool((maps[1] < 0).any())


def planted(bug: str) -> Callable[..., torch.Tensor]:
    """``PooledClassMaps.scores`` with one bug planted."""

    def scores(self: PooledClassMaps, activations: torch.Tensor, targets: torch.Tensor):
        rows = (targets + 1) % self.conv.out_channels if bug == "target" else targets
        maps = torch.einsum("nc,nchw->nhw", self.conv.weight[rows, :, 0, 0], activations)
        if bug != "bias":
            maps = maps + self.conv.bias[rows][:, None, None]
        return (maps if bug == "relu" else maps.relu()).mean(dim=(1, 2))

    return scores


@pytest.mark.parametrize("bug", ["target", "bias", "relu"])
def test_a_planted_bug_fails_both_comparisons(model, inputs, targets, monkeypatch, bug) -> None:
    """Another class's row, a missing bias or a missing ReLU changes the scores and the gradients
    beyond the tolerance."""
    expected_scores, expected = whole_model(model, inputs, targets)
    monkeypatch.setattr(PooledClassMaps, "scores", planted(bug))
    actual_scores, actual = shortcut(model, inputs, targets)
    with pytest.raises(AssertionError):
        close(actual_scores, expected_scores)
    with pytest.raises(AssertionError):
        close(actual, expected)


def test_sampled_methods_take_the_shortcut_for_the_score_only(
    model, inputs, targets, monkeypatch
) -> None:
    """Integrated Gradients and SmoothGrad of a batch mixing both objectives, in chunks that
    mix them too, equal the whole model's (an opaque container of the same modules)."""
    objectives = ["score", "loss", "score", "loss"]
    steps, samples = [3, 2, 4, 1], [2, 3, 1, 2]
    opaque = Opaque(model)
    assert TargetScores.of(opaque) is None
    expected = integrated_gradients(opaque, inputs, BLACK, targets, objectives, steps, 4)
    smooth = {"samples": samples, "noise": 0.1, "seeds": [1, 2, 3, 4], "chunk_size": 3}
    aggregates = ["mean", "variance", "mean_square", "mean"]
    expected_smooth = smoothgrad_saliency(
        opaque, inputs, targets, objectives, **smooth, aggregates=aggregates
    )

    sizes = counted(monkeypatch)
    passes: list[int] = []
    hook = model.features.register_forward_pre_hook(lambda _m, args: passes.append(len(args[0])))
    try:
        actual = integrated_gradients(model, inputs, BLACK, targets, objectives, steps, 4)
    finally:
        hook.remove()
    # Path points by sample: 0 0 0 1 | 1 2 2 2 | 2 3. Each chunk's score rows take the shortcut,
    # then its loss rows the whole model; before them the clean inputs and the one baseline.
    assert sizes == [3, 3, 1]
    assert passes == [4, 1, 3, 1, 3, 1, 1, 1]
    for mine, theirs in zip(actual[1:], expected[1:], strict=True):  # attributions, deltas
        close(mine, theirs)
    close(actual[0].maps, expected[0].maps)
    assert torch.equal(actual[0].targets, expected[0].targets)

    sizes.clear()
    actual_smooth = smoothgrad_saliency(
        model, inputs, targets, objectives, **smooth, aggregates=aggregates
    )
    assert sizes == [2, 1]  # copies by sample: 0 0 1 | 1 1 2 | 3 3 (loss only: whole)
    close(actual_smooth.maps, expected_smooth.maps)


def test_models_the_shortcut_does_not_know_take_the_whole_model(
    model, inputs, targets, monkeypatch
) -> None:
    """Other containers, training mode, a subclass's own forward, hooks the shortcut would skip
    and another head are refused; their results are their own whole model's."""
    training = copy.deepcopy(model).train()
    head_training = copy.deepcopy(model)
    head_training.classifier.train()
    sigmoid = copy.deepcopy(model)
    sigmoid.classifier[2] = nn.Sigmoid()
    for other in (Opaque(model), training, head_training, sigmoid, doubled(model)):
        assert TargetScores.of(other) is None
    assert TargetScores.of(model) is not None

    sizes = counted(monkeypatch)
    plain = integrated_gradients(model, inputs, BLACK, targets, steps=2)[1]
    assert sizes == [8]
    sizes.clear()
    twice = integrated_gradients(doubled(model), inputs, BLACK, targets, steps=2)[1]
    assert sizes == []
    close(twice, 2 * plain)  # the subclass's forward, not SqueezeNet's

    for hooked in (lambda m: m, lambda m: m.classifier, lambda m: m.classifier[1]):
        twin = copy.deepcopy(model)
        seen: list[int] = []
        handle = hooked(twin).register_forward_pre_hook(
            lambda _m, args, seen=seen: seen.append(len(args[0]))
        )
        assert TargetScores.of(twin) is None
        close(integrated_gradients(twin, inputs, BLACK, targets, steps=2)[1], plain)
        handle.remove()
        assert seen == [4, 1, 8]  # the hook saw every pass: clean, the baseline, path points
        assert TargetScores.of(twin) is not None
    assert sizes == []


def test_chunks_enter_the_model_in_its_memory_format(model, inputs, targets) -> None:
    """A channels_last model gets channels_last chunks (the service's layout), any other the
    default; the gradients are the same."""
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert memory_format_of(last) == torch.channels_last
    assert memory_format_of(model) == torch.contiguous_format
    results = {}
    for name, network in (("default", model), ("channels_last", last)):
        layouts: list[bool] = []

        def record(_module, args, layouts=layouts) -> None:
            layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))

        hook = network.features[0].register_forward_pre_hook(record)
        try:
            results[name] = integrated_gradients(network, inputs, 0 * BLACK, targets, steps=2)
        finally:
            hook.remove()
        # clean inputs as given (NCHW), then the baseline and the path points in the model's
        assert layouts == [False] + [name == "channels_last"] * 2
    close(results["channels_last"][1], results["default"][1])


def test_each_distinct_baseline_of_a_batch_is_forwarded_once(model, inputs, targets) -> None:
    """Integrated Gradients' deltas need f(x'): all "zero" baselines are one image, all "black"
    ones another. The deltas equal those of ``integrated_gradients`` for each job alone."""
    method = METHODS["integrated_gradients"]
    kinds = ["zero", "black", "zero", "black"]
    jobs = [
        Job(inputs[n], method, {"steps": 2, "baseline": kind}, int(targets[n]), "score")
        for n, kind in enumerate(kinds)
    ]
    context = ExplainContext(chunk_size=16, black=BLACK)
    passes: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, args: passes.append(len(args[0])))
    try:
        answers = explain(model, jobs, context)
    finally:
        hook.remove()
    assert passes == [4, 8, 2]  # clean, path points, the two distinct baselines
    baselines = {"zero": torch.zeros_like(BLACK), "black": BLACK}
    for n, (kind, answer) in enumerate(zip(kinds, answers, strict=True)):
        _, _, deltas = integrated_gradients(
            model, inputs[n : n + 1], baselines[kind], targets[n : n + 1], steps=2
        )
        assert answer.extra["delta"] == pytest.approx(float(deltas[0]), rel=RTOL, abs=RTOL)


def test_relu_then_max_pooling_runs_as_pooling_then_relu(model, inputs, targets) -> None:
    """``maxpool(ReLU(z)) = ReLU(maxpool(z))``, gradient included, even with ties (integer
    values, many of them <= 0); the shortcut pools SqueezeNet's first ReLU first unless a hook
    would see the difference."""
    generator = torch.Generator().manual_seed(2)
    z = torch.randint(-3, 3, (2, 4, 15, 15), generator=generator).double()
    gradient = torch.randn(2, 4, 7, 7, generator=generator, dtype=torch.float64)
    pool = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
    results = []
    for order in ((nn.ReLU(), pool), (pool, nn.ReLU())):
        x = z.clone().requires_grad_(True)
        output = nn.Sequential(*order)(x)
        results.append((output, *torch.autograd.grad(output, x, gradient)))
    for relu_first, pool_first in zip(*results, strict=True):
        assert torch.equal(relu_first, pool_first)

    scores = TargetScores.of(model)
    assert scores is not None
    features = list(model.features)
    assert scores.layers == (features[0], features[2], features[1], *features[3:])
    for index in (None, 1, 2):  # the features themselves, their first ReLU, their first pooling
        twin = copy.deepcopy(model)
        module = twin.features if index is None else twin.features[index]
        seen: list[torch.Size] = []
        handle = module.register_forward_hook(lambda _m, _a, out, seen=seen: seen.append(out.shape))
        try:
            hooked = TargetScores.of(twin)
            assert hooked is not None
            assert hooked.layers == ((twin.features,) if index is None else tuple(twin.features))
            with torch.no_grad():
                twin(inputs)
            actual = shortcut(twin, inputs, targets)[1]
        finally:
            handle.remove()
        assert seen[0] == seen[1]  # the hook sees in the shortcut what it sees in the model
        close(actual, whole_model(model, inputs, targets)[1])
