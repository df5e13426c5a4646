"""The experiment's parts: the photos, the maps (the service's own), the random floor and the
curves of all methods at once (the whole run: test_evaluate_script.py)."""

from __future__ import annotations

import pytest
import torch

from saliency_service.methods import METHODS, ExplainContext, Job, explain
from saliency_service.model import CAM_LAYER
from saliency_tools.evaluate import experiment, photos
from saliency_tools.metrics import Curves


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    """scikit-image's photos, PNG-encoded once (about half a second); only read."""
    return photos.skimage_photos()


@pytest.fixture(scope="module")
def two(encoded: dict[str, bytes]) -> photos.Photos:
    return photos.prepare({name: encoded[name] for name in ("chelsea", "coffee")})


@pytest.fixture(scope="module")
def centres(two: photos.Photos) -> torch.Tensor:
    """The middle 112 x 112 of the two photos: where the size is not the point, a quarter of the
    pixels is a quarter of the cost (SqueezeNet ends in adaptive pooling)."""
    return two.inputs[:, :, 56:168, 56:168].contiguous()


def test_the_skimage_photos_are_the_published_natural_ones(encoded) -> None:
    assert list(encoded) == list(photos.SKIMAGE_PHOTOS)
    prepared = photos.prepare(encoded)
    assert prepared.names == list(encoded)
    assert prepared.inputs.shape == (len(encoded), 3, 224, 224)  # grayscale ones come out RGB
    assert [crop.size for crop in prepared.crops] == [(224, 224)] * len(encoded)


def test_a_folder_gives_its_images_in_name_order_and_an_empty_one_stops(tmp_path) -> None:
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(name.encode())
    assert photos.folder_photos(tmp_path) == {"a": b"a.JPG", "b": b"b.png"}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no image files"):
        photos.folder_photos(empty)


def test_every_map_is_the_one_the_service_computes_for_that_method(exact_model, centres) -> None:
    """One shared set of noisy copies gives SmoothGrad, SmoothGrad-Squared and VarGrad: each
    equals the engine's own answer for that method with the same seed (float64: exact)."""
    inputs = centres.double()
    targets = torch.tensor([3, 7])
    settings = experiment.Settings(samples=3, steps=3, seed=5, batch_size=4)
    maps = experiment.explain_all(exact_model, inputs, targets, settings, first=10)
    assert list(maps) == list(experiment.METHOD_NAMES)
    context = ExplainContext(
        chunk_size=4,
        black=torch.zeros(3, 1, 1, dtype=torch.float64),
        cam_layer=exact_model.get_submodule(CAM_LAYER),
        cam_layer_name=CAM_LAYER,
    )
    for name in experiment.METHOD_NAMES:
        method = METHODS[name]
        defaults = method.defaults()  # the service's, but for the budget and a fixed seed
        for n in range(2):
            chosen = {**defaults, "samples": 3, "steps": 3, "seed": 5 + 10 + n}  # first + n
            options = {key: chosen[key] for key in defaults}
            job = Job(inputs[n], method, options, int(targets[n]), "score")
            [expected] = explain(exact_model, [job], context)
            assert_same_map(maps[name][n], expected.map.float(), name)
    for n in range(2):  # the tolerance tells even the two tiny squared aggregates apart
        with pytest.raises(AssertionError):
            assert_same_map(maps["vargrad"][n], maps["smoothgrad_sq"][n], "planted")


def assert_same_map(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Float64 maps cast to float32: at most an ulp (6e-8) of the maximum apart, measured 0.

    Relative to the map's maximum: the squared aggregates of the random-init model peak at
    1e-7 to 3e-6, below ``assert_close``'s default float32 atol (1e-5), which would let any of
    them pass. Measured: another seed changes a noisy map by 0.7 of its maximum or more, and
    VarGrad is more than 1 off SmoothGrad-Squared.
    """
    scale = float(expected.abs().max())
    assert scale > 0, f"{name}: an all-zero map would make the comparison vacuous"
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6 * scale, msg=name)


def test_random_maps_depend_on_the_photo_not_on_the_chunk() -> None:
    whole = experiment.random_maps(5, (4, 4), seed=2)
    torch.testing.assert_close(experiment.random_maps(2, (4, 4), seed=2, first=3), whole[3:])
    torch.testing.assert_close(
        whole[0], torch.rand((4, 4), generator=torch.Generator().manual_seed(2))
    )
    assert not torch.equal(whole[0], whole[1])


def test_curves_of_all_methods_at_once_equal_each_method_alone(model, centres) -> None:
    served = model.to(memory_format=torch.channels_last)
    targets = torch.tensor([5, 9])
    generator = torch.Generator().manual_seed(4)
    maps = {name: torch.rand(2, 112, 112, generator=generator) for name in ("a", "b", "c")}
    settings = experiment.Settings(pixels_per_step=112 * 112 // 4, batch_size=7)
    deletion, insertion = experiment.curves_of(served, centres, maps, targets, settings)
    assert list(deletion) == list(insertion) == ["a", "b", "c"]
    for name in maps:
        alone = experiment.curves_of(served, centres, {name: maps[name]}, targets, settings)
        for together, single in zip((deletion, insertion), alone, strict=True):
            assert together[name].probabilities.shape == (2, 5)
            # Relative only: the probabilities are ~1e-3 (random-init model), so an atol of
            # 1e-5 would pass another map's curves (measured 5e-3 off at some step, relative;
            # together and alone: equal).
            torch.testing.assert_close(
                together[name].probabilities, single[name].probabilities, atol=0, rtol=1e-4
            )


def test_joined_chunks_keep_the_photo_order() -> None:
    fractions = torch.tensor([0.0, 1.0])
    parts = [
        Curves(fractions, torch.tensor([[1.0, 0.5]])),
        Curves(fractions, torch.tensor([[0.75, 0.25], [0.5, 0.125]])),
    ]
    joined = experiment.joined(parts)
    assert torch.equal(joined.fractions, fractions)
    assert joined.probabilities.tolist() == [[1.0, 0.5], [0.75, 0.25], [0.5, 0.125]]
