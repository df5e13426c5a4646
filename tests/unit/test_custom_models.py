"""Models other than SqueezeNet, in process: the spec, each format's loading, preprocessing of
other sizes, the Grad-CAM layer finder, class names, and whole services against the reference."""

from __future__ import annotations

import base64
import zipfile
from pathlib import Path

import numpy as np
import pytest
import reference
import torch
from custom_models import (
    TINY_CROP,
    TINY_LABELS,
    TINY_MEAN,
    TINY_RESIZE,
    TINY_STD,
    reference_map,
    tiny_net,
    torchvision_state,
)
from PIL import Image
from torchvision import transforms

from saliency_service import images
from saliency_service.errors import RequestError
from saliency_service.images import Preprocessing
from saliency_service.labels import Labels, torchvision_categories
from saliency_service.model import (
    ModelError,
    ModelSpec,
    ProgramClassifier,
    build_model,
    check_state_dict,
    find_cam_layer,
    infer_num_classes,
    load_exported,
    load_model,
    load_state_dict,
    load_torchscript,
    torchvision_model,
)
from saliency_service.pipeline import SaliencyService, ServiceConfig

TINY = Preprocessing(TINY_RESIZE, TINY_CROP, TINY_MEAN, TINY_STD)


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def files(tiny_programs: dict[str, Path]) -> dict[str, Path]:
    """The custom CNN as TorchScript and as torch.export programs (tests/unit/conftest.py)."""
    return dict(tiny_programs)


# --- the spec ----------------------------------------------------------------------------------


def test_the_default_spec_is_squeezenet_on_imagenet() -> None:
    spec = ModelSpec()
    assert (spec.format, spec.arch, spec.num_classes) == ("torchvision", "squeezenet1_1", 1000)
    assert spec.preprocessing == Preprocessing(256, 224, images.IMAGENET_MEAN, images.IMAGENET_STD)
    assert ModelSpec.from_mapping(spec.to_json()) == spec


def test_a_spec_round_trips_through_json(tmp_path: Path) -> None:
    spec = ModelSpec("export", None, 10, TINY)
    path = tmp_path / "model.json"
    path.write_text(__import__("json").dumps(spec.to_json()))
    assert ModelSpec.from_file(path) == spec
    assert not spec.hookable and ModelSpec().hookable


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"format": "onnx"}, "format must be one of"),
        ({"format": "torchvision", "arch": None}, "needs its arch"),
        ({"num_classes": 0}, "positive integer"),
        ({"weights": "x"}, "unknown keys"),
        ({"preprocessing": {"resize": 200, "crop": 224}}, "crop must be"),
        ({"preprocessing": {"std": [0.2, 0.2, 0.0]}}, "std finite and positive"),
        ({"preprocessing": {"mean": [0.5, 0.5]}}, "3 each"),
        ({"preprocessing": {"interpolation": "nearest"}}, "interpolation"),
        ({"preprocessing": {"size": 3}}, "bad preprocessing"),
    ],
)
def test_a_bad_spec_is_refused(values: dict, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ModelSpec.from_mapping({"arch": "resnet18"} | values)


# --- preprocessing of other sizes --------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(300, 451), (451, 300), (72, 72), (7, 300), (1000, 3)])
def test_preprocess_equals_torchvision_for_other_sizes(size, interpolation) -> None:
    recipe = Preprocessing(TINY_RESIZE, TINY_CROP, TINY_MEAN, TINY_STD, interpolation)
    standard = transforms.Compose(
        [
            transforms.Resize(
                TINY_RESIZE, interpolation=transforms.InterpolationMode(interpolation)
            ),
            transforms.CenterCrop(TINY_CROP),
            transforms.ToTensor(),
        ]
    )
    image = noise(*size)
    prepared = images.preprocess(image, recipe)
    assert prepared.tensor.shape == (3, TINY_CROP, TINY_CROP)
    assert prepared.crop.size == (TINY_CROP, TINY_CROP)
    restored = prepared.tensor * torch.tensor(TINY_STD).view(3, 1, 1)
    restored += torch.tensor(TINY_MEAN).view(3, 1, 1)
    assert float((restored - standard(image)).abs().max()) <= 1 / 255 + 1e-5


@pytest.mark.parametrize("recipe", [TINY, Preprocessing(232, 224), Preprocessing(342, 299)])
@pytest.mark.parametrize("size", [(300, 451), (451, 300), (600, 400), (999, 97), (1, 1)])
def test_crop_box_is_the_centred_crop_for_any_sizes(recipe: Preprocessing, size) -> None:
    width, height = size
    box = images.preprocess(noise(width, height), recipe).crop_box
    half = recipe.crop / 2 * min(width, height) / recipe.resize
    ideal = (width / 2 - half, height / 2 - half, width / 2 + half, height / 2 + half)
    assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
    for actual, expected in zip(box, ideal, strict=True):
        assert abs(actual - expected) <= 1, (box, ideal)


def test_the_black_baseline_follows_the_statistics() -> None:
    black = TINY.normalised_black()
    assert black.shape == (3, 1, 1)
    assert torch.allclose(black.flatten(), torch.full((3,), -2.0))


# --- loading each format -----------------------------------------------------------------------


def test_a_torchvision_state_dict_loads_strictly(tmp_path: Path) -> None:
    original = torchvision_state("resnet18", 7, tmp_path / "r18.pth")
    spec = ModelSpec("torchvision", "resnet18", 7)
    loaded = load_model(tmp_path / "r18.pth", spec=spec)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(loaded(x), original(x))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_torchscript_and_exported_programs_load(files, kind: str) -> None:
    loaded = load_model(files[kind], spec=ModelSpec(kind, None, 10, TINY))
    assert isinstance(loaded, ProgramClassifier)
    assert not any(p.requires_grad for p in loaded.parameters())
    # What the service does with every model: eval, freeze, channels_last.
    loaded = loaded.to(memory_format=torch.channels_last).eval().requires_grad_(False)
    x = torch.randn(3, 3, TINY_CROP, TINY_CROP)
    torch.testing.assert_close(loaded(x), tiny_net()(x), rtol=1e-5, atol=1e-5)
    leaf = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(loaded(leaf)[:, 2].sum(), leaf)
    assert gradient.abs().sum() > 0


def test_module_hooks_do_not_run_in_torchscript_or_exported_programs(files) -> None:
    """Why gradcam is refused for both formats: Grad-CAM records its layer with a hook."""
    scripted = load_torchscript(files["torchscript"]).program
    with pytest.raises(RuntimeError, match="not supported on ScriptModules"):
        scripted.features.register_forward_hook(lambda *_: None)
    program = load_exported(files["export"]).program
    called: list[str] = []
    for name, module in program.named_modules():
        module.register_forward_hook(lambda *_, name=name: called.append(name))
    program(torch.randn(1, 3, TINY_CROP, TINY_CROP))
    assert "features" in dict(program.named_modules())  # the names are there ...
    assert "features" not in called and "fc" not in called  # ... but do not run as modules


def test_an_exported_program_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data/constants/opaque_obj_0", b"cos\nsystem\n")
        archive.writestr("archive/archive_format", b"pt2")
    with pytest.raises(ModelError, match="pickled objects"):
        load_exported(path)


def test_torch_save_of_a_whole_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(tiny_net(), path)
    with pytest.raises(ModelError, match=r"pickled nn\.Module"):
        load_torchscript(path)
    with pytest.raises(ModelError, match="never unpickled"):
        load_state_dict(path)


def test_state_dict_files_that_are_not_one(tmp_path: Path) -> None:
    text = tmp_path / "labels.json"
    text.write_text("[]")
    with pytest.raises(ModelError, match="not a zip archive"):
        load_state_dict(text)
    checkpoint = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": tiny_net().state_dict()}, checkpoint)
    with pytest.raises(ModelError, match="training checkpoint, whose 'state_dict' entry"):
        load_state_dict(checkpoint)


def test_a_mismatch_names_missing_unexpected_keys_and_shapes() -> None:
    model = torchvision_model("resnet18", 7)
    state = dict(model.state_dict())
    del state["layer4.1.bn2.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(ModelError) as error:
        check_state_dict(model, state, "resnet18")
    message = str(error.value)
    assert "missing keys layer4.1.bn2.bias" in message
    assert "unexpected keys extra.weight" in message
    assert "conv1.weight (64, 3, 3, 3) (expected (64, 3, 7, 7))" in message
    prefixed = {f"module.{key}": value for key, value in model.state_dict().items()}
    with pytest.raises(ModelError, match=r"strip the 'module\.' prefix"):
        build_model(prefixed, "resnet18", 7)


@pytest.mark.parametrize(("arch", "classes"), [("resnet18", 7), ("squeezenet1_1", 10)])
def test_the_class_count_is_inferred_from_the_weights(arch: str, classes: int) -> None:
    state = torchvision_model(arch, classes).state_dict()
    assert infer_num_classes(arch, state) == classes
    with pytest.raises(ModelError, match="not a resnet18 state_dict"):
        infer_num_classes("resnet18", {"classifier.weight": torch.zeros(3, 8)})


def test_an_unknown_architecture_is_named() -> None:
    with pytest.raises(ModelError, match="'resnet7' is not a torchvision classification model"):
        torchvision_model("resnet7")


# --- the Grad-CAM layer finder -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "layer"),
    [
        ("resnet18", "layer4"),
        ("mobilenet_v3_small", "features"),
        ("convnext_tiny", "features"),
        ("efficientnet_b0", "features"),  # its squeeze-and-excitation blocks pool too
        ("densenet121", "features"),  # pooled by a function, not a module
    ],
)
def test_the_cam_layer_is_found(arch: str, layer: str | None) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchvision_model(arch, 5).eval()
    assert find_cam_layer(model, 224) == layer


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A seeded 3-class ViT-B/16 and its saved state_dict: built once, each build takes seconds.
    Only read (the service below loads its own copy from the file)."""
    path = tmp_path_factory.mktemp("vit") / "vit.pth"
    return torchvision_state("vit_b_16", 3, path), path


def test_a_vision_transformer_has_no_cam_layer(vit) -> None:
    """Tokens, not a feature map."""
    model, _ = vit
    assert find_cam_layer(model, 224) is None


def test_the_cam_layer_of_a_custom_cnn() -> None:
    assert find_cam_layer(tiny_net(), TINY_CROP) == "features"


# --- class names -------------------------------------------------------------------------------


def test_labels_of_another_model() -> None:
    labels = Labels(TINY_LABELS, num_classes=10)
    assert len(labels) == 10 and not labels.imagenet
    assert labels.resolve("Shape C") == 2 and labels.resolve("9") == 9
    with pytest.raises(RequestError, match="0-9"):
        labels.resolve("10")
    with pytest.raises(RequestError, match="not a class name of this model; send an index 0-9"):
        labels.resolve("tabby")
    with pytest.raises(RequestError, match="0-9"):
        labels.check_index(10)
    with pytest.raises(ValueError, match="expected 10 class names, got 9"):
        Labels(TINY_LABELS[:9], num_classes=10)
    assert Labels(torchvision_categories()).imagenet


def test_labels_from_an_index_to_name_file_need_every_index(tmp_path: Path) -> None:
    path = tmp_path / "index_to_name.json"
    path.write_text('{"0": "a", "2": "c"}')
    with pytest.raises(ValueError, match=r"keys 0\.\.1"):
        Labels.from_json(path, None)


# --- whole services ----------------------------------------------------------------------------


def png(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_a_program_service_answers_like_the_reference(files, kind, chelsea, tmp_path) -> None:
    labels = tmp_path / "index_to_name.json"
    labels.write_text(__import__("json").dumps(TINY_LABELS))
    spec = ModelSpec(kind, None, 10, TINY)
    service = SaliencyService.from_files(files[kind], labels, spec=spec)
    service.warm_up()
    data = png(chelsea)
    body = {"image": base64.b64encode(data).decode()}
    vanilla, targeted, gradcam = service.handle_batch(
        [
            {"body": body},
            {"body": body | {"target": "shape d"}},
            {"body": body | {"method": "gradcam"}},
        ]
    )
    for answer, target in ((vanilla, None), (targeted, 3)):
        assert answer.status == 200, answer.body
        assert answer.body["preprocessing"] == spec.preprocessing.to_json()
        expected, y, logits = reference_map(
            tiny_net(), data, TINY_RESIZE, TINY_CROP, TINY_MEAN, TINY_STD, target
        )
        saliency = answer.body["saliency"]
        assert (saliency["width"], saliency["height"]) == (TINY_CROP, TINY_CROP)
        assert answer.body["target"] == {
            "index": y,
            "label": TINY_LABELS[y],
            "score": pytest.approx(float(logits[y]), rel=1e-4, abs=1e-5),
        }
        assert saliency["max"] == pytest.approx(float(expected.max()), rel=1e-3)
        served = reference.decode_png(saliency["png"]) / 255.0 * saliency["max"]
        reference.assert_maps_agree(served, expected, expected.max())
    assert gradcam.status == 400
    assert gradcam.body["error"]["code"] == "invalid_option"
    assert "module hooks do not run" in gradcam.body["error"]["message"]


def test_a_model_without_a_cam_layer_says_so(vit, tmp_path: Path) -> None:
    _, path = vit
    labels = tmp_path / "labels.json"
    labels.write_text('["a", "b", "c"]')
    spec = ModelSpec("torchvision", "vit_b_16", 3)
    service = SaliencyService.from_files(
        path, labels, config=ServiceConfig(cam_layer=""), spec=spec
    )
    image = base64.b64encode(png(np.zeros((40, 50, 3), np.uint8))).decode()
    refused, served = service.handle_batch(
        [{"body": {"image": image, "method": "gradcam"}}, {"body": {"image": image}}]
    )
    assert refused.status == 400
    assert (
        "this model (vit_b_16) has none before global pooling" in refused.body["error"]["message"]
    )
    assert served.status == 200 and served.body["target"]["label"] in "abc"
    assert len(served.body["topk"]) == 3  # topk 5 of 3 classes: all of them
