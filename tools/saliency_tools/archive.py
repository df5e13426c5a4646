"""Build a TorchServe archive with saliency maps: SqueezeNet 1.1 by default, or your classifier.

Without arguments: model_store/squeezenet_saliency.mar. Its weights: --weights, else
$SQUEEZENET_WEIGHTS, else torchvision's official file (downloaded once into .cache/ and checked
against its sha256). --if-stale keeps an archive whose code and config equal handler/'s when no
weights are named: a later setup needs neither the network nor the weights file again.

Your own classifier (any option below but --weights/--export-path/--if-stale):
  --arch resnet50 --weights fine_tuned.pth --labels classes.json --name pets
  --model-file custom.pt2 --labels classes.json --name custom    (TorchScript or torch.export)
builds model_store/NAME.mar, served as NAME and NAME_sampled (expensive methods; README,
"Serve your own classifier"). Build errors exit 1 with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from saliency_service.images import Preprocessing
from saliency_service.labels import read_names, torchvision_categories
from saliency_service.model import (
    DEFAULT_ARCH,
    KNOWN_CAM_LAYERS,
    SPEC_FILE,
    ModelError,
    ModelSpec,
    build_model,
    find_cam_layer,
    infer_num_classes,
    load_exported,
    load_state_dict,
    load_torchscript,
)
from saliency_tools import MAR, MODEL_NAME, ROOT
from saliency_tools.weights import (
    ENV_VAR,
    WeightsError,
    resolve_weights,
    verify_loadable,
)

HANDLER_DIR = ROOT / "handler"
MODEL_VERSION = "1.0"


@dataclass(frozen=True)
class CustomModel:
    """Everything a non-default archive holds beside handler/: model.json, labels, settings."""

    name: str
    version: str
    spec: ModelSpec
    labels: list[str]
    cam_layer: str | None
    settings: dict[str, int] = field(default_factory=dict)  # model-config.yaml top-level keys


# Names of the serialized file inside the archive, by format: fixed, so a user's file name can
# never clash with the handler's files.
SERIALIZED_NAMES = {"torchvision": "weights.pth", "torchscript": "model.pt", "export": "model.pt2"}


def build(weights: Path, export_path: Path, custom: CustomModel | None = None) -> Path:
    """The archive in ``export_path``: SqueezeNet 1.1 from ``weights`` without ``custom``,
    else ``custom``'s model from ``weights`` (its state_dict, TorchScript or .pt2 file)."""
    export_path.mkdir(parents=True, exist_ok=True)
    name = custom.name if custom else MODEL_NAME
    with tempfile.TemporaryDirectory(prefix="mar-") as tmp:
        extra = Path(tmp) / "extra"  # its contents land at the archive's root
        shutil.copytree(
            HANDLER_DIR / "saliency_service",
            extra / "saliency_service",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        config = HANDLER_DIR / "model-config.yaml"
        if custom is None:
            shutil.copy2(HANDLER_DIR / "NOTICE-weights.md", extra)
            names = torchvision_categories()
        else:
            names = custom.labels
            spec = json.dumps(custom.spec.to_json(), indent=1)
            (extra / SPEC_FILE).write_text(spec + "\n", encoding="utf-8")
            config = Path(tmp) / "model-config.yaml"
            config.write_text(model_config(custom), encoding="utf-8")
            serialized = Path(tmp) / SERIALIZED_NAMES[custom.spec.format]
            shutil.copyfile(weights, serialized)
            weights = serialized
        labels = {str(i): label for i, label in enumerate(names)}
        (extra / "index_to_name.json").write_text(json.dumps(labels, indent=0), encoding="utf-8")
        subprocess.run(
            [
                str(Path(sys.executable).with_name("torch-model-archiver")),
                "--model-name",
                name,
                "--version",
                custom.version if custom else MODEL_VERSION,
                "--serialized-file",
                str(weights),
                "--handler",
                str(HANDLER_DIR / "saliency_handler.py"),
                "--extra-files",
                str(extra),
                "--config-file",
                str(config),
                "--export-path",
                str(export_path),
                "--force",
            ],
            check=True,
        )
    return export_path / f"{name}.mar"


def model_config(custom: CustomModel, template: Path = HANDLER_DIR / "model-config.yaml") -> str:
    """handler/model-config.yaml for ``custom``: its sampled registration, Grad-CAM layer and
    batching and worker settings; every other setting as for SqueezeNet."""
    text = template.read_text(encoding="utf-8")
    # JSON strings are YAML strings; "" turns Grad-CAM off (ServiceConfig.cam_layer).
    replacements = {
        "sampled_model": f"{custom.name}_sampled",
        "cam_layer": json.dumps(custom.cam_layer or ""),
        **{key: str(value) for key, value in custom.settings.items()},
    }
    for key, value in replacements.items():
        text, count = re.subn(rf"(?m)^(\s*){key}:.*$", rf"\g<1>{key}: {value}", text)
        if count != 1:
            raise ValueError(f"{template} has no single {key} line")
    return f"# Made by scripts/build_mar.py for {custom.name} from {template.name}.\n" + text


def handler_files(handler_dir: Path = HANDLER_DIR) -> dict[str, Path]:
    """Archive member name -> working-tree file, for everything of handler/ that is archived."""
    names = ["saliency_handler.py", "model-config.yaml", "NOTICE-weights.md"]
    files = {name: handler_dir / name for name in names}
    for path in sorted((handler_dir / "saliency_service").rglob("*.py")):
        files[path.relative_to(handler_dir).as_posix()] = path
    return {name: path for name, path in files.items() if path.is_file()}


def stale_files(mar: Path, handler_dir: Path = HANDLER_DIR) -> list[str]:
    """What differs between the archive and handler/: changed, added or removed files."""
    expected = handler_files(handler_dir)
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        changed = [
            name
            for name, path in expected.items()
            if name not in names or archive.read(name) != path.read_bytes()
        ]
        removed = [
            name
            for name in names
            if name.startswith("saliency_service/")
            and name.endswith(".py")
            and name not in expected
        ]
    return changed + removed


def variant_archive(store: Path, source: Path | None = None, **settings: object) -> Path:
    """A copy of the built archive in ``store`` with model-config.yaml settings replaced, top
    level or in the handler block (e.g. ``responseTimeout=15``, ``sampled_model='""'``): the
    yaml inside the archive overrides config.properties. For tests and load experiments."""
    source = source or MAR
    store.mkdir(parents=True, exist_ok=True)
    target = store / source.name
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as copy:
        for item in archive.infolist():
            data = archive.read(item.filename)
            if item.filename == "model-config.yaml":
                text = data.decode()
                for key, value in settings.items():
                    text, count = re.subn(rf"(?m)^(\s*){key}:.*$", rf"\g<1>{key}: {value}", text)
                    if count != 1:
                        raise ValueError(f"model-config.yaml has no single {key} line")
                data = text.encode()
            copy.writestr(item, data)
    return target


NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
# Options that make a custom archive; without any of them the default one is built as always.
CUSTOM_OPTIONS = (
    "arch",
    "model_file",
    "num_classes",
    "labels",
    "resize",
    "crop",
    "mean",
    "std",
    "interpolation",
    "cam_layer",
    "name",
    "version",
    "batch_size",
    "max_batch_delay",
    "workers",
)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Without arguments: model_store/squeezenet_saliency.mar, as scripts/setup.sh does.",
    )
    model = parser.add_argument_group("the model (default: SqueezeNet 1.1 on ImageNet)")
    source = model.add_mutually_exclusive_group()
    source.add_argument(
        "--arch",
        help="a torchvision.models classification builder (resnet50, efficientnet_b0, ...)",
    )
    source.add_argument(
        "--model-file",
        type=Path,
        help="a TorchScript archive or a torch.export program (.pt2) of a custom model",
    )
    model.add_argument(
        "--weights",
        type=Path,
        help="the --arch model's state_dict (.pth), loaded strictly; without --arch: "
        "SqueezeNet 1.1's (default $SQUEEZENET_WEIGHTS, else torchvision's download)",
    )
    model.add_argument(
        "--num-classes", type=int, help="checked against the model (default: inferred)"
    )
    model.add_argument(
        "--labels",
        type=Path,
        help="class names: a JSON list or TorchServe's index_to_name.json (default: ImageNet's "
        "for 1000 classes, else 'class 0', 'class 1', ...)",
    )
    model.add_argument(
        "--cam-layer",
        help="the module Grad-CAM explains (--arch only; default: found, the last with a 4-D "
        "output before global pooling; none for e.g. ViT: gradcam refused)",
    )
    prep = parser.add_argument_group(
        "preprocessing (default: the torchvision weights' own transforms for --arch, else "
        "ImageNet's: 256, 224, bilinear, ImageNet mean and std)"
    )
    prep.add_argument("--resize", type=int, help="shorter side after resizing")
    prep.add_argument("--crop", type=int, help="side of the centre crop the model sees")
    prep.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"))
    prep.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"))
    prep.add_argument("--interpolation", choices=["bilinear", "bicubic"])
    serving = parser.add_argument_group("the archive (default: handler/model-config.yaml's)")
    serving.add_argument(
        "--name", help="model name (default: ARCH_saliency or the model file's stem)"
    )
    serving.add_argument("--version", help=f"model version (default {MODEL_VERSION})")
    serving.add_argument("--batch-size", type=int, help="TorchServe's batchSize")
    serving.add_argument("--max-batch-delay", type=int, help="TorchServe's maxBatchDelay, ms")
    serving.add_argument("--workers", type=int, help="minWorkers = maxWorkers")
    parser.add_argument("--export-path", type=Path, default=ROOT / "model_store")
    parser.add_argument(
        "--if-stale",
        action="store_true",
        help="default archive only: keep a current one when no weights are named",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    custom = any(getattr(args, option) is not None for option in CUSTOM_OPTIONS)
    try:
        if custom:
            return build_custom(args)
        return build_default(args)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ModelError, WeightsError, ValueError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"error: torch-model-archiver failed ({exc.returncode})", file=sys.stderr)
        return 1


class BuildError(Exception):
    """A build that cannot go on; the message is the whole explanation."""


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def build_default(args: argparse.Namespace) -> int:
    current = args.export_path / f"{MODEL_NAME}.mar"
    named = args.weights or os.environ.get(ENV_VAR)
    if args.if_stale and not named and current.is_file() and not stale_files(current):
        print(f"{current} is up to date with handler/ (kept, with the weights it holds)")
        return 0
    if args.weights:
        verify_loadable(args.weights)
        weights = args.weights
    else:
        weights = resolve_weights(ROOT / ".cache")
    mar = build(weights.resolve(), args.export_path.resolve())
    print(f"built {mar} ({mar.stat().st_size / 1e6:.1f} MB) with weights {weights}")
    return 0


def build_custom(args: argparse.Namespace) -> int:
    """Check everything the archive will hold, then build it; ``BuildError`` on any problem."""
    if args.if_stale:
        raise BuildError("--if-stale applies to the default archive only")
    if args.model_file and args.weights:
        raise BuildError("--weights is for --arch: a --model-file holds its weights")
    if args.model_file:
        file = args.model_file
        if not file.is_file():
            raise BuildError(f"--model-file {file} is not a file")
        if args.cam_layer:
            raise BuildError(
                "--cam-layer needs an --arch model: module hooks, which Grad-CAM records the "
                "layer with, do not run in TorchScript or torch.export programs"
            )
        kind = model_file_format(file)
        model = load_torchscript(file) if kind == "torchscript" else load_exported(file)
        model = model.eval().requires_grad_(False)
        arch = None
        default_name = re.sub(r"[^A-Za-z0-9_-]", "_", file.stem)
    else:
        kind, arch = "torchvision", args.arch or DEFAULT_ARCH
        if args.weights is None and args.arch:
            raise BuildError(f"--arch {arch} needs --weights FILE (its state_dict)")
        file = args.weights or resolve_weights(ROOT / ".cache")
        if not Path(file).is_file():
            raise BuildError(f"--weights {file} is not a file")
        state = load_state_dict(file)
        model = build_model(state, arch, infer_num_classes(arch, state))
        default_name = f"{arch}_saliency"
    preprocessing = choose_preprocessing(args, arch)
    classes = check_model(model, preprocessing)
    if args.num_classes is not None and args.num_classes != classes:
        raise BuildError(f"--num-classes {args.num_classes}, but the model outputs {classes}")
    cam_layer = choose_cam_layer(model, arch, args.cam_layer, preprocessing.crop)
    name = args.name or default_name
    if not NAME_PATTERN.fullmatch(name) or name.endswith("_sampled"):
        raise BuildError(
            f"--name {name!r}: a letter, then letters, digits, '_' or '-' (at most 64), not "
            "ending in _sampled (that name is its second registration's)"
        )
    settings = {}
    for option, keys in (
        ("batch_size", ("batchSize",)),
        ("max_batch_delay", ("maxBatchDelay",)),
        ("workers", ("minWorkers", "maxWorkers")),
    ):
        value = getattr(args, option)
        if value is not None:
            low = 0 if option == "max_batch_delay" else 1
            if value < low:
                raise BuildError(f"--{option.replace('_', '-')} must be >= {low}, got {value}")
            settings.update(dict.fromkeys(keys, value))
    spec = ModelSpec(kind, arch, classes, preprocessing)
    custom = CustomModel(
        name=name,
        version=args.version or MODEL_VERSION,
        spec=spec,
        labels=choose_labels(args.labels, classes),
        cam_layer=cam_layer,
        settings=settings,
    )
    mar = build(Path(file).resolve(), args.export_path.resolve(), custom)
    print(
        f"built {mar} ({mar.stat().st_size / 1e6:.1f} MB): {kind}"
        + (f" {arch}" if arch else f" {file}")
        + f", {classes} classes, resize {preprocessing.resize} crop {preprocessing.crop} "
        f"({preprocessing.interpolation}), Grad-CAM layer: "
        + (cam_layer or "none (gradcam refused)")
    )
    print(f"serve it as {name} and {name}_sampled: load_models={load_models_entry(mar)}")
    return 0


def load_models_entry(mar: Path) -> str:
    """config.properties' ``load_models`` value registering ``mar`` twice (routing.py)."""
    name = mar.stem
    return f"{name}={mar.name},{name}_sampled={mar.name}"


def model_file_format(path: Path) -> str:
    """``export`` for a torch.export program, else ``torchscript`` (both are zip files)."""
    if path.suffix == ".pt2":
        return "export"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        raise BuildError(
            f"--model-file {path} is neither TorchScript nor a torch.export program (not a zip "
            "archive; a pickled nn.Module from torch.save(model) is not accepted: "
            "torch.jit.script or torch.export it)"
        ) from None
    exported = ("archive_format", "serialized_exported_program.json")
    return "export" if any(name.endswith(exported) for name in names) else "torchscript"


def choose_preprocessing(args: argparse.Namespace, arch: str | None) -> Preprocessing:
    """The command line's values over the torchvision weights' own transforms (for a known
    ``arch``) over SqueezeNet's ImageNet recipe."""
    base = Preprocessing()
    if arch:
        base = weights_preprocessing(arch) or base
    given = {
        key: tuple(value) if isinstance(value, list) else value
        for key in ("resize", "crop", "mean", "std", "interpolation")
        if (value := getattr(args, key)) is not None
    }
    values = {**base.to_json(), **given}
    if "resize" in given and "crop" not in given and values["crop"] > values["resize"]:
        raise BuildError(f"--resize {values['resize']} is below the crop ({values['crop']})")
    try:
        return Preprocessing(**values)
    except ValueError as exc:
        raise BuildError(f"preprocessing: {exc}") from None


def weights_preprocessing(arch: str) -> Preprocessing | None:
    """torchvision's transforms for ``arch``'s default weights (no download), if it has any."""
    import torchvision.models

    try:
        transforms = torchvision.models.get_model_weights(arch).DEFAULT.transforms()
        interpolation = transforms.interpolation.value
        return Preprocessing(
            resize=int(transforms.resize_size[0]),
            crop=int(transforms.crop_size[0]),
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
            interpolation=interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
        )
    except (AttributeError, KeyError, IndexError, TypeError, ValueError):
        return None


def check_model(model: object, preprocessing: Preprocessing) -> int:
    """The model's class count, once it has shown it can be served: (N, K) logits for a batch,
    each image's the same as alone (eval mode, any batch size), and a gradient to the input."""
    import torch

    torch.manual_seed(0)
    inputs = torch.randn(2, 3, preprocessing.crop, preprocessing.crop)
    try:
        with torch.no_grad():
            batch = model(inputs)  # type: ignore[operator]
            alone = model(inputs[1:])  # type: ignore[operator]
    except Exception as exc:
        raise BuildError(
            f"the model fails on a batch of {preprocessing.crop}x{preprocessing.crop} images: "
            f"{_one_line(exc)} (a batch size fixed at export or tracing? another input size?)"
        ) from None
    if not isinstance(batch, torch.Tensor) or batch.dim() != 2 or len(batch) != 2:
        shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise BuildError(f"the model returns {shape}, not one row of class scores per image")
    scale = float(batch.abs().max()) + 1.0
    if not torch.allclose(batch[1:], alone, rtol=1e-3, atol=1e-4 * scale):
        raise BuildError(
            "an image's scores depend on the rest of its batch: export or script the model in "
            "eval mode (model.eval()), with batch statistics frozen"
        )
    try:
        with torch.enable_grad():
            leaf = inputs[:1].clone().requires_grad_(True)
            (gradient,) = torch.autograd.grad(model(leaf)[0, 0], leaf)  # type: ignore[operator]
    except Exception as exc:
        raise BuildError(f"no gradient reaches the input image: {_one_line(exc)}") from None
    if not torch.isfinite(gradient).all():
        raise BuildError("the gradient to the input image is not finite")
    return int(batch.shape[1])


def choose_cam_layer(model: object, arch: str | None, named: str | None, crop: int) -> str | None:
    """The Grad-CAM layer: ``named`` (checked), else the established or found one."""
    import torch

    if arch is None:
        return None  # hooks do not run in TorchScript or exported programs (model.py)
    if named is None:
        return KNOWN_CAM_LAYERS.get(arch) or find_cam_layer(model, crop)  # type: ignore[arg-type]
    try:
        layer = model.get_submodule(named)  # type: ignore[attr-defined]
    except AttributeError:
        raise BuildError(f"--cam-layer {named!r}: {arch} has no such module") from None
    outputs: list[object] = []
    handle = layer.register_forward_hook(lambda _m, _a, output: outputs.append(output))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, crop, crop))  # type: ignore[operator]
    finally:
        handle.remove()
    output = outputs[0] if len(outputs) == 1 else None
    if not _feature_map(output):
        shapes = [tuple(getattr(o, "shape", ())) or type(o).__name__ for o in outputs]
        raise BuildError(
            f"--cam-layer {named!r} must run once with a 4-D (N, C, h, w) output, h x w > 1 "
            "(a feature map), or a transformer block's (N, T, D) tokens on a square grid of "
            f"patches; it gave {shapes}"
        )
    return named


def _feature_map(output: object) -> bool:
    """A 4-D map of more than one position, or tokens that Grad-CAM turns into one."""
    import torch

    from saliency_service.attribution.gradcam import tokens_to_grid

    if not isinstance(output, torch.Tensor):
        return False
    if output.dim() == 4:
        return output[0, 0].numel() > 1
    if output.dim() == 3:
        try:
            tokens_to_grid(output)
        except ValueError:
            return False
        return True
    return False


def choose_labels(path: Path | None, classes: int) -> list[str]:
    """Class names from ``path``, else ImageNet's for 1000 classes, else numbered."""
    if path is None:
        if classes == 1000:
            return torchvision_categories()
        return [f"class {i}" for i in range(classes)]
    try:
        names = read_names(path)
    except (OSError, ValueError) as exc:  # json's errors are ValueErrors
        raise BuildError(f"--labels {path}: {_one_line(exc)}") from None
    if len(names) != classes:
        raise BuildError(
            f"--labels {path} has {len(names)} class names, but the model outputs {classes} classes"
        )
    return names


if __name__ == "__main__":
    sys.exit(main())
