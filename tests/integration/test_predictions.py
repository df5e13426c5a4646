"""The served model against independent expectations: known photos, naive per-image maps."""

from __future__ import annotations

import numpy as np
import pytest
import reference
from photos import KNOWN_CLASSES, encode, labelled_photos

PHOTOS = labelled_photos()


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_known_photos_get_their_class_in_the_top_3(api, name: str) -> None:
    response = api.post(PHOTOS[name])
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    answer = response.json()
    top3 = {entry["index"] for entry in answer["topk"][:3]}
    assert top3 & KNOWN_CLASSES[name], (name, answer["topk"][:3])
    assert answer["prediction"] == answer["topk"][0]
    assert answer["target"]["index"] == answer["prediction"]["index"]


@pytest.mark.parametrize(
    ("objective", "target"),
    [("score", None), ("loss", None), ("score", 281), ("loss", 967)],
)
@pytest.mark.parametrize("name", ["chelsea", "coffee"])
def test_served_map_equals_a_naive_per_image_computation(
    api, served_model, name, objective, target
) -> None:
    options = {"objective": objective} | ({"target": target} if target is not None else {})
    image = PHOTOS[name]
    answer = api.answer(image, **options)

    expected, expected_target, logits = reference.saliency(served_model, image, target, objective)
    served = reference.decode_png(answer["saliency"]["png"]).astype(np.float64)
    assert served.shape == expected.shape == (224, 224)
    assert answer["target"]["index"] == expected_target
    assert answer["saliency"]["objective"] == objective
    assert answer["saliency"]["max"] == pytest.approx(float(expected.max()), rel=1e-3)
    recovered = served / 255.0 * answer["saliency"]["max"]
    assert reference.correlation(recovered, expected) >= 0.99
    reference.assert_maps_agree(recovered, expected, expected.max())  # 8-bit + float32 rounding
    assert answer["target"]["score"] == pytest.approx(float(logits[expected_target]), rel=1e-3)


def test_256_pixel_square_images_match_the_naive_computation(api, served_model) -> None:
    rng = np.random.default_rng(7)
    from skimage import data

    photo = data.chelsea()[:256, 100:356]  # a real 256x256 crop: resize is the identity
    for image in (photo, rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)):
        encoded = encode(image)
        answer = api.post(encoded).json()
        expected, target, _ = reference.saliency(served_model, encoded)
        assert answer["crop_box"] == [16, 16, 240, 240]
        assert answer["target"]["index"] == target
        served = reference.decode_png(answer["saliency"]["png"]) / 255.0 * answer["saliency"]["max"]
        assert reference.correlation(served, expected) >= 0.99


def test_raw_json_and_multipart_forms_agree(api) -> None:
    image = PHOTOS["coffee"]
    raw = api.post(image, headers={"Content-Type": "image/png"}).json()
    as_json = api.answer(image)
    multipart = api.post(files={"image": ("coffee.png", image, "image/png")}).json()
    multipart_data = api.post(files={"data": ("coffee.png", image, "image/png")}).json()
    for other in (as_json, multipart, multipart_data):
        assert other["prediction"] == raw["prediction"]
        assert other["target"] == raw["target"]
        assert other["crop_box"] == raw["crop_box"]
        assert other["saliency"]["png"] == raw["saliency"]["png"]


def test_multipart_options_are_strings_coerced_like_json(api) -> None:
    image = PHOTOS["chelsea"]
    options = {
        "target": "tabby",
        "topk": "3",
        "objective": "loss",
        "colormap": "hot",
        "overlay": "true",
    }
    form = api.post(files={"image": ("chelsea.png", image, "image/png")}, data=options).json()
    as_json = api.answer(image, target=281, topk=3, objective="loss", colormap="hot", overlay=True)
    assert form["target"]["index"] == as_json["target"]["index"] == 281
    assert len(form["topk"]) == len(as_json["topk"]) == 3
    for key in ("saliency", "heatmap", "overlay"):
        assert form[key]["png"] == as_json[key]["png"]
    assert reference.decode_png(form["heatmap"]["png"]).shape == (224, 224, 3)
    assert reference.decode_png(form["overlay"]["png"]).shape == (224, 224, 3)


def test_explanations_endpoint_gives_the_same_answer(api) -> None:
    image = PHOTOS["chelsea"]
    predicted = api.post(image).json()
    explained = api.post(image, endpoint="explanations")
    assert explained.status_code == 200, explained.text
    explained = explained.json()
    assert explained["prediction"] == predicted["prediction"]
    assert explained["saliency"]["png"] == predicted["saliency"]["png"]


def test_classification_only_mode_skips_the_map(api) -> None:
    answer = api.answer(PHOTOS["coffee"], saliency=False)
    assert "saliency" not in answer and "target" not in answer
    assert answer["prediction"]["index"] == 967
