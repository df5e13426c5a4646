"""Every explanation method through the real server: one batch mixing all of them, targets and
objectives gives each request the answer it gets alone; bad method options fail alone."""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import reference
from photos import packaged_photos

from saliency_service.methods import METHODS
from saliency_tools import SAMPLED_MODEL_NAME

PHOTOS = packaged_photos()
B64 = {name: base64.b64encode(data).decode() for name, data in PHOTOS.items()}

# Small sample and step counts: the point is that each request gets exactly what it asked for.
MIXED = [
    {"image": B64["chelsea"], "method": "vanilla"},
    {"image": B64["coffee"], "method": "gradcam", "target": 281},
    {"image": B64["chelsea"], "method": "smoothgrad", "samples": 3, "seed": 5},
    {
        "image": B64["coffee"],
        "method": "smoothgrad_sq",
        "samples": 2,
        "seed": 6,
        "objective": "loss",
    },
    {"image": B64["chelsea"], "method": "vargrad", "samples": 3, "seed": 7, "target": "tabby"},
    {"image": B64["coffee"], "method": "integrated_gradients", "steps": 4},
    {"image": B64["chelsea"], "method": "integrated_gradients", "steps": 3, "baseline": "black"},
    {"image": B64["coffee"], "method": "gradcam", "objective": "loss"},
]
BAD = [
    ({"image": B64["chelsea"], "method": "occlusion"}, "invalid_option"),
    ({"image": B64["chelsea"], "method": "gradcam", "samples": 3}, "invalid_option"),
    ({"image": B64["chelsea"], "method": "integrated_gradients", "steps": 257}, "invalid_option"),
    ({"image": B64["chelsea"], "method": "vargrad", "noise": 2}, "invalid_option"),
    ({"image": B64["chelsea"], "steps": 4}, "invalid_option"),  # vanilla takes no steps
]


def send_together(api, documents: list[dict]) -> list:
    """All at once, so that the server's dynamic batching puts them in shared batches: to the
    sampled registration, which answers every method (the interactive one redirects)."""
    with ThreadPoolExecutor(len(documents)) as pool:
        return list(pool.map(lambda d: api.post(json_body=d, model=SAMPLED_MODEL_NAME), documents))


def test_the_mixed_batch_answers_each_request_as_if_alone(api) -> None:
    documents = MIXED + [bad for bad, _ in BAD]
    together = send_together(api, documents)
    sizes = [r.json()["serving"]["batch_size"] for r in together if r.status_code == 200]
    assert max(sizes) > 1, "the requests were never batched together"
    for (bad, code), response in zip(BAD, together[len(MIXED) :], strict=True):
        assert response.status_code == 400, bad
        assert response.json()["error"]["code"] == code
        if bad.get("method") == "occlusion":
            assert all(name in response.json()["error"]["message"] for name in METHODS)
    for document, response in zip(MIXED, together[: len(MIXED)], strict=True):
        assert response.status_code == 200, response.text[:300]
        batched = response.json()
        alone = api.post(json_body=document).json()
        assert batched["saliency"]["method"] == document["method"]
        assert batched["target"]["index"] == alone["target"]["index"]
        assert batched["prediction"]["index"] == alone["prediction"]["index"]
        for key, value in alone["saliency"].items():
            if key in ("png", "max", "delta"):
                continue
            assert batched["saliency"][key] == value, key
        assert batched["saliency"]["max"] == pytest.approx(alone["saliency"]["max"], rel=1e-3)
        mine = reference.decode_png(batched["saliency"]["png"])
        theirs = reference.decode_png(alone["saliency"]["png"])
        # Batch sizes differ in float32 summation order only: see reference.assert_maps_agree.
        reference.assert_maps_agree(mine, theirs, 255)


def test_each_method_reports_its_settings(api) -> None:
    answers = {d["method"] + str(i): api.post(json_body=d).json() for i, d in enumerate(MIXED)}
    gradcam = answers["gradcam1"]["saliency"]
    assert (gradcam["layer"], gradcam["coarse_width"], gradcam["coarse_height"]) == (
        "features.12",
        13,
        13,
    )
    ig = answers["integrated_gradients5"]["saliency"]
    assert (ig["steps"], ig["baseline"]) == (4, "zero")
    assert isinstance(ig["delta"], float)
    for key in ("smoothgrad2", "smoothgrad_sq3", "vargrad4"):
        assert {"samples", "noise", "seed"} <= answers[key]["saliency"].keys()
    assert not {"samples", "steps", "layer"} & answers["vanilla0"]["saliency"].keys()


def test_integrated_gradients_delta_shrinks_with_more_steps(api) -> None:
    deltas = [
        abs(api.post(json_body={**MIXED[5], "steps": n}).json()["saliency"]["delta"])
        for n in (2, 64)
    ]
    assert deltas[1] < deltas[0]


def test_gradcam_map_is_coarse_and_smooth(api) -> None:
    answer = api.post(json_body=MIXED[1]).json()
    pixels = reference.decode_png(answer["saliency"]["png"]).astype(float)
    # Bilinear upsampling of a 13 x 13 map: neighbouring pixels differ by little.
    assert np.abs(np.diff(pixels, axis=1)).max() <= 255 / (224 / 13) + 1
