"""Request parsing and validation: one TorchServe request row in, a typed ``SaliencyRequest`` out.

A row is TorchServe's view of one HTTP request: ``{"body": ...}`` (or ``"data"``) for a raw or JSON
body, one key per field for multipart/form-data. Values arrive as bytes/bytearray (raw bodies,
multipart fields), ``str`` (text/* bodies) or already-decoded JSON (application/json).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import errors
from .attribution.objectives import OBJECTIVES
from .attribution.smoothgrad import DEFAULT_NOISE, DEFAULT_SAMPLES
from .labels import Labels, check_index

IMAGE_FIELDS = ("image", "data", "body")
COLORMAPS = ("gray", "hot")
METHODS = ("smoothgrad", "vanilla")
SMOOTHGRAD_OPTIONS = ("samples", "noise", "seed")  # meaningful with method "smoothgrad" only
MAX_SEED = 2**31 - 1
TRUE_WORDS = {"true", "1", "yes", "on"}
FALSE_WORDS = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on what one request may ask for."""

    max_image_bytes: int = 8 * 1024 * 1024
    max_topk: int = 20
    max_samples: int = 50  # SmoothGrad copies per request: ~20-40 ms each on 2 CPU cores


@dataclass(frozen=True)
class Options:
    """Every option a request may set, at its default."""

    target: int | None = None  # None: the predicted class
    topk: int = 5
    objective: str = "score"
    colormap: str = "gray"
    overlay: bool = False
    saliency: bool = True  # False: classification only, no backward pass
    method: str = "vanilla"  # or "smoothgrad" (Smilkov et al. 2017)
    samples: int = DEFAULT_SAMPLES  # SmoothGrad: noisy copies averaged
    noise: float = DEFAULT_NOISE  # SmoothGrad: sigma as a fraction of the input's max - min
    seed: int | None = None  # SmoothGrad: None until the service draws one (and reports it)


OPTION_NAMES = [name for name in Options.__dataclass_fields__]


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
    return bytes(data[:64]).lstrip().startswith((b"{", b"["))


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
    unknown = [name for name in raw if name not in OPTION_NAMES]
    if unknown:
        raise errors.unknown_option(unknown[0], OPTION_NAMES)
    values: dict[str, Any] = {}
    if raw.get("target") is not None:
        values["target"] = _target(raw["target"], labels)
    if "topk" in raw:
        values["topk"] = _bounded_int("topk", raw["topk"], 1, limits.max_topk)
    if "objective" in raw:
        values["objective"] = _choice("objective", raw["objective"], sorted(OBJECTIVES))
    if "colormap" in raw:
        values["colormap"] = _choice("colormap", raw["colormap"], COLORMAPS)
    for name in ("overlay", "saliency"):
        if name in raw:
            values[name] = _boolean(name, raw[name])
    if "method" in raw:
        values["method"] = _choice("method", raw["method"], METHODS)
    if values.get("method", Options.method) != "smoothgrad":
        given = [name for name in SMOOTHGRAD_OPTIONS if name in raw]
        if given:
            raise errors.invalid_option(given[0], "applies to method 'smoothgrad' only")
    if "samples" in raw:
        values["samples"] = _bounded_int("samples", raw["samples"], 1, limits.max_samples)
    if "noise" in raw:
        values["noise"] = _fraction("noise", raw["noise"])
    if raw.get("seed") is not None:
        values["seed"] = _bounded_int("seed", raw["seed"], 0, MAX_SEED)
    return Options(**values)


def _target(value: Any, labels: Labels) -> int:
    if isinstance(value, bool):
        raise errors.invalid_option("target", "must be a class index 0-999 or a class name")
    if isinstance(value, int):
        return check_index(value)
    if isinstance(value, float) and value.is_integer():
        return check_index(int(value))
    if isinstance(value, str) and value.strip():
        return labels.resolve(value)
    raise errors.invalid_option("target", "must be a class index 0-999 or a class name")


def _bounded_int(name: str, value: Any, low: int, high: int) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        number = parse_integer(value)
    if number is None or not low <= number <= high:
        raise errors.invalid_option(name, f"must be an integer {low}-{high}, got {value!r:.40}")
    return number


def _fraction(name: str, value: Any) -> float:
    number: float | None = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (ValueError, OverflowError):  # "abc", 10**400
            number = None
    if number is None or not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise errors.invalid_option(name, f"must be a number 0-1, got {value!r:.40}")
    return number


INTEGER = re.compile(r"[+-]?[0-9]{1,12}")


def parse_integer(text: str) -> int | None:
    """A plain ASCII decimal integer, or None (no "+-5", no superscripts, no 4000 digits)."""
    text = text.strip()
    return int(text) if INTEGER.fullmatch(text) else None


def _choice(name: str, value: Any, choices: tuple[str, ...] | list[str]) -> str:
    if isinstance(value, str) and value.strip().lower() in choices:
        return value.strip().lower()
    raise errors.invalid_option(name, f"must be one of {', '.join(choices)}, got {value!r:.40}")


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise errors.invalid_option(name, f"must be true or false, got {value!r:.40}")
