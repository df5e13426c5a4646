"""Send images to the squeezenet_saliency TorchServe model and save its answers.

Standard library only over HTTP, so it runs with any python3 >= 3.7. For every image it writes
into --out: <stem>.json (the full response), <stem>.saliency.png, and <stem>.heatmap.png /
<stem>.overlay.png when the server sends them. Folders are searched recursively for image files.

--grpc calls TorchServe's gRPC inference API (Predictions) instead; it needs grpcio, grpcio-tools
and googleapis-common-protos (requirements-dev.txt) and compiles TorchServe's own protos
(tests/proto/) at run time with scripts/grpc_stubs.py.

Usage:
    python3 scripts/client.py IMAGE_OR_FOLDER [...] [--out out/] [--concurrency 8]
        [--target INDEX_OR_NAME] [--topk 1-20] [--objective score|loss] [--colormap gray|hot]
        [--overlay] [--explain] [--url http://127.0.0.1:8080] [--timeout 120]
        [--grpc [--grpc-address 127.0.0.1:7070]]
        [--key-file key_file.json | --token TOKEN]  (or the environment variable SALIENCY_TOKEN)

    python3 scripts/client.py photos/ --colormap hot --overlay --out out/
    .venv/bin/python scripts/client.py photos/ --grpc --topk 3

As a library (scripts/figure.py does this):
    from saliency_tools.client import load_token, post_image
    answer = post_image("kitten.jpg", {"colormap": "hot"}, url, load_token(key_file), timeout=60)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from saliency_tools import MODEL_NAME, ROOT
from saliency_tools.config import read_keys, read_properties

FALLBACK_URL = "http://127.0.0.1:8080"
FALLBACK_GRPC_ADDRESS = "127.0.0.1:7070"
DEFAULT_KEY_FILE = ROOT / "key_file.json"
DEFAULT_CONFIG = ROOT / "config.properties"
DEFAULT_TIMEOUT = 120.0
TOKEN_ENV = "SALIENCY_TOKEN"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
PICTURES = ("saliency", "heatmap", "overlay")  # response fields that carry a PNG
# The service's methods (README, "Explanation methods"); expensive ones are answered by the
# second registration, whose redirect post_image follows.
METHODS = ["vanilla", "gradcam", "smoothgrad", "smoothgrad_sq", "vargrad", "integrated_gradients"]
SERVER_HINT = "is the server running? scripts/serve.sh starts it"


class ServiceError(Exception):
    """A failed request: the server's error code and message, or a transport problem."""

    def __init__(
        self, code: str, message: str, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after  # seconds, when the server said when to come back


def load_token(key_file: str | Path) -> str:
    """The inference key from the key_file.json that TorchServe writes in its working dir."""
    path = Path(key_file)
    try:
        return read_keys(path)["inference"]
    except FileNotFoundError:
        raise ServiceError(
            "no_token",
            f"{path} not found ({SERVER_HINT}); or pass --token / set {TOKEN_ENV}",
        ) from None
    except (ValueError, KeyError, TypeError):
        raise ServiceError("no_token", f"{path} has no inference key") from None


def _config_value(config: Path, name: str) -> str | None:
    try:
        return read_properties(config).get(name) or None
    except OSError:
        return None


def default_url(config: Path = DEFAULT_CONFIG) -> str:
    """inference_address from the repository's config.properties, else the TorchServe default."""
    address = _config_value(config, "inference_address")
    # A server listening on every interface is still reached through loopback.
    return address.replace("://0.0.0.0", "://127.0.0.1") if address else FALLBACK_URL


def default_grpc_address(config: Path = DEFAULT_CONFIG) -> str:
    """host:port of the gRPC inference API in config.properties, else TorchServe's default."""
    host = _config_value(config, "grpc_inference_address") or "127.0.0.1"
    port = _config_value(config, "grpc_inference_port") or FALLBACK_GRPC_ADDRESS.split(":")[1]
    return f"{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"


def encode_body(image: bytes, options: Mapping[str, Any]) -> tuple[bytes, str]:
    """Raw bytes when there are no options, else JSON with the image as base64."""
    if not options:
        # Never leave the type out: urllib would send x-www-form-urlencoded, which TorchServe 500s.
        return image, "application/octet-stream"
    document = {"image": base64.b64encode(image).decode("ascii"), **options}
    return json.dumps(document).encode("utf-8"), "application/json"


def post_image(
    image: str | Path | bytes,
    options: Mapping[str, Any] | None = None,
    url: str = FALLBACK_URL,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    explain: bool = False,
) -> dict:
    """Post one image (a path or its bytes) and return the decoded JSON answer.

    Raises ServiceError for an error answer (its code and message) or when the server is
    unreachable (code "unreachable") or too slow (code "timeout").
    """
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    body, content_type = encode_body(
        data, {k: v for k, v in (options or {}).items() if v is not None}
    )
    endpoint = "explanations" if explain else "predictions"
    target = f"{url.rstrip('/')}/{endpoint}/{MODEL_NAME}"
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        try:
            return _post(target, body, headers, timeout)
        except urllib.error.HTTPError as exc:
            # Expensive explanations are answered by the server's second registration (307,
            # README "Cost isolation"); urllib follows no redirect of a POST, so follow it here,
            # once and only on the same server, where the token belongs.
            location = exc.headers.get("Location", "") if exc.code == 307 else ""
            if not location.startswith("/predictions/"):
                raise
            exc.close()
            return _post(urllib.parse.urljoin(target, location), body, headers, timeout)
    except urllib.error.HTTPError as exc:
        raise _http_error(exc) from None
    except urllib.error.URLError as exc:
        raise _transport_error(exc.reason, url, timeout) from None
    except OSError as exc:  # timeouts while reading, connections reset mid-answer
        raise _transport_error(exc, url, timeout) from None


def _post(url: str, body: bytes, headers: Mapping[str, str], timeout: float) -> dict:
    request = urllib.request.Request(url, data=body, method="POST", headers=dict(headers))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return _decode_answer(response.read())


def option_text(value: Any) -> str:
    """An option as a form field or a gRPC input carries it: "281" is an index, booleans are
    "true"/"false"."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def encode_form(
    files: Mapping[str, tuple[str, bytes, str]], options: Mapping[str, Any] | None = None
) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type: each file, name -> (filename, data,
    content type), a file part; then each option a text/plain part (``option_text``).

    TorchServe hands the handler every part as a field of the request row, and json-decodes a
    file part typed application/json (the stock handler reads an explanation's ``target`` so).
    """
    boundary = "saliency" + os.urandom(8).hex()
    parts = [
        (name, f'; filename="{file}"', kind, data) for name, (file, data, kind) in files.items()
    ]
    parts += [
        (name, "", "text/plain", option_text(value).encode("utf-8"))
        for name, value in (options or {}).items()
    ]
    chunks = []
    for name, filename, kind, data in parts:
        disposition = f'form-data; name="{name}"{filename}'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {kind}\r\n\r\n"
        chunks.append(head.encode() + data + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def grpc_input(image: bytes, options: Mapping[str, Any]) -> dict[str, bytes]:
    """A PredictionsRequest's input map: the image under "data", options as text
    (``option_text``, multipart's conventions)."""
    return {"data": image} | {name: option_text(v).encode("utf-8") for name, v in options.items()}


class GrpcClient:
    """TorchServe's gRPC inference API: one channel, shared by the threads (grpc allows it)."""

    def __init__(self, address: str, token: str | None, timeout: float = DEFAULT_TIMEOUT) -> None:
        try:
            import grpc

            from saliency_tools.grpc_stubs import StubsUnavailable, load
        except ImportError as exc:
            raise ServiceError(
                "no_grpc", f"{exc.name} is not installed: pip install -r requirements-dev.txt"
            ) from None
        try:
            stubs = load()
        except StubsUnavailable as exc:
            raise ServiceError("no_grpc", str(exc)) from None
        self.address, self.timeout = address, timeout
        self._grpc = grpc
        self._request = stubs.inference_pb2.PredictionsRequest
        self._channel = grpc.insecure_channel(address)
        self._stub = stubs.inference_pb2_grpc.InferenceAPIsServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def predict(self, image: str | Path | bytes, options: Mapping[str, Any] | None = None) -> dict:
        """Like post_image: the decoded answer, or ServiceError with the server's error code."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        fields = grpc_input(data, {k: v for k, v in (options or {}).items() if v is not None})
        model = MODEL_NAME
        for _ in range(2):
            request = self._request(model_name=model, input=fields)
            try:
                reply = self._stub.Predictions(
                    request, metadata=self._metadata, timeout=self.timeout
                )
            except self._grpc.RpcError as exc:
                raise self._rpc_error(exc) from None
            answer = _decode_answer(reply.prediction)
            # TorchServe sends the service's errors with gRPC status OK: the body says it failed.
            error = answer.get("error")
            if not isinstance(error, dict):
                return answer
            location = str(error.get("location") or "")
            if model != MODEL_NAME or not location.startswith("/predictions/"):
                break
            model = location.removeprefix("/predictions/")  # gRPC has no redirects: go there
        raise ServiceError(str(error.get("code")), str(error.get("message")))

    def _rpc_error(self, exc: Any) -> ServiceError:
        """An error of the front end (token, queue, unknown model) or of the connection."""
        status, details = exc.code(), (exc.details() or "").strip()
        codes = self._grpc.StatusCode
        if status == codes.UNAVAILABLE:
            return ServiceError("unreachable", f"cannot reach {self.address}: {details}")
        if status == codes.DEADLINE_EXCEEDED:
            message = f"no answer from {self.address} within {self.timeout:g} s"
            return ServiceError("timeout", message)
        if status == codes.PERMISSION_DENIED:
            details += " (check --key-file / --token: the key changes at every server start)"
        return ServiceError(status.name, details.splitlines()[0] if details else status.name)

    def close(self) -> None:
        self._channel.close()


def _decode_answer(raw: bytes) -> dict:
    try:
        answer = json.loads(raw)
    except ValueError:
        raise ServiceError("bad_response", f"not JSON: {raw[:120]!r}") from None
    if not isinstance(answer, dict):
        raise ServiceError("bad_response", f"expected a JSON object, got {type(answer).__name__}")
    return answer


def _http_error(exc: urllib.error.HTTPError) -> ServiceError:
    """The handler answers {"error": {code, message}}; TorchServe itself {code, type, message}."""
    raw = exc.read()
    try:
        document = json.loads(raw)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        error = document["error"]
        retry_after = exc.headers.get("Retry-After", "")
        wait = float(retry_after) if retry_after.isdigit() else None
        return ServiceError(str(error.get("code")), str(error.get("message")), exc.code, wait)
    if isinstance(document, dict) and "message" in document:
        code = str(document.get("type") or f"http_{exc.code}")
        message = str(document["message"])
        if code == "InvalidKeyException":
            message += " (check --key-file / --token: the key changes at every server start)"
        return ServiceError(code, message, exc.code)
    text = raw.decode("utf-8", "replace").strip()[:200] or exc.reason
    return ServiceError(f"http_{exc.code}", str(text), exc.code)


def _transport_error(reason: object, url: str, timeout: float) -> ServiceError:
    if isinstance(reason, TimeoutError) or "timed out" in str(reason):
        return ServiceError("timeout", f"no answer from {url} within {timeout:g} s")
    if isinstance(reason, ConnectionRefusedError):
        return ServiceError("unreachable", f"connection to {url} refused")
    return ServiceError("unreachable", f"cannot reach {url}: {reason}")


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given (any extension) plus image files found recursively in folders, deduped."""
    found: list[Path] = []
    seen: set[Path] = set()
    for item in map(Path, inputs):
        if item.is_dir():
            candidates = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            candidates = [p for p in candidates if p.is_file()]
        elif item.is_file():
            candidates = [item]
        else:
            raise FileNotFoundError(f"no such file or folder: {item}")
        for path in candidates:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                found.append(path)
    return found


def unique_stems(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """Each path with its output stem; a repeated stem gets -2, -3, ... so none is overwritten.

    Compared case-insensitively, since macOS and Windows file systems are.
    """
    taken: set[str] = set()
    pairs = []
    for path in paths:
        stem, number = path.stem, 2
        while stem.lower() in taken:
            stem, number = f"{path.stem}-{number}", number + 1
        taken.add(stem.lower())
        pairs.append((path, stem))
    return pairs


def save_answer(answer: Mapping[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """Write <stem>.json and one <stem>.<field>.png per picture in the answer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{stem}.json"]
    written[0].write_text(json.dumps(answer, indent=2) + "\n")
    for name in PICTURES:
        picture = answer.get(name)
        if isinstance(picture, dict) and picture.get("png"):
            path = out_dir / f"{stem}.{name}.png"
            path.write_bytes(base64.b64decode(picture["png"]))
            written.append(path)
    return written


def summary(answer: Mapping[str, Any]) -> str:
    """'Egyptian cat 0.68', plus the target when it is not the predicted class."""
    prediction = answer.get("prediction", {})
    text = f"{prediction.get('label')} {prediction.get('probability', 0.0):.2f}"
    target = answer.get("target") or {}
    if target and target.get("index") != prediction.get("index"):
        text += f" (saliency for {target.get('label')})"
    return text


def request_options(args: argparse.Namespace) -> dict[str, Any]:
    """Only the options the user set: with none, the image goes as raw bytes."""
    options: dict[str, Any] = {}
    if args.target is not None:
        options["target"] = int(args.target) if args.target.isdigit() else args.target
    names = ("topk", "objective", "colormap", "method", "samples", "noise", "seed", "steps")
    for name in (*names, "baseline"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.overlay:
        options["overlay"] = True
    return options


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """--url, --key-file, --token and --timeout, shared with scripts/figure.py."""
    parser.add_argument(
        "--url", default=None, help="inference address (default: config.properties, else :8080)"
    )
    parser.add_argument(
        "--key-file",
        type=Path,
        default=DEFAULT_KEY_FILE,
        help="TorchServe's key_file.json (default: the repository root's)",
    )
    parser.add_argument("--token", help=f"inference key (default: ${TOKEN_ENV}, else --key-file)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per image")


def server_from_args(args: argparse.Namespace) -> tuple[str, str]:
    """The address (URL, or host:port for --grpc) and token the arguments name; raises
    ServiceError when no token can be found."""
    if getattr(args, "grpc", False):
        address = args.grpc_address or default_grpc_address()
    else:
        address = args.url or default_url()
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    return address, token if token is not None else load_token(args.key_file)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Classify images with squeezenet_saliency and save their saliency maps."
    )
    parser.add_argument("inputs", nargs="+", help="image files and/or folders (searched deeply)")
    parser.add_argument("--out", type=Path, default=Path("out"), help="output folder (out/)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    parser.add_argument("--target", help="class index 0-999 or name to explain (default: top-1)")
    parser.add_argument("--topk", type=int, help="how many top classes to list, 1-20 (5)")
    parser.add_argument("--objective", choices=["score", "loss"], help="what to differentiate")
    parser.add_argument("--colormap", choices=["gray", "hot"], help="hot also sends a heatmap")
    parser.add_argument("--overlay", action="store_true", help="also the heatmap over the photo")
    parser.add_argument("--explain", action="store_true", help="use /explanations")
    parser.add_argument("--method", choices=METHODS, help="map method (vanilla)")
    parser.add_argument("--samples", type=int, help="SmoothGrad family: noisy copies, 1-50 (25)")
    parser.add_argument("--noise", type=float, help="SmoothGrad family: sigma / input range (0.15)")
    parser.add_argument("--seed", type=int, help="SmoothGrad family: noise seed (else drawn)")
    parser.add_argument("--steps", type=int, help="integrated_gradients: path points, 1-256 (32)")
    parser.add_argument(
        "--baseline", choices=["zero", "black"], help="integrated_gradients: path start (zero)"
    )
    add_server_arguments(parser)
    parser.add_argument("--grpc", action="store_true", help="use the gRPC inference API")
    parser.add_argument(
        "--grpc-address",
        help="gRPC inference host:port (default: config.properties, else 127.0.0.1:7070)",
    )
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.grpc and (args.explain or args.url):
        parser.error("--explain and --url are HTTP options; gRPC has Predictions only")
    if args.grpc_address and not args.grpc:
        parser.error("--grpc-address needs --grpc")
    return args


Sender = Callable[[Path, Mapping[str, Any]], dict]


def make_sender(args: argparse.Namespace, server: tuple[str, str]) -> Sender:
    """What sends one image: a POST, or a gRPC Predictions call with --grpc."""
    if args.grpc:
        return GrpcClient(server[0], server[1], args.timeout).predict

    def send(path: Path, options: Mapping[str, Any]) -> dict:
        return post_image(path, options, server[0], server[1], args.timeout, args.explain)

    return send


def process(
    path: Path, stem: str, options: Mapping[str, Any], args: argparse.Namespace, send: Sender
) -> str:
    """Send one image, save its answer and return the progress text (ServiceError on failure)."""
    started = time.monotonic()
    answer = send(path, options)
    elapsed_ms = (time.monotonic() - started) * 1000
    save_answer(answer, args.out, stem)
    return f"{summary(answer)} ({elapsed_ms:.0f} ms)"


def run(paths: list[Path], args: argparse.Namespace, server: tuple[str, str], send: Sender) -> int:
    """Send all images concurrently; print progress on stderr; return how many failed."""
    options = request_options(args)
    failed, unreachable = 0, False
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        futures = {
            pool.submit(process, path, stem, options, args, send): path
            for path, stem in unique_stems(paths)
        }
        for done, future in enumerate(as_completed(futures), start=1):
            try:
                text = future.result()
            except (ServiceError, OSError, ValueError) as exc:
                code = getattr(exc, "code", type(exc).__name__)
                status = f" ({exc.status})" if getattr(exc, "status", None) else ""
                text = f"failed: {code}{status}: {getattr(exc, 'message', exc)}"
                failed += 1
                unreachable = unreachable or code == "unreachable"
            print(f"[{done}/{len(paths)}] {futures[future]}: {text}", file=sys.stderr, flush=True)
    if unreachable:
        print(f"hint: {SERVER_HINT} (address: {server[0]})", file=sys.stderr)
    return failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        paths = find_images(args.inputs)
        server = server_from_args(args)
        send = make_sender(args, server) if paths else None
    except (FileNotFoundError, ServiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not paths:
        print("error: no image files found", file=sys.stderr)
        return 2
    failed = run(paths, args, server, send)
    print(f"{len(paths) - failed} ok, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
