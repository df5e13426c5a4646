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
def two() -> photos.Photos:
    encoded = photos.skimage_photos()
    return photos.prepare({name: encoded[name] for name in ("chelsea", "coffee")})


def test_the_skimage_photos_are_the_published_natural_ones() -> None:
    encoded = photos.skimage_photos()
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


def test_every_map_is_the_one_the_service_computes_for_that_method(exact_model, two) -> None:
    """One shared set of noisy copies gives SmoothGrad, SmoothGrad-Squared and VarGrad: each
    equals the engine's own answer for that method with the same seed (float64: exact)."""
    inputs = two.inputs.double()
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
            torch.testing.assert_close(maps[name][n], expected.map.float(), msg=name)


def test_random_maps_depend_on_the_photo_not_on_the_chunk() -> None:
    whole = experiment.random_maps(5, (4, 4), seed=2)
    torch.testing.assert_close(experiment.random_maps(2, (4, 4), seed=2, first=3), whole[3:])
    torch.testing.assert_close(
        whole[0], torch.rand((4, 4), generator=torch.Generator().manual_seed(2))
    )
    assert not torch.equal(whole[0], whole[1])


def test_curves_of_all_methods_at_once_equal_each_method_alone(model, two) -> None:
    served = model.to(memory_format=torch.channels_last)
    targets = torch.tensor([5, 9])
    generator = torch.Generator().manual_seed(4)
    maps = {name: torch.rand(2, 224, 224, generator=generator) for name in ("a", "b", "c")}
    settings = experiment.Settings(pixels_per_step=224 * 224 // 4, batch_size=7)
    deletion, insertion = experiment.curves_of(served, two.inputs, maps, targets, settings)
    assert list(deletion) == list(insertion) == ["a", "b", "c"]
    for name in maps:
        alone = experiment.curves_of(served, two.inputs, {name: maps[name]}, targets, settings)
        for together, single in zip((deletion, insertion), alone, strict=True):
            assert together[name].probabilities.shape == (2, 5)
            torch.testing.assert_close(
                together[name].probabilities, single[name].probabilities, atol=1e-5, rtol=1e-4
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
