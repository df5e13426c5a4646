"""SmoothGrad as a request option: parsing, the response, seeds, and batching in the service."""

from __future__ import annotations

import base64
import copy
import io

import numpy as np
import pytest
import reference_smoothgrad
from PIL import Image

from saliency_service import images
from saliency_service.attribution import MAX_SEED
from saliency_service.errors import RequestError
from saliency_service.parsing import Options, RequestLimits, parse_options
from saliency_service.pipeline import SaliencyService, ServiceConfig


def parse(raw: dict, limits: RequestLimits = RequestLimits()) -> Options:
    return parse_options(raw, None, limits)  # labels are only needed for named targets


def row(image: bytes, **options) -> dict:
    return {"body": {"image": base64.b64encode(image).decode(), **options}}


def decoded_map(answer: dict) -> np.ndarray:
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["saliency"]["png"]))))
    return pixels / 255.0 * answer["saliency"]["max"]


@pytest.fixture(scope="module")
def model(exact_model):
    """float64: the service against a naive SmoothGrad is about exactness (test_smoothgrad.py)."""
    return exact_model


# Model inputs of 112 x 112 instead of 224 x 224 (a quarter of the work): what is checked here
# (the service against a naive SmoothGrad of the same input, a batch against its requests alone,
# the passes a batch is cut into) does not depend on the input's size.
SMALL = images.Preprocessing(resize=128, crop=112)


@pytest.fixture(scope="module")
def service(model, labels) -> SaliencyService:
    config = ServiceConfig(max_gradient_batch=3, preprocessing=SMALL)
    return SaliencyService(copy.deepcopy(model), labels, config=config)


def test_defaults_are_vanilla_and_the_documented_smoothgrad_settings() -> None:
    assert parse({}) == Options()
    assert Options().method == "vanilla"
    options = parse({"method": "SmoothGrad"})
    assert options.method == "smoothgrad"
    assert options.settings == {"samples": 25, "noise": 0.15, "seed": None}


def test_multipart_strings_are_coerced() -> None:
    options = parse({"method": " smoothgrad ", "samples": "7", "noise": "0.2", "seed": "123"})
    assert options.settings == {"samples": 7, "noise": 0.2, "seed": 123}
    assert parse({"method": "smoothgrad", "noise": 0, "seed": 0}).settings["noise"] == 0.0
    settings = parse({"method": "smoothgrad", "seed": MAX_SEED, "samples": 50.0}).settings
    assert settings["seed"] == MAX_SEED


@pytest.mark.parametrize(
    "raw",
    [
        {"method": "integrated"},
        {"method": 1},
        {"method": "smoothgrad", "samples": 0},
        {"method": "smoothgrad", "samples": 51},
        {"method": "smoothgrad", "samples": "ten"},
        {"method": "smoothgrad", "samples": 2.5},
        {"method": "smoothgrad", "samples": True},
        {"method": "smoothgrad", "noise": -0.01},
        {"method": "smoothgrad", "noise": 1.01},
        {"method": "smoothgrad", "noise": "nan"},
        {"method": "smoothgrad", "noise": "lots"},
        {"method": "smoothgrad", "noise": False},
        {"method": "smoothgrad", "seed": -1},
        {"method": "smoothgrad", "seed": MAX_SEED + 1},
        {"method": "smoothgrad", "seed": 1.5},
        {"samples": 10},  # smoothgrad-only options with the vanilla method
        {"method": "vanilla", "noise": 0.1},
        {"seed": 3},
    ],
)
def test_invalid_values_are_invalid_option_errors(raw: dict) -> None:
    with pytest.raises(RequestError) as caught:
        parse(raw)
    assert caught.value.code == "invalid_option"
    assert caught.value.status == 400


def test_the_sample_limit_is_configurable() -> None:
    config = ServiceConfig.from_mapping({"max_samples": 8, "max_gradient_batch": 16})
    assert config.max_gradient_batch == 16
    assert (
        parse({"method": "smoothgrad", "samples": 8}, config.request_limits).settings["samples"]
        == 8
    )
    with pytest.raises(RequestError):
        parse({"method": "smoothgrad", "samples": 9}, config.request_limits)
    assert ServiceConfig.from_mapping({}).max_gradient_batch == ServiceConfig().max_gradient_batch
    with pytest.raises(ValueError):
        ServiceConfig.from_mapping({"max_gradient_batch": 0})


def test_the_response_records_the_settings_and_equals_a_naive_smoothgrad(
    service, model, chelsea_png
) -> None:
    (answer,) = service.handle_batch(
        [row(chelsea_png, method="smoothgrad", samples=2, noise=0.2, seed=77)]
    )
    assert answer.status == 200, answer.body
    saliency = answer.body["saliency"]
    assert {k: saliency[k] for k in ("method", "samples", "noise", "seed")} == {
        "method": "smoothgrad",
        "samples": 2,
        "noise": 0.2,
        "seed": 77,
    }
    x = images.preprocess(images.decode(chelsea_png), SMALL).tensor.double()
    expected, target = reference_smoothgrad.smoothgrad(model, x, 2, 0.2, 77)
    assert answer.body["target"]["index"] == target
    assert saliency["max"] == pytest.approx(float(expected.max()), rel=1e-4)
    assert np.abs(decoded_map(answer.body) - expected.numpy()).max() <= saliency["max"] / 255


def test_a_drawn_seed_is_reported_and_reproduces_the_map(service, coffee_png) -> None:
    (first,) = service.handle_batch([row(coffee_png, method="smoothgrad", samples=2)])
    seed = first.body["saliency"]["seed"]
    assert isinstance(seed, int) and 0 <= seed <= MAX_SEED
    (again,) = service.handle_batch([row(coffee_png, method="smoothgrad", samples=2, seed=seed)])
    assert again.body["saliency"]["png"] == first.body["saliency"]["png"]
    assert again.body["saliency"]["seed"] == seed


def test_vanilla_answers_say_vanilla_and_carry_no_smoothgrad_settings(service, coffee_png) -> None:
    (answer,) = service.handle_batch([row(coffee_png)])
    assert answer.body["saliency"]["method"] == "vanilla"
    assert not {"samples", "noise", "seed"} & answer.body["saliency"].keys()


def test_a_mixed_batch_answers_each_request_as_if_alone(service, chelsea_png, coffee_png) -> None:
    rows = [
        row(chelsea_png),
        row(chelsea_png, method="smoothgrad", samples=2, noise=0.1, seed=1),
        row(coffee_png, method="smoothgrad", samples=3, seed=2, objective="loss", target=281),
        row(coffee_png, saliency=False),
        {"body": b"not an image"},
        row(coffee_png, topk=2),
    ]
    together = service.handle_batch(rows)
    assert [a.status for a in together] == [200, 200, 200, 200, 400, 200]
    for batch_row, answer in zip(rows, together, strict=True):
        if answer.status != 200:
            continue
        (alone,) = service.handle_batch([batch_row])
        assert answer.body["prediction"]["index"] == alone.body["prediction"]["index"]
        assert answer.body.get("target", {}).get("index") == alone.body.get("target", {}).get(
            "index"
        )
        assert ("saliency" in answer.body) == ("saliency" in alone.body)
        if "saliency" in answer.body:
            peak = alone.body["saliency"]["max"]
            assert answer.body["saliency"]["max"] == pytest.approx(peak, rel=1e-4)
            assert np.abs(decoded_map(answer.body) - decoded_map(alone.body)).max() <= peak / 128


def test_smoothgrad_copies_are_chunked_by_max_gradient_batch(
    model, labels, chelsea_png, coffee_png
) -> None:
    batches: list[int] = []
    config = ServiceConfig(max_gradient_batch=4, preprocessing=SMALL)
    service = SaliencyService(copy.deepcopy(model), labels, config=config)
    hook = service.model.register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
    try:
        service.handle_batch(
            [
                row(chelsea_png, method="smoothgrad", samples=3, seed=1),
                row(coffee_png),
                row(coffee_png, method="smoothgrad", samples=2, seed=2),
            ]
        )
    finally:
        hook.remove()
    # vanilla: one pass of its image; SmoothGrad: one clean pass of its 2 images, then 5 copies in
    # passes of 4 and 1.
    assert batches == [1, 2, 4, 1]


def test_seed_draws_differ(service, coffee_png) -> None:
    answers = service.handle_batch([row(coffee_png, method="smoothgrad", samples=1)] * 2)
    seeds = {a.body["saliency"]["seed"] for a in answers}
    assert len(seeds) == 2
