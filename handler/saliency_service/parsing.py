"""Request parsing and validation: one TorchServe request row in, a typed ``SaliencyRequest`` out.

A row is TorchServe's view of one HTTP request: ``{"body": ...}`` (or ``"data"``) for a raw or JSON
body, one key per field for multipart/form-data. Values arrive as bytes/bytearray (raw bodies,
multipart fields), ``str`` (text/* bodies) or already-decoded JSON (application/json).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from . import errors
from .attribution.objectives import OBJECTIVES
from .labels import Labels
from .methods import DEFAULT_METHOD, METHODS, method_options, owners_of
from .values import boolean, bounded_float, bounded_int, choice

IMAGE_FIELDS = ("image", "data", "body")
COLORMAPS = ("gray", "hot", "inferno", "viridis")


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on what one request may ask for."""

    max_image_bytes: int = 8 * 1024 * 1024
    max_topk: int = 20
    max_samples: int = 50  # noisy copies per request (SmoothGrad family): one gradient each
    max_steps: int = 256  # Integrated Gradients' path points per request: one gradient each


@dataclass(frozen=True)
class Options:
    """Every option a request may set, at its default; ``settings`` are the method's own."""

    target: int | None = None  # None: the predicted class
    topk: int = 5
    objective: str = "score"
    colormap: str = "gray"
    overlay: bool = False
    saliency: bool = True  # False: classification only, no backward pass
    clip: float = 99.0  # percentile shown at full intensity in heatmap and overlay (100: the max)
    method: str = DEFAULT_METHOD
    settings: Mapping[str, Any] = field(default_factory=METHODS[DEFAULT_METHOD].defaults)


GENERAL_OPTIONS = [name for name in Options.__dataclass_fields__ if name != "settings"]
MAP_OPTIONS = ("target", "objective", "colormap", "overlay", "clip", "method")  # shape the map


@dataclass(frozen=True)
class SaliencyRequest:
    image: bytes
    options: Options = field(default_factory=Options)


def parse_request(
    row: Mapping[str, Any], labels: Labels, limits: RequestLimits = RequestLimits()
) -> SaliencyRequest:
    """Turn one request row into a validated request, or raise ``RequestError``."""
    if not isinstance(row, Mapping) or not row:
        raise errors.empty_body()
    payload_keys = [key for key in ("body", "data") if key in row]
    if len(row) == 1 and payload_keys:
        return _parse_payload(row[payload_keys[0]], labels, limits)
    return _parse_fields(row, labels, limits)  # multipart/form-data


def _parse_payload(payload: Any, labels: Labels, limits: RequestLimits) -> SaliencyRequest:
    if isinstance(payload, (bytes, bytearray)):
        if not payload:
            raise errors.empty_body()
        if _looks_like_json(payload):
            return _parse_json(_load_json(payload), labels, limits)
        return SaliencyRequest(image=bytes(payload))
    if isinstance(payload, str):
        if not payload.strip():
            raise errors.empty_body()
        if _looks_like_json(payload.encode("utf-8", "replace")):
            return _parse_json(_load_json(payload), labels, limits)
        raise errors.invalid_image(
            "a text body is not an image; send the image bytes, or JSON "
            "with the image as base64 in 'image'"
        )
    if payload is None:
        raise errors.empty_body()
    return _parse_json(payload, labels, limits)  # TorchServe already decoded application/json


def _looks_like_json(data: bytes | bytearray) -> bool:
    """Starts like a JSON document, in UTF-8 (with or without a BOM), UTF-16 or UTF-32, which
    ``json.loads`` reads from bytes; no image format starts like one."""
    head = bytes(data[:64])
    encoding = json.detect_encoding(head)
    unit = 4 if "32" in encoding else 2 if "16" in encoding else 1  # whole code units only
    text = head[: len(head) - len(head) % unit].decode(encoding, "ignore")
    text = text.lstrip("\ufeff \t\r\n")
    return text.startswith(("{", "["))


def _load_json(data: bytes | bytearray | str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.invalid_json(str(exc)[:200]) from None
    except RecursionError:
        raise errors.invalid_json("nested too deeply") from None


def _parse_json(document: Any, labels: Labels, limits: RequestLimits) -> SaliencyRequest:
    if not isinstance(document, dict):
        raise errors.invalid_json(f"expected an object, got {type(document).__name__}")
    if "image" not in document:
        raise errors.missing_image()
    encoded = document["image"]
    if not isinstance(encoded, str):
        raise errors.invalid_option("image", "must be a base64 string")
    image = decode_base64(encoded, limits.max_image_bytes)
    rest = {key: value for key, value in document.items() if key != "image"}
    return SaliencyRequest(image=image, options=parse_options(rest, labels, limits))


def _parse_fields(
    fields: Mapping[str, Any], labels: Labels, limits: RequestLimits
) -> SaliencyRequest:
    present = [name for name in IMAGE_FIELDS if name in fields]
    if not present:
        raise errors.missing_image()
    if len(present) > 1:
        raise errors.invalid_option(present[1], f"duplicates the image field {present[0]!r}")
    image = fields[present[0]]
    if isinstance(image, str):
        image = image.encode("utf-8")
    if not isinstance(image, (bytes, bytearray)) or not image:
        raise errors.missing_image()
    rest = {key: _field_text(key, value) for key, value in fields.items() if key != present[0]}
    return SaliencyRequest(image=bytes(image), options=parse_options(rest, labels, limits))


def _field_text(name: str, value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError:
            raise errors.invalid_option(name, "is not UTF-8 text") from None
    return value


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Strict base64 (standard or URL-safe alphabet), optionally as a ``data:`` URL."""
    if text.startswith("data:") and "," in text[:256]:
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    if not text:
        raise errors.missing_image()
    if len(text) > (max_bytes + 2) // 3 * 4:
        raise errors.payload_too_large(len(text) * 3 // 4, max_bytes)
    if "-" in text or "_" in text:
        text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise errors.invalid_base64() from None


def parse_options(raw: Mapping[str, Any], labels: Labels, limits: RequestLimits) -> Options:
    """Validate option values given as JSON values or as multipart strings."""
    known = GENERAL_OPTIONS + sorted(method_options())
    unknown = [name for name in raw if name not in known]
    if unknown:
        raise errors.unknown_option(unknown[0], known)
    values: dict[str, Any] = {}
    if raw.get("target") is not None:
        values["target"] = _target(raw["target"], labels)
    if "topk" in raw:
        values["topk"] = bounded_int("topk", raw["topk"], 1, limits.max_topk)
    if "objective" in raw:
        values["objective"] = choice("objective", raw["objective"], sorted(OBJECTIVES))
    if "colormap" in raw:
        values["colormap"] = choice("colormap", raw["colormap"], COLORMAPS)
    for name in ("overlay", "saliency"):
        if name in raw:
            values[name] = boolean(name, raw[name])
    if "clip" in raw:
        values["clip"] = bounded_float("clip", raw["clip"], 50.0, 100.0)
    method = METHODS[DEFAULT_METHOD]
    if "method" in raw:
        method = METHODS[choice("method", raw["method"], list(METHODS))]
        values["method"] = method.name
    settings = method.defaults()
    for name in raw:
        if name in GENERAL_OPTIONS:
            continue
        if name not in settings:
            owners = ", ".join(owners_of(name))
            raise errors.invalid_option(name, f"applies to method {owners} only")
    if not values.get("saliency", True):
        map_only = [name for name in raw if name in MAP_OPTIONS or name in settings]
        if map_only:
            raise errors.invalid_option(map_only[0], "applies only with saliency true")
    bounds = asdict(limits)
    for option in method.options:
        if raw.get(option.name) is not None:  # null: the default
            settings[option.name] = option.parse(raw[option.name], bounds)
    return Options(**values, settings=settings)


def _target(value: Any, labels: Labels) -> int:
    wrong = f"must be a class index 0-{len(labels) - 1} or a class name"
    if isinstance(value, bool):
        raise errors.invalid_option("target", wrong)
    if isinstance(value, int):
        return labels.check_index(value)
    if isinstance(value, float) and value.is_integer():
        return labels.check_index(int(value))
    if isinstance(value, str) and value.strip():
        return labels.resolve(value)
    raise errors.invalid_option("target", wrong)
