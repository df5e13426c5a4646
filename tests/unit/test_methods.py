"""Explanation methods as objects: the registry, each method's options, and how the service
batches them (shared passes; a mixed batch answers every request as if it were alone)."""

from __future__ import annotations

import base64
import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image

from saliency_service.errors import RequestError
from saliency_service.images import Preprocessing
from saliency_service.methods import METHODS, SampledMethod, SinglePassMethod, owners_of
from saliency_service.parsing import Options, RequestLimits, parse_options
from saliency_service.pipeline import SaliencyService, ServiceConfig

ALL = ("vanilla", "gradcam", "smoothgrad", "smoothgrad_sq", "vargrad", "integrated_gradients")


def parse(raw: dict, limits: RequestLimits = RequestLimits()) -> Options:
    return parse_options(raw, None, limits)  # labels are only needed for named targets


def row(image: bytes, **options) -> dict:
    return {"body": {"image": base64.b64encode(image).decode(), **options}}


def decoded(answer: dict) -> np.ndarray:
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["saliency"]["png"]))))
    return pixels.astype(int)


# Model inputs of 112 x 112 instead of 224 x 224 (a quarter of the work) where the input's size is
# not the point: a batch against its requests alone, the passes a batch is cut into.
SMALL = Preprocessing(resize=128, crop=112)


@pytest.fixture(scope="module")
def service(exact_model, labels) -> SaliencyService:
    """float64: a batch against its requests alone is about exactness (test_attribution.py)."""
    config = ServiceConfig(preprocessing=SMALL)
    return SaliencyService(copy.deepcopy(exact_model), labels, config=config)


def test_the_registry_holds_every_method_under_its_own_name() -> None:
    assert tuple(METHODS) == ALL
    for name, method in METHODS.items():
        assert method.name == name
        assert method.summary
        assert isinstance(method, (SinglePassMethod, SampledMethod))


def test_defaults() -> None:
    assert parse({}) == Options(method="vanilla", settings={})
    assert parse({"method": "integrated_gradients"}).settings == {"steps": 32, "baseline": "zero"}
    assert parse({"method": "vargrad"}).settings == {"samples": 25, "noise": 0.15, "seed": None}
    assert parse({"method": "gradcam"}).settings == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"method": "occlusion"}, "must be one of " + ", ".join(ALL)),
        ({"method": "gradcam", "samples": 3}, "applies to method smoothgrad, smoothgrad_sq"),
        ({"method": "smoothgrad", "steps": 3}, "applies to method integrated_gradients only"),
        ({"steps": 3}, "integrated_gradients"),  # vanilla, the default, takes no steps
        ({"method": "integrated_gradients", "steps": 0}, "integer 1-256"),
        ({"method": "integrated_gradients", "steps": 257}, "integer 1-256"),
        ({"method": "integrated_gradients", "steps": "many"}, "integer 1-256"),
        ({"method": "integrated_gradients", "baseline": "white"}, "zero, black"),
        ({"method": "vargrad", "samples": 51}, "integer 1-50"),
        ({"method": "smoothgrad_sq", "noise": 1.5}, "number 0-1"),
        ({"method": "vargrad", "seed": 2**31}, "integer 0-2147483647"),
    ],
)
def test_bad_options_are_invalid_option_errors(raw: dict, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse(raw)
    assert caught.value.code == "invalid_option"
    assert caught.value.status == 400
    assert message in caught.value.message


def test_an_unknown_option_lists_every_known_one() -> None:
    with pytest.raises(RequestError) as caught:
        parse({"stepz": 3})
    assert caught.value.code == "unknown_option"
    for name in ("steps", "baseline", "samples", "noise", "seed", "topk"):
        assert name in caught.value.message


def test_limits_are_configurable() -> None:
    config = ServiceConfig.from_mapping({"max_steps": 8})
    assert parse({"method": "integrated_gradients", "steps": 8}, config.request_limits)
    with pytest.raises(RequestError):
        parse({"method": "integrated_gradients", "steps": 9}, config.request_limits)


def test_owners_of_options() -> None:
    assert owners_of("samples") == ["smoothgrad", "smoothgrad_sq", "vargrad"]
    assert owners_of("steps") == ["integrated_gradients"]


MIXED = [
    ("chelsea", {"method": "vanilla"}),
    ("coffee", {"method": "gradcam", "target": 281}),
    ("chelsea", {"method": "smoothgrad", "samples": 2, "seed": 5, "objective": "loss"}),
    ("coffee", {"method": "smoothgrad_sq", "samples": 3, "seed": 6}),
    ("chelsea", {"method": "vargrad", "samples": 2, "seed": 7, "target": 282}),
    ("coffee", {"method": "integrated_gradients", "steps": 3, "baseline": "black"}),
    ("chelsea", {"method": "integrated_gradients", "steps": 2, "objective": "loss"}),
    ("coffee", {"method": "gradcam", "objective": "loss"}),
    ("chelsea", {"saliency": False}),
]


def test_a_batch_mixing_every_method_answers_each_request_as_if_alone(
    service, chelsea_png, coffee_png
) -> None:
    photos = {"chelsea": chelsea_png, "coffee": coffee_png}
    rows = [row(photos[name], **options) for name, options in MIXED]
    rows.insert(3, {"body": {"image": "QUJD", "method": "vargrad", "steps": 2}})  # a bad one
    together = service.handle_batch(rows)
    assert together[3].status == 400
    assert together[3].body["error"]["code"] == "invalid_option"
    del rows[3], together[3]
    for batch_row, answer in zip(rows, together, strict=True):
        assert answer.status == 200, answer.body
        (alone,) = service.handle_batch([batch_row])
        assert answer.body["prediction"]["index"] == alone.body["prediction"]["index"]
        probability = alone.body["prediction"]["probability"]
        assert answer.body["prediction"]["probability"] == pytest.approx(probability, rel=1e-6)
        assert answer.body.keys() == alone.body.keys()
        if "saliency" not in alone.body:
            continue
        assert answer.body["target"]["index"] == alone.body["target"]["index"]
        mine, theirs = answer.body["saliency"], alone.body["saliency"]
        assert mine.keys() == theirs.keys()
        for key in mine.keys() - {"png", "max", "delta"}:
            assert mine[key] == theirs[key], key
        assert mine["max"] == pytest.approx(theirs["max"], rel=1e-9)
        # float64 maps; 8-bit rendering may round a value within ~1e-12 of a boundary otherwise
        difference = np.abs(decoded(answer.body) - decoded(alone.body))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.001


def test_vanilla_and_gradcam_of_the_same_photos_answer_as_if_alone(
    service, chelsea_png, coffee_png
) -> None:
    """Grad-CAM rows that take another row's forward pass (attribution.passes) get their own
    target's map, the one they get alone; so do the rows they take it from."""
    rows = [
        row(chelsea_png, method="vanilla"),
        row(chelsea_png, method="gradcam"),
        row(chelsea_png, method="gradcam", target=281),
        row(coffee_png, method="gradcam", objective="loss"),
        row(coffee_png, method="gradcam"),
        row(coffee_png, method="gradcam"),
    ]
    together = service.handle_batch(rows)
    for batch_row, answer in zip(rows, together, strict=True):
        (alone,) = service.handle_batch([batch_row])
        assert answer.status == alone.status == 200, answer.body
        assert answer.body["target"]["index"] == alone.body["target"]["index"]
        score = alone.body["target"]["score"]
        assert answer.body["target"]["score"] == pytest.approx(score, rel=1e-9)
        mine, theirs = answer.body["saliency"], alone.body["saliency"]
        assert mine["max"] == pytest.approx(theirs["max"], rel=1e-9)
        difference = np.abs(decoded(answer.body) - decoded(alone.body))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.001
    assert together[2].body["target"]["index"] == 281 != together[1].body["target"]["index"]
    assert decoded(together[4].body).tolist() == decoded(together[5].body).tolist()


def test_each_method_reports_what_it_computed(model, labels, coffee_png) -> None:
    """What the request set and what the defaults filled in (the defaults themselves:
    test_defaults). float32 and small settings: reporting is not about exactness or sizes."""
    service = SaliencyService(copy.deepcopy(model), labels)
    requested = {"smoothgrad": {"samples": 2}, "smoothgrad_sq": {"samples": 3, "noise": 0.25}}
    requested |= {"vargrad": {"samples": 2, "seed": 9}, "integrated_gradients": {"steps": 3}}
    answers = {}
    for name in ALL:
        (answer,) = service.handle_batch([row(coffee_png, method=name, **requested.get(name, {}))])
        assert answer.status == 200, answer.body
        answers[name] = answer.body["saliency"]
        assert answers[name]["method"] == name
        settings = {**parse({"method": name}).settings, **requested.get(name, {})}
        for key, value in settings.items():  # a seed left out is drawn: checked below
            assert value is None or answers[name][key] == value, (name, key)
    assert answers["gradcam"]["layer"] == "features.12"
    assert (answers["gradcam"]["coarse_width"], answers["gradcam"]["coarse_height"]) == (13, 13)
    assert answers["integrated_gradients"]["steps"] == 3
    assert answers["integrated_gradients"]["baseline"] == "zero"
    assert isinstance(answers["integrated_gradients"]["delta"], float)
    for name in ("smoothgrad", "smoothgrad_sq", "vargrad"):
        assert {"samples", "noise", "seed"} <= answers[name].keys()
        assert isinstance(answers[name]["seed"], int)
    assert (answers["smoothgrad"]["samples"], answers["smoothgrad"]["noise"]) == (2, 0.15)
    assert (answers["smoothgrad_sq"]["samples"], answers["smoothgrad_sq"]["noise"]) == (3, 0.25)
    assert answers["vargrad"]["seed"] == 9
    assert not {"samples", "steps", "layer", "delta"} & answers["vanilla"].keys()


def count_passes(model: torch.nn.Module) -> tuple[list[int], object]:
    batches: list[int] = []
    hook = model.register_forward_pre_hook(lambda _, args: batches.append(args[0].shape[0]))
    return batches, hook


def test_single_pass_methods_pass_by_need_and_sampled_methods_share_chunks(
    model, labels, chelsea_png, coffee_png
) -> None:
    service = SaliencyService(
        copy.deepcopy(model),
        labels,
        config=ServiceConfig(max_gradient_batch=4, preprocessing=SMALL),
    )
    batches, hook = count_passes(service.model)
    try:
        service.handle_batch(
            [
                row(chelsea_png, method="gradcam"),
                row(coffee_png),
                row(coffee_png, method="integrated_gradients", steps=3),
                row(chelsea_png, method="vargrad", samples=2, seed=1),
                row(chelsea_png, method="gradcam", objective="loss"),
            ]
        )
    finally:
        hook.remove()
    # Vanilla's pass to the input; Grad-CAM of the loss, differentiated down to its layer, whose
    # forward pass also serves Grad-CAM of the score on the same photo (attribution.passes);
    # one clean pass of the 2 sampled requests, then their 3 + 2 derived images in chunks of 4;
    # one forward of Integrated Gradients' baseline.
    assert batches == [1, 1, 2, 4, 1, 1]


def test_gradcam_alone_does_not_differentiate_the_input(model, labels, chelsea_png) -> None:
    """Its backward pass stops at the layer: the first pooling's output gets no gradient."""
    service = SaliencyService(copy.deepcopy(model), labels)
    reached: list[bool] = []

    def watch(_module, _args, output: torch.Tensor) -> None:
        if output.requires_grad:
            output.register_hook(lambda _: reached.append(True))

    hook = service.model.features[2].register_forward_hook(watch)
    try:
        service.handle_batch([row(chelsea_png, method="gradcam")])
        assert not reached
        service.handle_batch([row(chelsea_png)])
        assert reached  # the hook itself works: vanilla reaches the first layer
    finally:
        hook.remove()


def test_a_model_without_a_cam_layer_refuses_gradcam_alone(model, labels, chelsea_png) -> None:
    service = SaliencyService(copy.deepcopy(model), labels, config=ServiceConfig(cam_layer=None))
    refused, served = service.handle_batch([row(chelsea_png, method="gradcam"), row(chelsea_png)])
    assert refused.status == 400 and refused.body["error"]["code"] == "invalid_option"
    assert served.status == 200
