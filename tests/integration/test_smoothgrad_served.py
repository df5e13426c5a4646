"""SmoothGrad through the real server: recorded, reproducible by seed, equal to a naive computation.

Few samples per request: the maps need not be smooth here, only exactly what was asked for.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
import reference
import reference_smoothgrad
from photos import packaged_photos

PHOTOS = packaged_photos()
SETTINGS = {"method": "smoothgrad", "samples": 3, "noise": 0.2}


def served_map(answer: dict) -> np.ndarray:
    return reference.decode_png(answer["saliency"]["png"]) / 255.0 * answer["saliency"]["max"]


@pytest.mark.parametrize(("name", "target"), [("chelsea", None), ("coffee", 281)])
def test_a_seeded_answer_is_recorded_reproducible_and_equals_a_naive_smoothgrad(
    api, served_model, name, target
) -> None:
    options = {**SETTINGS, "seed": 2024} | ({"target": target} if target is not None else {})
    first = api.answer(PHOTOS[name], **options)
    again = api.answer(PHOTOS[name], **options)
    saliency = first["saliency"]
    assert {key: saliency[key] for key in ("method", "samples", "noise", "seed")} == {
        "method": "smoothgrad",
        "samples": 3,
        "noise": 0.2,
        "seed": 2024,
    }
    assert again["saliency"]["png"] == saliency["png"]

    x = reference.STANDARD_PREPROCESS(reference.load_rgb(PHOTOS[name]))
    expected, expected_target = reference_smoothgrad.smoothgrad(
        served_model, x, samples=3, noise=0.2, seed=2024, target=target
    )
    expected = expected.numpy()
    assert first["target"]["index"] == expected_target
    assert saliency["max"] == pytest.approx(float(expected.max()), rel=1e-3)
    recovered = served_map(first)
    assert reference.correlation(recovered, expected) >= 0.99
    reference.assert_maps_agree(recovered, expected, expected.max())


def test_without_a_seed_the_server_draws_one_that_reproduces_the_answer(api) -> None:
    first = api.answer(PHOTOS["coffee"], **SETTINGS)
    seed = first["saliency"]["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**31
    again = api.answer(PHOTOS["coffee"], **SETTINGS, seed=seed)
    assert again["saliency"]["png"] == first["saliency"]["png"]
    other = api.answer(PHOTOS["coffee"], **SETTINGS, seed=(seed + 1) % 2**31)
    assert other["saliency"]["png"] != first["saliency"]["png"]


def test_multipart_options_reach_smoothgrad_as_json_ones_do(api) -> None:
    image = PHOTOS["chelsea"]
    as_json = api.answer(image, **SETTINGS, seed=7)
    form = {"method": "smoothgrad", "samples": "3", "noise": "0.2", "seed": "7"}
    response = api.post(files={"image": ("chelsea.png", image, "image/png")}, data=form)
    assert response.status_code == 200, response.text
    assert response.json()["saliency"] == as_json["saliency"]


@pytest.mark.parametrize(
    "options",
    [
        {"method": "smoothgrad", "samples": 51},
        {"method": "smoothgrad", "noise": 2},
        {"method": "smoothgrad", "seed": -5},
        {"method": "occlusion"},
        {"samples": 5},
    ],
)
def test_bad_smoothgrad_options_are_invalid_option_errors(api, options) -> None:
    image = base64.b64encode(PHOTOS["coffee"]).decode()
    response = api.post(json_body={"image": image, **options})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_option"
