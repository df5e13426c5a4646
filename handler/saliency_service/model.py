"""The classifier: SqueezeNet 1.1 by default, or any model an archive's ``model.json`` describes.

Three formats, each loaded without unpickling code:

- ``torchvision``: a builder of ``torchvision.models`` (``arch``) and a ``state_dict`` read with
  ``torch.load(weights_only=True)`` (tensors and plain containers only) and loaded strictly.
- ``torchscript``: ``torch.jit.load``. The model's code is TorchScript, run by PyTorch's
  TorchScript interpreter; no Python object is unpickled.
- ``export``: a ``torch.export`` program (``.pt2``) via ``torch.export.load``. Its graph is JSON
  and its tensors raw bytes; PyTorch would unpickle some payloads (pickled tensors, opaque and
  custom objects): an archive holding those is refused, and every ``torch.load`` inside runs
  with ``weights_only`` forced.

A TorchScript or exported model is still a program: serve only models you trust. Module hooks
do not run inside either (TorchScript refuses them; an exported program is one flat graph), so
Grad-CAM, which records a layer's output with a hook, is for ``torchvision`` models only.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import squeezenet1_1

from .images import SQUEEZENET_PREPROCESSING, Preprocessing

# Grad-CAM's layer: the last Fire module, 512 x 13 x 13 for a 224 x 224 input; after it come only
# dropout, the 1x1 classifier convolution and global pooling.
CAM_LAYER = "features.12"
SPEC_FILE = "model.json"  # in the archive, beside the weights
FORMATS = ("torchvision", "torchscript", "export")
DEFAULT_ARCH = "squeezenet1_1"
# Architectures whose Grad-CAM layer is established rather than found: SqueezeNet's classifier is
# convolutional, so the finder would pick its class maps instead of the last Fire module.
KNOWN_CAM_LAYERS = {"squeezenet1_0": CAM_LAYER, "squeezenet1_1": CAM_LAYER}


class ModelError(ValueError):
    """A model, weights file or spec that cannot be served: the message says why."""


@dataclass(frozen=True)
class ModelSpec:
    """What an archive holds and how to feed it: written by build_mar.py as ``model.json``.

    An archive without ``model.json`` holds SqueezeNet 1.1 on ImageNet: this class's defaults.
    """

    format: str = "torchvision"
    arch: str | None = DEFAULT_ARCH  # the torchvision builder; None for the other formats
    num_classes: int = 1000
    preprocessing: Preprocessing = field(default_factory=lambda: SQUEEZENET_PREPROCESSING)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ModelError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.format == "torchvision" and not self.arch:
            raise ModelError("a torchvision model needs its arch")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ModelError(f"num_classes must be a positive integer, got {self.num_classes!r}")

    @property
    def hookable(self) -> bool:
        """Whether forward hooks on submodules run (Grad-CAM needs one)."""
        return self.format == "torchvision"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> ModelSpec:
        unknown = set(values) - {"format", "arch", "num_classes", "preprocessing"}
        if unknown:
            raise ModelError(f"unknown keys in the model spec: {', '.join(sorted(unknown))}")
        try:
            preprocessing = Preprocessing(**values.get("preprocessing", {}))
        except (TypeError, ValueError) as exc:
            raise ModelError(f"bad preprocessing in the model spec: {exc}") from None
        return cls(
            format=values.get("format", "torchvision"),
            arch=values.get("arch"),
            num_classes=values.get("num_classes", 1000),
            preprocessing=preprocessing,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ModelSpec:
        return cls.from_mapping(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "arch": self.arch,
            "num_classes": self.num_classes,
            "preprocessing": self.preprocessing.to_json(),
        }


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``state_dict`` (tensors only: no pickled code is executed).

    Raises
    ------
    ModelError
        Not a mapping of names to tensors; a training checkpoint is named as such.
    """
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise ModelError(f"{path} is not a state_dict saved by torch.save (not a zip archive)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelError(
            f"{path} holds pickled Python objects besides tensors, which are never unpickled "
            "here: save model.state_dict(), not the model"
        ) from None
    except RuntimeError as exc:  # a damaged or foreign zip archive
        raise ModelError(f"{path} is not a readable state_dict: {_first_line(exc)}") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, not a state_dict")
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        nested = [key for key in ("state_dict", "model") if isinstance(state.get(key), dict)]
        hint = (
            f": it looks like a training checkpoint, whose {nested[0]!r} entry is the "
            "state_dict; save that alone (torch.save(model.state_dict(), path))"
            if nested
            else ""
        )
        raise ModelError(f"{path} is not a state_dict: {_some(not_tensors)} are not tensors{hint}")
    return state


def build_model(
    state_dict: Mapping[str, torch.Tensor] | None = None,
    arch: str = DEFAULT_ARCH,
    num_classes: int = 1000,
) -> nn.Module:
    """A torchvision classifier in eval mode with frozen parameters; ``state_dict`` loaded
    strictly (``ModelError`` naming missing and unexpected keys and shape differences).

    Freezing means a backward pass computes gradients for the input alone: no weight gradient
    is computed or accumulated between requests.
    """
    if arch == DEFAULT_ARCH and num_classes == 1000:
        model = squeezenet1_1(weights=None)
    else:
        model = torchvision_model(arch, num_classes)
    if state_dict is not None:
        check_state_dict(model, state_dict, arch)
        model.load_state_dict(state_dict, strict=True)
    return model.eval().requires_grad_(False)


def torchvision_model(arch: str, num_classes: int | None = None) -> nn.Module:
    """``torchvision.models.get_model(arch, weights=None)``, randomly initialised.

    Raises
    ------
    ModelError
        ``arch`` is not one of torchvision's classification builders.
    """
    import torchvision.models

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        raise ModelError(
            f"{arch!r} is not a torchvision classification model; one of: {', '.join(known)}"
        )
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str) -> None:
    """Raise ``ModelError`` unless ``state_dict`` has exactly the model's tensors and shapes."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    shapes = [
        f"{key} {tuple(state_dict[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in expected
        if key in state_dict and state_dict[key].shape != expected[key].shape
    ]
    if not (missing or unexpected or shapes):
        return
    problems = []
    if missing:
        problems.append(f"missing keys {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_some(unexpected)}")
    if shapes:
        problems.append(f"other shapes: {_some(shapes)}")
    hint = ""
    if unexpected and all(key.startswith("module.") for key in unexpected):
        hint = " (saved from DataParallel/DistributedDataParallel? strip the 'module.' prefix)"
    raise ModelError(
        f"the weights do not fit {arch} with {_classes(model)} classes: {'; '.join(problems)}{hint}"
    )


def infer_num_classes(arch: str, state_dict: Mapping[str, torch.Tensor]) -> int:
    """The class count of ``state_dict`` for ``arch``: its final layer's output size.

    The final layer is the last ``Linear`` or ``Conv2d`` (SqueezeNet's classifier) with the
    builder's default class count as its output size; built on the meta device where the
    builder allows (RegNet's computes its widths with tensors), so no time goes to weights.
    """
    try:
        with torch.device("meta"):
            model = torchvision_model(arch)
    except (NotImplementedError, RuntimeError):
        model = torchvision_model(arch)
    default = _classes(model)
    head = None
    for name, module in model.named_modules():
        size = getattr(module, "out_features", getattr(module, "out_channels", None))
        if isinstance(module, nn.Linear | nn.Conv2d) and size == default:
            head = name
    key = f"{head}.weight"
    if head is None or key not in state_dict:
        raise ModelError(
            f"the weights have no {key!r}: not a {arch} state_dict (its first keys: "
            f"{_some(list(state_dict))})"
        )
    return int(state_dict[key].shape[0])


def _classes(model: nn.Module) -> int | str:
    """The builder's class count, from its final Linear or Conv2d."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if not layers:
        return "?"
    last = layers[-1]
    return getattr(last, "out_features", getattr(last, "out_channels", "?"))


def _some(items: list[str], shown: int = 5) -> str:
    more = f" (and {len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


class ProgramClassifier(nn.Module):
    """A TorchScript module or ``torch.export`` program as a plain module, which the service
    treats like any other (``eval``, ``requires_grad_``, ``to``).

    Neither supports all of that itself (an exported module refuses ``eval()``, a ScriptModule
    ``requires_grad_``). Their train/eval behaviour is the one they were saved with: TorchScript
    models are put in eval mode once on loading, and an exported program's mode was fixed when
    it was exported (export in eval mode); ``train``/``eval`` here only set the flag.
    """

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.program(inputs)

    def train(self, mode: bool = True) -> ProgramClassifier:
        self.training = mode
        return self


# Payload names in a .pt2 archive that torch.export.load would unpickle with Python's pickle.
_PICKLED_PT2_PAYLOADS = ("custom_obj_", "opaque_obj_")


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside runs with ``weights_only=True``, whatever its caller asks."""
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def load_exported(path: str | Path) -> nn.Module:
    """A ``.pt2`` program as a module, refusing payloads that would be unpickled."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path} is not a torch.export program (.pt2): {exc}") from None
    pickled = [name for name in names if Path(name).name.startswith(_PICKLED_PT2_PAYLOADS)]
    if pickled:
        raise ModelError(
            f"{path} holds pickled objects ({_some(pickled)}), which would be unpickled on "
            "loading: export a model whose constants are tensors only"
        )
    try:
        with _weights_only_loads():
            program = torch.export.load(path)
    except Exception as exc:  # torch raises many types for a foreign file
        raise ModelError(
            f"{path} is not a loadable torch.export program: {_first_line(exc)}"
        ) from None
    return ProgramClassifier(program.module())


def load_torchscript(path: str | Path) -> nn.Module:
    """A TorchScript archive in eval mode, as a ``ProgramClassifier``."""
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # RuntimeError for most foreign files, others for some
        names = []
        with contextlib.suppress(OSError, zipfile.BadZipFile):
            names = zipfile.ZipFile(path).namelist()
        if any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names):
            raise ModelError(
                f"{path} is a pickled nn.Module (torch.save(model)), which is never unpickled "
                "here: save torch.jit.script(model) or a torch.export program instead"
            ) from None
        raise ModelError(f"{path} is not a TorchScript archive: {_first_line(exc)}") from None
    return ProgramClassifier(scripted.eval())


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def load_model(
    path: str | Path, device: torch.device | str = "cpu", spec: ModelSpec | None = None
) -> nn.Module:
    """The model of an archive in eval mode with frozen parameters, on ``device``."""
    spec = spec or ModelSpec()
    if spec.format == "torchvision":
        assert spec.arch is not None
        model = build_model(load_state_dict(path), spec.arch, spec.num_classes)
    elif spec.format == "torchscript":
        model = load_torchscript(path)
    else:
        model = load_exported(path)
    return model.eval().requires_grad_(False).to(device)


def find_cam_layer(model: nn.Module, crop: int = 224) -> str | None:
    """The layer Grad-CAM explains: the last module with a 4-D output before global pooling.

    One forward pass of a random ``crop`` x ``crop`` image with a hook on every module records
    each output in the order modules finish. The answer is the last (outermost, for a container
    finishing with its last child) module that ran once with an ``(N, C, h, w)`` output,
    ``h w > 1``, before the last global pooling: a module reducing a 4-D input to one value per
    channel, or a 2-D input of that module's ``C`` channels (pooling done by a function, as in
    DenseNet) or of its ``C h w`` values (flattened, as in VGG and AlexNet). A module taking a
    token sequence (3-D input) in between, as in a Vision Transformer, means the map is not
    convolutional: ``None``.
    """
    events: list[tuple[str, tuple[int, ...], tuple[int, ...], int]] = []
    calls: dict[str, int] = {}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            if isinstance(output, torch.Tensor):
                shape_in = tuple(first.shape) if first is not None else ()
                events.append((name, shape_in, tuple(output.shape), id(output)))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(torch.randn(2, 3, crop, crop))
    finally:
        for handle in handles:
            handle.remove()
    candidate: int | None = None
    found: str | None = None  # the candidate before the last pooling seen so far
    for index, (name, shape_in, shape_out, _) in enumerate(events):
        if calls[name] == 1 and len(shape_out) == 4 and shape_out[2] * shape_out[3] > 1:
            candidate = index
        elif candidate is not None:
            _, channels, height, width = events[candidate][2]
            if len(shape_in) == 3:  # tokens: not a convolutional feature map any more
                candidate = None
            elif (len(shape_in) == 4 and shape_in[2] * shape_in[3] > 1 and _pooled(shape_out)) or (
                len(shape_in) == 2 and shape_in[1] in (channels, channels * height * width)
            ):
                # Squeeze-and-excitation blocks pool too: a later pooling overrides this one.
                found = events[candidate][0]
    return found


def _pooled(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 or (len(shape) == 4 and shape[2] * shape[3] == 1)
