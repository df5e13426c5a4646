"""Your own classifiers through a real TorchServe: a ResNet-18 (torchvision, random weights, five
classes), a custom 10-class CNN as TorchScript and as a torch.export program, and MobileNetV3-Small,
EfficientNet-B0 and ConvNeXt-Tiny (random weights, seven classes, 128 x 128 crops to save time),
archived by scripts/build_mar.py and served together in one TorchServe.

Each answers with its own labels, and its classes and vanilla maps equal an independent per-image
computation (torchvision's transforms with the archive's sizes and statistics, ``.backward()``,
float64; float32 for the last three, whose depthwise convolutions take seconds in float64 on 2
cores); Grad-CAM works on the layer found at build time. One server for all keeps the suite's
time down: the first three are registered as scripts/serve.sh does (NAME and NAME_sampled), the
other three as NAME only (a registration is a worker process, and their sampled ones are not
exercised); they are also checked on fewer photo/target cases.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
import reference
import requests
import torch
import torchvision
from custom_models import (
    TINY_CROP,
    TINY_LABELS,
    TINY_MEAN,
    TINY_RESIZE,
    TINY_STD,
    preprocessed,
    reference_map,
    save_exported,
    save_torchscript,
    tiny_net,
    torchvision_state,
    write_labels,
)
from photos import packaged_photos
from serving import post

from saliency_tools import MODEL_NAME
from saliency_tools import archive as build_mar
from saliency_tools.server import Server, store_models

RESNET_LABELS = ["apple", "banana", "cherry", "date", "elderberry"]
COLOURS = ["red", "orange", "yellow", "green", "blue", "indigo", "violet"]
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
PHOTOS = packaged_photos()
# name -> (independent model, resize, crop, mean, std, labels[, interpolation])
MODELS = {
    "fruit": ("resnet18", 256, 224, *IMAGENET, RESNET_LABELS),
    "tiny_script": ("tiny", TINY_RESIZE, TINY_CROP, TINY_MEAN, TINY_STD, TINY_LABELS),
    "tiny_export": ("tiny", TINY_RESIZE, TINY_CROP, TINY_MEAN, TINY_STD, TINY_LABELS),
    # 128 x 128 crops (--resize 144 --crop 128): a third of the cost at 224.
    "mobilenet": ("mobilenet_v3_small", 144, 128, *IMAGENET, COLOURS),
    "effnet": ("efficientnet_b0", 144, 128, *IMAGENET, COLOURS, "bicubic"),  # its weights' own
    "convnext": ("convnext_tiny", 144, 128, *IMAGENET, COLOURS),
}
# The archives registered as NAME and NAME_sampled; the others as NAME only.
SAMPLED = ["fruit", "tiny_export", "tiny_script"]
# torchvision archs served as NAME only -> (their Grad-CAM layer, its output's side)
MORE_ARCHS = {"mobilenet": ("features", 4), "effnet": ("features", 4), "convnext": ("features", 4)}
CASES = [
    (name, photo, target)
    for name in SAMPLED
    for photo in ("chelsea", "coffee")
    for target in (None, 3)
] + [
    (name, photo, target)
    for name in MORE_ARCHS
    for photo, target in (("chelsea", None), ("coffee", 3))
]


def build(argv: list[str]) -> None:
    assert build_mar.main(argv) == 0


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inputs")


@pytest.fixture(scope="module")
def store(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("custom_store")
    torchvision_state("resnet18", len(RESNET_LABELS), inputs / "fruit.pth")
    fruit_labels = write_labels(RESNET_LABELS, inputs / "fruit.json", index_to_name=True)
    tiny_labels = write_labels(TINY_LABELS, inputs / "tiny.json")
    out = ["--export-path", str(store)]
    fruit = ["--arch", "resnet18", "--weights", str(inputs / "fruit.pth"), "--name", "fruit"]
    build([*fruit, "--labels", str(fruit_labels), "--batch-size", "4", *out])
    recipe = ["--resize", str(TINY_RESIZE), "--crop", str(TINY_CROP), "--labels", str(tiny_labels)]
    recipe += ["--mean", *map(str, TINY_MEAN), "--std", *map(str, TINY_STD)]
    script = save_torchscript(tiny_net(), inputs / "tiny.pt")
    build(["--model-file", str(script), "--name", "tiny_script", *recipe, *out])
    program = save_exported(tiny_net(), inputs / "tiny.pt2")
    build(["--model-file", str(program), "--name", "tiny_export", *recipe, *out])
    colours = write_labels(COLOURS, inputs / "colours.json")
    for name in MORE_ARCHS:
        arch, resize, crop, mean, std, _, *interpolation = MODELS[name]
        photos = [preprocessed(d, resize, crop, mean, std, *interpolation) for d in PHOTOS.values()]
        torchvision_state(arch, len(COLOURS), inputs / f"{name}.pth", calibrate=torch.stack(photos))
        weights = ["--arch", arch, "--weights", str(inputs / f"{name}.pth")]
        # Not given, the interpolation is the weights' default (efficientnet_b0: bicubic).
        sizes = ["--resize", str(resize), "--crop", str(crop)]
        build([*weights, *sizes, "--name", name, "--labels", str(colours), *out])
    return store


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # As scripts/serve.sh registers a store's archives (each twice, on the command line), but
    # MORE_ARCHS once: a worker fewer each.
    instance = Server(
        workdir=tmp_path_factory.mktemp("custom_torchserve"),
        model_store=store,
        models_arg=[*store_models(store, SAMPLED), *(f"{n}={n}.mar" for n in MORE_ARCHS)],
    )
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def models(inputs: Path) -> dict[str, torch.nn.Module]:
    """The models independently of the archives' loading code: torchvision's builders with the
    saved weights, and the custom CNN's Python class."""
    found: dict[str, torch.nn.Module] = {"tiny": tiny_net()}
    for name in ("fruit", *MORE_ARCHS):
        arch, labels = MODELS[name][0], MODELS[name][5]
        model = torchvision.models.get_model(arch, num_classes=len(labels))
        model.load_state_dict(torch.load(inputs / f"{name}.pth", weights_only=True))
        found[arch] = model.eval()
    return found


def ask(
    server: Server, model: str, photo: str, allow_redirects: bool = True, **options
) -> requests.Response:
    """``photo`` sent to ``model`` in a JSON document with ``options``."""
    document = {"image": base64.b64encode(PHOTOS[photo]).decode(), **options}
    return post(server, json_body=document, model=model, allow_redirects=allow_redirects)


@pytest.mark.parametrize(("name", "photo", "target"), CASES)
def test_classes_and_maps_equal_the_reference(server, models, name, photo, target) -> None:
    arch, resize, crop, mean, std, labels, *interpolation = MODELS[name]
    response = ask(server, name, photo, **({} if target is None else {"target": labels[target]}))
    assert response.status_code == 200, response.text
    answer = response.json()
    dtype = torch.float32 if name in MORE_ARCHS else torch.float64
    expected, y, logits = reference_map(
        models[arch], PHOTOS[photo], resize, crop, mean, std, target, *interpolation, dtype=dtype
    )
    probabilities = torch.softmax(logits.double(), 0)
    assert answer["prediction"]["index"] == int(probabilities.argmax())
    assert answer["prediction"]["label"] == labels[answer["prediction"]["index"]]
    assert answer["prediction"]["probability"] == pytest.approx(
        float(probabilities.max()), rel=1e-3
    )
    assert [entry["label"] for entry in answer["topk"]] == [
        labels[i] for i in probabilities.argsort(descending=True)[: len(answer["topk"])]
    ]
    assert answer["target"]["index"] == y and answer["target"]["label"] == labels[y]
    assert answer["target"]["score"] == pytest.approx(float(logits[y]), rel=1e-3, abs=1e-4)
    prepared = answer["preprocessing"]  # the archive's recipe, reported back
    assert (prepared["resize"], prepared["crop"]) == (resize, crop)
    assert prepared["mean"] == pytest.approx(list(mean)) and prepared["std"] == pytest.approx(
        list(std)
    )
    saliency = answer["saliency"]
    assert (saliency["width"], saliency["height"]) == (crop, crop)
    assert saliency["max"] == pytest.approx(float(expected.max()), rel=1e-3)
    served = reference.decode_png(saliency["png"]) / 255.0 * saliency["max"]
    reference.assert_maps_agree(served, expected, expected.max())


def test_each_model_knows_only_its_own_labels(server) -> None:
    fruit = ask(server, "fruit", "chelsea", target="banana")
    assert fruit.status_code == 200 and fruit.json()["target"]["index"] == 1
    tiny = ask(server, "tiny_script", "chelsea", target="banana")
    assert tiny.status_code == 400 and tiny.json()["error"]["code"] == "unknown_label"
    assert "0-9" in tiny.json()["error"]["message"]
    beyond = ask(server, "fruit", "chelsea", target=5)
    assert beyond.status_code == 400 and "0-4" in beyond.json()["error"]["message"]


def test_gradcam_where_a_layer_can_be_recorded(server) -> None:
    resnet = ask(server, "fruit", "coffee", method="gradcam")
    assert resnet.status_code == 200, resnet.text
    saliency = resnet.json()["saliency"]
    assert (saliency["layer"], saliency["coarse_width"], saliency["coarse_height"]) == (
        "layer4",
        7,
        7,
    )
    for name, (layer, side) in MORE_ARCHS.items():  # each found by build_mar.py
        answer = ask(server, name, "coffee", method="gradcam")
        assert answer.status_code == 200, answer.text
        saliency = answer.json()["saliency"]
        assert saliency["method"] == "gradcam" and saliency["layer"] == layer
        assert (saliency["coarse_width"], saliency["coarse_height"]) == (side, side)
        crop = MODELS[name][2]
        assert (saliency["width"], saliency["height"], saliency["max"] > 0) == (crop, crop, True)
    for name in ("tiny_script", "tiny_export"):
        refused = ask(server, name, "coffee", method="gradcam")
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "invalid_option" and "module hooks do not run" in error["message"]


def test_the_store_is_registered_as_serve_sh_registers_it(server) -> None:
    assert server.models == [
        "fruit",
        "fruit_sampled",
        "tiny_export",
        "tiny_export_sampled",
        "tiny_script",
        "tiny_script_sampled",
        *MORE_ARCHS,
    ]
    assert not ask(server, MODEL_NAME, "chelsea").ok


def test_expensive_methods_go_to_each_models_own_sampled_registration(server) -> None:
    options = {"method": "smoothgrad", "samples": 3, "seed": 5}
    for name in SAMPLED:
        redirected = ask(server, name, "chelsea", allow_redirects=False, **options)
        assert redirected.status_code == 307
        assert redirected.headers["Location"] == f"/predictions/{name}_sampled"
        followed = ask(server, name, "chelsea", **options)
        assert followed.status_code == 200, followed.text
        assert followed.json()["saliency"]["seed"] == 5
