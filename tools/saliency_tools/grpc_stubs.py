"""TorchServe's gRPC stubs, compiled at run time from its own vendored protos (tests/proto/).

Nothing generated is committed: ``load()`` runs grpcio-tools' protoc into a temporary folder and
imports the modules from there, so the stubs always match the installed grpcio/protobuf.
``inference.proto`` imports ``google/rpc/status.proto``, which googleapis-common-protos ships
(its ``status_pb2`` is what the generated code imports).

    from saliency_tools.grpc_stubs import load
    stubs = load()
    request = stubs.inference_pb2.PredictionsRequest(model_name="m", input={"data": b"..."})
    stub = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(channel)
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from saliency_tools import ROOT

PROTO_DIR = ROOT / "tests" / "proto"
PROTOS = ("inference.proto", "management.proto")
MODULES = ("inference_pb2", "inference_pb2_grpc", "management_pb2", "management_pb2_grpc")


class StubsUnavailable(RuntimeError):
    """grpcio, grpcio-tools or googleapis-common-protos is missing, or protoc failed."""


@dataclass(frozen=True)
class Stubs:
    inference_pb2: ModuleType
    inference_pb2_grpc: ModuleType
    management_pb2: ModuleType
    management_pb2_grpc: ModuleType


_loaded: Stubs | None = None


def _include_dirs() -> list[str]:
    try:
        import grpc_tools
        from google.rpc import status_pb2
    except ImportError as exc:
        raise StubsUnavailable(
            f"{exc.name} is not installed: pip install -r requirements-dev.txt "
            "(grpcio, grpcio-tools, googleapis-common-protos)"
        ) from None
    # google/protobuf/*.proto ship with grpc_tools; google/rpc/status.proto with googleapis.
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    googleapis = Path(status_pb2.__file__).parent.parent.parent
    return [str(PROTO_DIR), str(well_known), str(googleapis)]


def compile_protos(out_dir: Path) -> None:
    """Generate the *_pb2.py and *_pb2_grpc.py modules of PROTOS into ``out_dir``."""
    includes = _include_dirs()
    from grpc_tools import protoc

    arguments = ["protoc", *(f"-I{path}" for path in includes)]
    arguments += [f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    status = protoc.main([*arguments, *(str(PROTO_DIR / name) for name in PROTOS)])
    if status != 0:
        raise StubsUnavailable(f"protoc failed ({status}) on {', '.join(PROTOS)} in {PROTO_DIR}")


def load() -> Stubs:
    """Compile and import once per process; the temp dir goes once the modules are imported."""
    global _loaded
    if _loaded is None:
        with tempfile.TemporaryDirectory(prefix="torchserve-grpc-") as tmp:
            compile_protos(Path(tmp))
            _loaded = Stubs(*(_import_file(name, Path(tmp)) for name in MODULES))
    return _loaded


def _import_file(name: str, directory: Path) -> ModuleType:
    """Import ``directory/name.py`` as the top-level module ``name``, without touching sys.path:
    the generated *_grpc modules import their *_pb2 by that name, which sys.modules answers."""
    spec = importlib.util.spec_from_file_location(name, directory / f"{name}.py")
    if spec is None or spec.loader is None:
        raise StubsUnavailable(f"protoc wrote no {name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
