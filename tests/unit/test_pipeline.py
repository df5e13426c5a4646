"""The service end to end without a server: request rows in, (status, JSON body) out.

Expectations come from the naive reference of tests/reference.py (torchvision's stock transform,
one image at a time, ``.backward()``, float64) on the same seeded random-init model, never from
the service's code.
"""

from __future__ import annotations

import base64
import copy
import io
import json
from typing import Any

import numpy as np
import pytest
import reference
import torch
from bad_inputs import by_name
from PIL import Image

from saliency_service import pipeline
from saliency_service.pipeline import Answer, SaliencyService


def decode_png(encoded: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(encoded, validate=True)))
    assert image.format == "PNG"
    return np.asarray(image)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def model(exact_model: torch.nn.Module) -> torch.nn.Module:
    """float64: batched against alone and service against reference are about exactness (see
    tests/unit/test_attribution.py); what is left is float32 softmax and 8-bit quantisation."""
    return exact_model


@pytest.fixture(scope="module")
def service(model, labels) -> SaliencyService:
    return SaliencyService(copy.deepcopy(model), labels, "cpu")


@pytest.fixture(scope="module")
def good_rows(chelsea_png, coffee_png, chelsea_jpeg) -> list[dict[str, Any]]:
    return [
        {"body": bytearray(chelsea_png)},
        {"body": {"image": b64(coffee_png), "target": 281, "objective": "loss", "topk": 3}},
        {
            "image": bytearray(chelsea_jpeg),
            "colormap": bytearray(b"hot"),
            "overlay": bytearray(b"true"),
            "target": bytearray(b"tabby"),
        },
        {"body": json.dumps({"image": b64(coffee_png), "saliency": False, "topk": 1}).encode()},
    ]


BAD_ROWS = {  # from the shared matrix, tests/bad_inputs.py
    "invalid_option": by_name("json topk=0").row(),
    "invalid_image": by_name("png signature then junk").row(),
    "ambiguous_label": by_name("json target='crane'").row(),
}


@pytest.fixture(scope="module")
def mixed_batch(service, good_rows) -> tuple[list[dict], list[Answer], Any]:
    """Good rows with bad ones between them, answered as one batch."""
    rows = [
        good_rows[0],
        BAD_ROWS["invalid_option"],
        good_rows[1],
        good_rows[2],
        BAD_ROWS["invalid_image"],
        good_rows[3],
        BAD_ROWS["ambiguous_label"],
    ]
    answers = service.handle_batch(rows)
    return rows, answers, service.last_report


def test_bad_rows_get_their_own_errors(mixed_batch) -> None:
    rows, answers, report = mixed_batch
    assert len(answers) == len(rows)
    assert [a.status for a in answers] == [200, 400, 200, 200, 400, 200, 400]
    for index, code in [(1, "invalid_option"), (4, "invalid_image"), (6, "ambiguous_label")]:
        body = answers[index].body
        assert set(body) == {"error"}
        assert set(body["error"]) == {"code", "message"}
        assert body["error"]["code"] == code
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "[134, 517]" in answers[6].body["error"]["message"]
    assert report.size == len(rows)
    assert report.error_codes == ["invalid_option", "invalid_image", "ambiguous_label"]
    for answer in answers:
        json.dumps(answer.body)  # every body is JSON as it stands


def test_good_rows_answer_as_if_alone(service, mixed_batch) -> None:
    """Batch neighbours, good or bad, change nothing beyond float32 summation order.

    The maps may differ by one 8-bit level where 255 * s / max lies within ~1e-3 of a rounding
    boundary (relative float error ~1e-6): a small fraction of the pixels at most.
    """
    rows, answers, _ = mixed_batch
    for index in (0, 2, 3, 5):
        (alone,) = service.handle_batch([rows[index]])
        batched = answers[index]
        assert alone.status == batched.status == 200
        assert alone.body.keys() == batched.body.keys()
        assert alone.body["prediction"]["index"] == batched.body["prediction"]["index"]
        assert [c["index"] for c in alone.body["topk"]] == [
            c["index"] for c in batched.body["topk"]
        ]
        for a, b in zip(alone.body["topk"], batched.body["topk"], strict=True):
            assert a["probability"] == pytest.approx(b["probability"], rel=1e-4)
        assert alone.body["crop_box"] == batched.body["crop_box"]
        assert alone.body["serving"]["batch_size"] == 1
        assert batched.body["serving"]["batch_size"] == len(rows)
        if "saliency" not in batched.body:
            continue
        assert alone.body["target"]["index"] == batched.body["target"]["index"]
        assert alone.body["saliency"]["max"] == pytest.approx(batched.body["saliency"]["max"], 1e-4)
        for key in ("saliency", "heatmap", "overlay"):
            if key in batched.body:
                mine = decode_png(batched.body[key]["png"]).astype(int)
                theirs = decode_png(alone.body[key]["png"]).astype(int)
                assert np.abs(mine - theirs).max() <= 1, key
                assert (mine != theirs).mean() < 0.01, key


@pytest.mark.parametrize(
    ("index", "target", "objective", "topk"),
    [(0, None, "score", 5), (1, 281, "loss", 3), (2, 281, "score", 5)],
)
def test_answers_match_the_reference(
    model, labels, good_rows, mixed_batch, index, target, objective, topk
) -> None:
    rows, answers, _ = mixed_batch
    row = good_rows[index]
    position = rows.index(row)
    data = row.get("image") or row["body"]
    data = base64.b64decode(data["image"]) if isinstance(data, dict) else bytes(data)
    expected_map, expected_target, logits = reference.saliency(model, data, target, objective)
    body = answers[position].body

    # classification
    probabilities = torch.softmax(logits, dim=0)
    expected_top = probabilities.topk(topk)
    assert [c["index"] for c in body["topk"]] == expected_top.indices.tolist()
    for entry, p in zip(body["topk"], expected_top.values.tolist(), strict=True):
        assert entry["probability"] == pytest.approx(p, rel=1e-4)
        assert entry["label"] == labels.names[entry["index"]]
    assert body["prediction"] == body["topk"][0]

    # what the map explains
    assert body["target"]["index"] == expected_target
    assert body["target"]["label"] == labels.names[expected_target]
    assert body["target"]["score"] == pytest.approx(float(logits[expected_target]), 1e-4)

    # the map: s = pixel / 255 * max, within half a level (+ float32 slack) of the reference
    saliency = body["saliency"]
    assert (saliency["width"], saliency["height"]) == (224, 224)
    assert saliency["objective"] == objective
    assert saliency["method"] == "vanilla"
    peak = saliency["max"]
    assert peak > 0, "an all-zero map would make the comparison vacuous"
    assert peak == pytest.approx(float(expected_map.max()), rel=1e-4)
    pixels = decode_png(saliency["png"])
    assert pixels.shape == (224, 224) and pixels.dtype == np.uint8
    recovered = pixels / 255.0 * peak
    assert np.abs(recovered - expected_map).max() <= peak / 510 + 1e-5 * peak


def test_crop_box_is_reported(mixed_batch) -> None:
    _, answers, _ = mixed_batch
    box = answers[0].body["crop_box"]
    assert isinstance(box, list) and all(isinstance(v, int) for v in box)
    # chelsea is 451x300. Shorter side 300 -> 256: the centred 224 square is 262.5 px of the
    # original, i.e.
    # x in 225.5 -/+ 131.25 = (94.25, 356.75) and y in 150 -/+ 131.25 = (18.75, 281.25).
    ideal = (225.5 - 131.25, 150 - 131.25, 225.5 + 131.25, 150 + 131.25)
    assert all(abs(a - b) <= 1 for a, b in zip(box, ideal, strict=True))


def test_classification_only_has_no_pictures(model, coffee_png, mixed_batch) -> None:
    _, answers, _ = mixed_batch
    body = answers[5].body
    assert {"saliency", "heatmap", "overlay", "target"}.isdisjoint(body)
    assert len(body["topk"]) == 1
    _, predicted, _ = reference.saliency(model, coffee_png)
    assert body["prediction"]["index"] == predicted


def test_batch_without_any_saliency(service, model, chelsea_png, coffee_png) -> None:
    rows = [
        {"body": {"image": b64(chelsea_png), "saliency": False}},
        {"image": bytearray(coffee_png), "saliency": bytearray(b"false"), "topk": bytearray(b"2")},
    ]
    answers = service.handle_batch(rows)
    assert [a.status for a in answers] == [200, 200]
    for answer, data in zip(answers, (chelsea_png, coffee_png), strict=True):
        assert "saliency" not in answer.body
        _, predicted, _ = reference.saliency(model, data)
        assert answer.body["prediction"]["index"] == predicted
    assert len(answers[1].body["topk"]) == 2


def test_heatmap_and_overlay(mixed_batch) -> None:
    rows, answers, _ = mixed_batch
    body = answers[3].body  # chelsea JPEG, colormap hot, overlay
    gray = decode_png(body["saliency"]["png"]).astype(int)
    heat = decode_png(body["heatmap"]["png"]).astype(int)
    over = decode_png(body["overlay"]["png"]).astype(int)
    assert body["heatmap"]["colormap"] == body["overlay"]["colormap"] == "hot"
    assert heat.shape == over.shape == (224, 224, 3)
    # hot: dark at 0, white at 255, red >= green >= blue, brighter where the map is
    assert heat[gray == 0].sum(axis=1).max() < heat[gray == 255].sum(axis=1).min()
    assert (heat[gray == 255] == 255).all()
    assert (heat[..., 0] >= heat[..., 1]).all() and (heat[..., 1] >= heat[..., 2]).all()
    # the colour comes from the float map, so compare gray levels, not pixels within one level
    brightness = heat.sum(axis=2)
    means = [brightness[gray == g].mean() for g in np.unique(gray)]
    assert (np.diff(means) >= 0).all()
    # the heatmap clips the map at its 99th percentile: 1% of the pixels saturate
    assert body["heatmap"]["clip"] == body["overlay"]["clip"] == 99
    assert (heat == 255).all(axis=2).mean() == pytest.approx(0.01, abs=0.003)
    # the overlay: the crop (the picture the model saw), the heatmap laid over it as opaque as
    # the clipped map is high (the heatmap's blue channel is 0 until its top third: use red)
    crop = np.asarray(reference.RESIZE_CROP(reference.load_rgb(bytes(rows[3]["image"]))), float)
    alpha = body["overlay"]["alpha"]
    assert alpha == 0.7
    level = heat[..., :1] / 255 * 0.365079  # hot's red rises over the first 36.5% of the levels
    level = np.where(heat[..., :1] < 255, level, np.nan)  # and saturates there: unknown above
    expected = (1 - alpha * level) * crop + alpha * level * heat
    known = ~np.isnan(expected)
    assert np.abs(over[known] - expected[known]).max() <= 2.5
    black = (heat == 0).all(axis=2)
    assert black.any() and (over[black] == crop[black]).all()  # no map, the photo itself


def test_gray_overlay_without_heatmap(service, chelsea_png) -> None:
    (answer,) = service.handle_batch([{"body": {"image": b64(chelsea_png), "overlay": True}}])
    assert answer.status == 200
    assert "heatmap" not in answer.body
    gray = decode_png(answer.body["saliency"]["png"]).astype(float)
    over = decode_png(answer.body["overlay"]["png"]).astype(float)
    assert over.shape == (224, 224, 3)
    crop = np.asarray(reference.RESIZE_CROP(reference.load_rgb(chelsea_png)), dtype=float)
    # gray colormap: the display level is the colour; opacity 0.7 x level / 255
    level = np.clip(gray / np.percentile(gray, 99), 0, 1)[..., None]
    expected = (1 - 0.7 * level) * crop + 0.7 * level * (level * 255)
    assert np.abs(over - expected).max() <= 3  # levels from the float map, not the 8-bit one


def test_plain_request_has_no_heatmap_or_overlay(mixed_batch) -> None:
    _, answers, _ = mixed_batch
    assert "heatmap" not in answers[0].body and "overlay" not in answers[0].body


def test_unexpected_failure_costs_one_request(service, chelsea_png, monkeypatch) -> None:
    poisoned = b"POISON" + chelsea_png[6:]
    real_decode = pipeline.images.decode

    def decode(data: bytes, limits):
        if data.startswith(b"POISON"):
            raise RuntimeError("simulated bug")
        return real_decode(data, limits)

    monkeypatch.setattr(pipeline.images, "decode", decode)
    answers = service.handle_batch([{"body": poisoned}, {"body": chelsea_png}])
    assert answers[0].status == 500
    assert answers[0].body["error"]["code"] == "internal_error"
    assert answers[1].status == 200
    assert "saliency" in answers[1].body


def test_oversized_image_is_413(service, chelsea_png) -> None:
    config = pipeline.ServiceConfig.from_mapping({"max_image_pixels": 1000})
    small = SaliencyService(service.model, service.labels, "cpu", config)
    (answer,) = small.handle_batch([{"body": chelsea_png}])
    assert answer.status == 413
    assert answer.body["error"]["code"] == "image_too_large"


def test_empty_batch(service) -> None:
    assert service.handle_batch([]) == []


def test_squeezenet_answers_do_not_report_the_preprocessing(mixed_batch) -> None:
    """Only archives of other models (with a model.json) add "preprocessing" to the answer."""
    _, answers, _ = mixed_batch
    assert all("preprocessing" not in answer.body for answer in answers)
