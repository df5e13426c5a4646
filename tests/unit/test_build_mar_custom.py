"""scripts/build_mar.py for your own classifier: what the archive holds, and every build error
(exit status 1, one line, no traceback)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from custom_models import (
    TINY_CROP,
    TINY_LABELS,
    TINY_RESIZE,
    save_exported,
    save_torchscript,
    tiny_net,
    torchvision_state,
    write_labels,
)
from torch import nn

from saliency_tools import archive as build_mar


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, tiny_programs) -> dict[str, Path]:
    """SqueezeNet 1.1 with 10 classes (small weights), the custom CNN in both formats (shared:
    tests/unit/conftest.py), labels."""
    directory = tmp_path_factory.mktemp("inputs")
    torchvision_state("squeezenet1_1", 10, directory / "squeeze10.pth")
    net = tiny_net()
    train_mode = tiny_net().train()
    module = directory / "module.pt"
    torch.save(net, module)
    checkpoint = directory / "checkpoint.pth"
    torch.save({"epoch": 1, "state_dict": torch.load(directory / "squeeze10.pth")}, checkpoint)
    wrong_shape = torch.load(directory / "squeeze10.pth")
    wrong_shape["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(wrong_shape, directory / "wrong_shape.pth")
    bad_json = directory / "bad.json"
    bad_json.write_text("[1, 2")
    sparse = directory / "sparse.json"
    sparse.write_text('{"0": "a", "5": "b"}')
    return {
        **tiny_programs,
        "squeeze10": directory / "squeeze10.pth",
        "train_mode": save_exported(train_mode, directory / "train.pt2"),
        "tuple": save_torchscript(TinyTuple(), directory / "tuple.pt"),
        "module": module,
        "checkpoint": checkpoint,
        "wrong_shape": directory / "wrong_shape.pth",
        "labels10": write_labels(TINY_LABELS, directory / "labels10.json"),
        "index10": write_labels(TINY_LABELS, directory / "index_to_name.json", True),
        "labels3": write_labels(["a", "b", "c"], directory / "labels3.json"),
        "bad_json": bad_json,
        "sparse": sparse,
        "text": sparse,
    }


class TinyTuple(nn.Module):
    """Returns (logits, features): not one row of class scores per image."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_net()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x), x


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = build_mar.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def members(mar: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(mar) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_help_lists_the_options(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_mar.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--arch",
        "--weights",
        "--model-file",
        "--labels",
        "--num-classes",
        "--resize",
        "--crop",
        "--mean",
        "--std",
        "--cam-layer",
        "--name",
        "--version",
        "--batch-size",
        "--max-batch-delay",
        "--workers",
    ):
        assert option in text


def test_a_torchvision_archive(files, tmp_path, capsys) -> None:
    code, out, err = run(
        [
            "--arch",
            "squeezenet1_1",
            "--weights",
            str(files["squeeze10"]),
            "--labels",
            str(files["index10"]),
            "--name",
            "shapes",
            "--version",
            "2.1",
            "--batch-size",
            "4",
            "--max-batch-delay",
            "7",
            "--workers",
            "2",
            "--export-path",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, err
    assert "load_models=shapes=shapes.mar,shapes_sampled=shapes.mar" in out
    archive = members(tmp_path / "shapes.mar")
    manifest = json.loads(archive["MAR-INF/MANIFEST.json"])
    assert manifest["model"]["modelName"] == "shapes"
    assert manifest["model"]["modelVersion"] == "2.1"
    assert manifest["model"]["serializedFile"] == "weights.pth"
    spec = json.loads(archive["model.json"])
    assert spec == {
        "format": "torchvision",
        "arch": "squeezenet1_1",
        "num_classes": 10,
        "preprocessing": {
            "resize": 256,
            "crop": 224,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "interpolation": "bilinear",
        },
    }
    labels = json.loads(archive["index_to_name.json"])
    assert [labels[str(i)] for i in range(10)] == TINY_LABELS
    config = yaml.safe_load(archive["model-config.yaml"])
    assert (config["batchSize"], config["maxBatchDelay"]) == (4, 7)
    assert (config["minWorkers"], config["maxWorkers"]) == (2, 2)
    assert config["handler"]["sampled_model"] == "shapes_sampled"
    assert config["handler"]["cam_layer"] == "features.12"  # SqueezeNet's established layer
    assert "NOTICE-weights.md" not in archive  # that notice is about SqueezeNet's ImageNet weights
    assert (
        archive["saliency_handler.py"]
        == (build_mar.HANDLER_DIR / "saliency_handler.py").read_bytes()
    )


@pytest.mark.parametrize("kind", ["torchscript", "export"])
def test_a_program_archive(files, tmp_path, capsys, kind) -> None:
    code, out, err = run(
        [
            "--model-file",
            str(files[kind]),
            "--resize",
            str(TINY_RESIZE),
            "--crop",
            str(TINY_CROP),
            "--mean",
            "0.5",
            "0.5",
            "0.5",
            "--std",
            "0.25",
            "0.25",
            "0.25",
            "--export-path",
            str(tmp_path),
        ],
        capsys,
    )
    assert code == 0, err
    assert "gradcam refused" in out
    archive = members(tmp_path / "tiny.mar")  # named after the file
    spec = json.loads(archive["model.json"])
    assert (spec["format"], spec["arch"], spec["num_classes"]) == (kind, None, 10)
    assert spec["preprocessing"]["mean"] == [0.5] * 3
    labels = json.loads(archive["index_to_name.json"])
    assert labels["0"] == "class 0" and labels["9"] == "class 9"  # numbered without --labels
    config = yaml.safe_load(archive["model-config.yaml"])
    assert config["handler"]["cam_layer"] == ""
    assert config["handler"]["sampled_model"] == "tiny_sampled"


def test_preprocessing_defaults_come_from_the_torchvision_weights() -> None:
    args = build_mar.parser().parse_args(["--arch", "convnext_tiny", "--crop", "200"])
    recipe = build_mar.choose_preprocessing(args, "convnext_tiny")
    assert (recipe.resize, recipe.crop, recipe.interpolation) == (236, 200, "bilinear")
    recipe = build_mar.choose_preprocessing(build_mar.parser().parse_args([]), "efficientnet_b0")
    assert (recipe.resize, recipe.crop, recipe.interpolation) == (256, 224, "bicubic")
    recipe = build_mar.choose_preprocessing(build_mar.parser().parse_args([]), None)
    assert (recipe.resize, recipe.crop, recipe.mean) == (256, 224, (0.485, 0.456, 0.406))


def test_the_model_config_template_keeps_the_other_settings() -> None:
    custom = build_mar.CustomModel("pets", "1.0", None, [], "layer4", {"batchSize": 2})  # type: ignore[arg-type]
    text = build_mar.model_config(custom)
    template = yaml.safe_load((build_mar.HANDLER_DIR / "model-config.yaml").read_text())
    config = yaml.safe_load(text)
    assert config["handler"] == template["handler"] | {
        "sampled_model": "pets_sampled",
        "cam_layer": "layer4",
    }
    assert config | {"batchSize": template["batchSize"], "handler": None} == template | {
        "handler": None
    }


ERRORS = [
    (["--arch", "resnet18"], "--arch resnet18 needs --weights FILE"),
    (["--arch", "resnet7", "--weights", "{squeeze10}"], "'resnet7' is not a torchvision"),
    (["--arch", "squeezenet1_1", "--weights", "/nonexistent.pth"], "is not a file"),
    (["--arch", "resnet18", "--weights", "{squeeze10}"], "the weights have no 'fc.weight'"),
    (
        ["--arch", "squeezenet1_0", "--weights", "{squeeze10}"],
        "do not fit squeezenet1_0 with 10 classes: missing keys",
    ),
    (
        ["--arch", "squeezenet1_1", "--weights", "{wrong_shape}"],
        "other shapes: features.0.weight (64, 3, 5, 5) (expected (64, 3, 3, 3))",
    ),
    (["--arch", "squeezenet1_1", "--weights", "{module}"], "save model.state_dict()"),
    (["--arch", "squeezenet1_1", "--weights", "{checkpoint}"], "training checkpoint"),
    (["--arch", "squeezenet1_1", "--weights", "{text}"], "not a state_dict saved by torch.save"),
    (
        ["--arch", "squeezenet1_1", "--weights", "{squeeze10}", "--labels", "{labels3}"],
        "has 3 class names, but the model outputs 10 classes",
    ),
    (
        ["--arch", "squeezenet1_1", "--weights", "{squeeze10}", "--labels", "{bad_json}"],
        "--labels",
    ),
    (
        ["--arch", "squeezenet1_1", "--weights", "{squeeze10}", "--labels", "{sparse}"],
        "needs the keys 0..1",
    ),
    (
        ["--arch", "squeezenet1_1", "--weights", "{squeeze10}", "--labels", "/nonexistent.json"],
        "--labels /nonexistent.json",
    ),
    (
        ["--arch", "squeezenet1_1", "--weights", "{squeeze10}", "--num-classes", "9"],
        "--num-classes 9, but the model outputs 10",
    ),
    (
        ["--arch", "squeezenet1_1", "--weights", "{squeeze10}", "--cam-layer", "features.99"],
        "no such module",
    ),
    (
        ["--arch", "squeezenet1_1", "--weights", "{squeeze10}", "--cam-layer", "classifier.3"],
        "must run once with a 4-D",
    ),
    (["--model-file", "{torchscript}", "--cam-layer", "features"], "module hooks"),
    (["--model-file", "{torchscript}", "--weights", "{squeeze10}"], "--weights is for --arch"),
    (["--model-file", "/nonexistent.pt"], "is not a file"),
    (["--model-file", "{module}"], "pickled nn.Module"),
    (["--model-file", "{text}"], "neither TorchScript nor a torch.export program"),
    (["--model-file", "{static}", "--crop", "64", "--resize", "72"], "a batch size fixed"),
    (["--model-file", "{train_mode}", "--crop", "64", "--resize", "72"], "eval mode"),
    (["--model-file", "{tuple}", "--crop", "64", "--resize", "72"], "not one row of class"),
    (["--model-file", "{torchscript}", "--crop", "300"], "crop must be 1..resize (256)"),
    (["--model-file", "{torchscript}", "--resize", "200"], "--resize 200 is below the crop"),
    (["--model-file", "{torchscript}", "--std", "0", "1", "1"], "std finite and positive"),
    (["--model-file", "{torchscript}", "--name", "my model"], "--name 'my model'"),
    (["--model-file", "{torchscript}", "--name", "a_sampled"], "not ending in _sampled"),
    (["--model-file", "{torchscript}", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--model-file", "{torchscript}", "--if-stale"], "--if-stale applies to the default"),
]


@pytest.mark.parametrize(("argv", "message"), ERRORS, ids=[m for _, m in ERRORS])
def test_build_errors_are_one_line(files, tmp_path, capsys, argv, message) -> None:
    argv = [arg.format(**{k: str(v) for k, v in files.items()}) for arg in argv]
    code, _, err = run([*argv, "--export-path", str(tmp_path)], capsys)
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("*.mar"))


def test_a_store_is_registered_twice_per_archive(tmp_path: Path) -> None:
    """What scripts/serve.sh passes to torchserve --models: the default archive first, each
    followed by the sampled registration its model-config.yaml names (none if empty)."""
    from saliency_tools.server import store_models

    for name, sampled in (("zebra", "zebra_sampled"), ("squeezenet_saliency", "sq_s"), ("one", "")):
        with zipfile.ZipFile(tmp_path / f"{name}.mar", "w") as archive:
            archive.writestr("model-config.yaml", f"handler:\n  sampled_model: {sampled!r}\n")
    assert store_models(tmp_path) == [
        "squeezenet_saliency=squeezenet_saliency.mar",
        "sq_s=squeezenet_saliency.mar",
        "one=one.mar",
        "zebra=zebra.mar",
        "zebra_sampled=zebra.mar",
    ]
    assert store_models(tmp_path, ["zebra"]) == ["zebra=zebra.mar", "zebra_sampled=zebra.mar"]
    with pytest.raises(FileNotFoundError, match=r"no nope\.mar"):
        store_models(tmp_path, ["nope"])
    with pytest.raises(FileNotFoundError, match=r"no \.mar files"):
        store_models(tmp_path / "empty")


def test_a_transformer_block_is_a_cam_layer_when_named() -> None:
    """Its tokens form a square grid of patches; a layer of class scores does not."""
    from torchvision.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(224, 32, 2, 2, 32, 64, num_classes=5).eval()
    block = "encoder.layers.encoder_layer_0"
    assert build_mar.choose_cam_layer(vit, "vit_b_16", block, 224) == block
    with pytest.raises(build_mar.BuildError, match="square grid of patches"):
        build_mar.choose_cam_layer(vit, "vit_b_16", "heads.head", 224)
