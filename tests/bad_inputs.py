"""The bad-input matrix: each bad request once, with the status and error code it must get.

``BAD_REQUESTS`` is asserted at both levels: in process, by feeding ``BadRequest.row()`` (what
TorchServe's worker hands the handler) to ``SaliencyService.handle_batch``
(tests/unit/test_parsing.py), and through the real TorchServe, by sending
``BadRequest.post_kwargs()`` (tests/integration/test_bad_input.py). Cases that exist at one level
only are listed apart: ``FRONT_END_ONLY`` (answered by TorchServe's front end before the handler)
and ``ROW_ONLY`` (rows no HTTP request turns into). Token checks live in
tests/integration/test_security.py.
"""

from __future__ import annotations

import base64
import io
import json
import struct
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from hardening import png_claiming
from photos import encode, packaged_photos
from PIL import Image

PHOTOS = packaged_photos()
GOOD = PHOTOS["coffee"]  # whole photos, for the cases that cut or corrupt one
SMALL = encode(Image.open(io.BytesIO(GOOD)).resize((60, 40)))  # a valid image beside bad options
SMALL_B64 = base64.b64encode(SMALL).decode()
JSON = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain"}
MIB = 2**20


@dataclass(frozen=True)
class BadRequest:
    """One bad request as a client sends it, and the answer it must get.

    ``code`` is the service's ``error.code``; None where TorchServe's front end answers before
    the handler. ``says``: text the error message (or the front end's body) must contain.
    """

    name: str
    status: int
    code: str | None
    body: bytes | str | None = None
    json_body: Any = None
    files: dict[str, tuple] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    model: str | None = None  # another model name than the served one
    says: tuple[str, ...] = ()
    max_message: int = 250  # an error never echoes a large input back

    def __str__(self) -> str:
        return self.name

    def post_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the integration tests' ``Api.post``."""
        body = self.body.encode() if isinstance(self.body, str) else self.body
        kwargs = {"json_body": self.json_body, "files": self.files, "headers": self.headers}
        return {"body": body, **kwargs} | ({"model": self.model} if self.model else {})

    def row(self) -> dict[str, Any]:
        """The row TorchServe's worker hands the handler for this request.

        The front end makes one parameter per multipart part (a file part with its content type,
        a plain field with none) or one ``body`` parameter with the request's content type; the
        worker's own decoder then parses application/json, decodes text/* and leaves the rest
        as bytes (forwarding as bytes what it cannot parse).
        """
        if self.files is not None:
            return {name: _worker_value(*_part(spec)) for name, spec in self.files.items()}
        if self.json_body is not None:
            return {
                "body": _worker_value(json.dumps(self.json_body).encode(), JSON["Content-Type"])
            }
        content_type = self.headers.get("Content-Type", "application/octet-stream")
        body = self.body.encode() if isinstance(self.body, str) else self.body
        return {"body": _worker_value(body or b"", content_type)}


def _part(spec: tuple) -> tuple[bytes, str]:
    """(content, content type) of a ``requests`` files entry: (filename, content[, type])."""
    content = spec[1].encode() if isinstance(spec[1], str) else spec[1]
    return content, spec[2] if len(spec) > 2 else ""


class _Wire:
    """A socket that has already received ``data``."""

    def __init__(self, data: bytes) -> None:
        self.stream = io.BytesIO(data)

    def recv(self, size: int) -> bytes:
        return self.stream.read(size)


def _worker_value(content: bytes, content_type: str) -> Any:
    """One parameter's value as TorchServe's Python worker decodes it off the wire."""
    from ts.protocol.otf_message_handler import _retrieve_input_data

    parts = (b"parameter", content_type.encode(), content)
    frame = b"".join(struct.pack("!i", len(part)) + part for part in parts)
    return _retrieve_input_data(_Wire(frame))["value"]


def option(name: str, value: Any, code: str = "invalid_option", *says: str) -> BadRequest:
    """A JSON request with a valid image and one bad option."""
    label = (
        f"json {name}={value!r}" if len(repr(value)) < 40 else f"json {name} of {value!r:.20}..."
    )
    body = {"image": SMALL_B64, name: value}
    return BadRequest(label, 400, code, json_body=body, says=says or (repr(name),))


def form(fields: dict[str, str | bytes], code: str, *says: str, name: str = "") -> BadRequest:
    """A multipart request with a valid image and these plain fields."""
    label = name or "form " + " ".join(f"{k}={v!r}" for k, v in fields.items())
    files = {"image": ("small.png", SMALL, "image/png")} | {k: (None, v) for k, v in fields.items()}
    return BadRequest(label, 400, code, files=files, says=says)


def _huge_string(where: str) -> BadRequest:
    huge = "x" * 4_000_000
    document = (
        {"image": SMALL_B64, huge: 1} if where == "key" else {"image": SMALL_B64, where: huge}
    )
    code = {"key": "unknown_option", "target": "unknown_label"}.get(where, "invalid_option")
    body = json.dumps(document).encode()
    return BadRequest(f"json with a 4 MB {where}", 400, code, body=body, headers=JSON)


_ENCODED_JSON = json.dumps({"image": SMALL_B64, "method": "smoothgrad", "noise": 10**400})

BAD_REQUESTS: list[BadRequest] = [
    # --- bodies that are no request at all ---------------------------------------------------
    BadRequest("empty body", 400, "empty_body", body=b""),
    BadRequest("json null", 400, "empty_body", body=b"null", headers=JSON),
    BadRequest("blank text", 400, "empty_body", body="  \n", headers=TEXT),
    BadRequest("random bytes", 400, "invalid_image", body=np.random.default_rng(1).bytes(4096)),
    BadRequest(
        "text", 400, "invalid_image", body="hello, is this the saliency service?", headers=TEXT
    ),
    BadRequest(
        "html as octet-stream",
        400,
        "invalid_image",
        body=b"<!doctype html><html><body><img src=x></body></html>",
    ),
    BadRequest("truncated png", 400, "invalid_image", body=GOOD[: len(GOOD) // 2]),
    BadRequest(
        "png with a broken checksum",  # byte 30 lies in the IHDR chunk's CRC
        400,
        "invalid_image",
        body=GOOD[:30] + bytes([GOOD[30] ^ 0xFF]) + GOOD[31:],
    ),
    BadRequest(
        "truncated jpeg",
        400,
        "invalid_image",
        body=encode(Image.open(io.BytesIO(PHOTOS["chelsea"])), "JPEG")[:700],
    ),
    BadRequest(
        "jpeg header only",
        400,
        "invalid_image",
        body=b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(64),
    ),
    BadRequest(
        "claims to be a jpeg",
        400,
        "invalid_image",
        body=b"definitely a jpeg",
        headers={"Content-Type": "image/jpeg"},
    ),
    BadRequest(
        "png signature then junk", 400, "invalid_image", body=b"\x89PNG\r\n\x1a\n" + b"junk" * 100
    ),
    BadRequest(
        "base64 of text",
        400,
        "invalid_image",
        json_body={"image": base64.b64encode(b"just text").decode()},
    ),
    BadRequest(
        "multipart file that is not an image",
        400,
        "invalid_image",
        files={"image": ("cat.jpg", b"GIF89a but not really", "image/jpeg")},
    ),
    # --- JSON that is not a request document ---------------------------------------------------
    BadRequest("json cut short", 400, "invalid_json", body=b'{"image": ', headers=JSON),
    BadRequest("json cut in a string", 400, "invalid_json", body=b'{"image": "abc', headers=JSON),
    BadRequest("json with a bare key", 400, "invalid_json", body=b"{not json}"),
    BadRequest("json trailing comma", 400, "invalid_json", body=b'{"image": "QUJD",}'),
    BadRequest("json cut short as text", 400, "invalid_json", body='{"image": 1', headers=TEXT),
    BadRequest("json not utf-8", 400, "invalid_json", body=b'{"image": "\xff\xfe"}', headers=JSON),
    BadRequest("json list as bytes", 400, "invalid_json", body=b"[1, 2, 3]"),
    BadRequest("json list of a name", 400, "invalid_json", body=b'["image"]'),
    BadRequest("json list", 400, "invalid_json", json_body=[1, 2, 3]),
    BadRequest("json empty list as text", 400, "invalid_json", body="[]", headers=TEXT),
    BadRequest("json number", 400, "invalid_json", body=b"42", headers=JSON),
    BadRequest(
        "json nested 50000 deep",
        400,
        "invalid_json",
        body=b"[" * 50_000 + b"]" * 50_000,
        headers=JSON,
    ),
    BadRequest("json of 100000 open brackets", 400, "invalid_json", body=b"[" * 100_000),
    # --- the image field ---------------------------------------------------------------------
    BadRequest("json without an image", 400, "missing_image", json_body={"target": 3}),
    BadRequest(
        "json with only an unknown field", 400, "missing_image", json_body={"picture": "abc"}
    ),
    BadRequest("empty image string", 400, "missing_image", json_body={"image": ""}),
    BadRequest("blank image string", 400, "missing_image", json_body={"image": " \n "}),
    BadRequest(
        "multipart without an image",
        400,
        "missing_image",
        files={"target": (None, "3"), "topk": (None, "2")},
    ),
    BadRequest(
        "multipart with an empty image",
        400,
        "missing_image",
        files={"image": ("empty.png", b"", "image/png"), "topk": (None, "2")},
    ),
    BadRequest("image a list", 400, "invalid_option", json_body={"image": [1, 2]}),
    BadRequest("image a number", 400, "invalid_option", json_body={"image": 12345}),
    BadRequest(
        "image and data fields",
        400,
        "invalid_option",
        files={"image": ("a.png", SMALL, "image/png"), "data": ("b.png", SMALL, "image/png")},
    ),
    *[
        BadRequest(f"base64 {text!r}", 400, "invalid_base64", json_body={"image": text})
        # outside the alphabet, one character too many, not ASCII, a NUL
        for text in ("not base64!!", "abc$defg", "QUJD" + "Q", "QUJDé", "////\x00")
    ],
    # --- options -------------------------------------------------------------------------------
    option("foo", 1, "unknown_option", "'foo'", "topk"),  # the known options are listed
    BadRequest(
        "json option names are case-sensitive",
        400,
        "unknown_option",
        json_body={"image": SMALL_B64, "topk": 3, "Target": 3},
        says=("'Target'", "topk"),
    ),
    form({"colour": "hot"}, "unknown_option", "'colour'", "topk"),
    *[
        option(name, value)
        for name, value in [
            ("topk", 0),
            ("topk", 21),
            ("topk", -3),
            ("topk", "abc"),
            ("topk", True),
            ("topk", 2.5),
            ("topk", None),
            ("topk", [3]),
            ("target", 1000),
            ("target", -1),
            ("target", True),
            ("target", 3.5),
            ("target", "1000"),
            ("target", "-1"),
            ("target", ""),
            ("target", [281]),
            ("target", {"index": 281}),
            ("objective", "foo"),
            ("objective", 1),
            ("objective", None),
            ("colormap", "jet"),
            ("colormap", ""),
            ("colormap", 3),
            ("overlay", "maybe"),
            ("overlay", None),
            ("saliency", "maybe"),
            ("saliency", [True]),
        ]
    ],
    form({"topk": "0"}, "invalid_option"),
    form({"topk": "x"}, "invalid_option"),
    form({"overlay": "maybe"}, "invalid_option"),
    form({"colormap": b"\xff\xfe"}, "invalid_option", name="form colormap not utf-8"),
    # Numbers that are not quite numbers, and numbers too large to be a class.
    option("topk", "+-5"),
    option("topk", "--3"),
    option("topk", "\u00b2"),  # a superscript 2: isdigit() but not int()
    option("topk", "9" * 5000),  # past int()'s digit limit
    option("target", "-+3", "unknown_label", "'-+3'"),  # neither a number nor a name
    # Signed or huge targets are refused briefly, whatever their length.
    *[
        replace(option("target", value), max_message=120)
        for value in ("-0", "-5", "1" * 4000, "9" * 5000, 10**400, -(10**30))
    ],
    # As bytes without a JSON content type: the service's own JSON reading meets the number.
    BadRequest("json noise of 401 digits", 400, "invalid_option", body=_ENCODED_JSON),
    # Options that shape a map, sent with saliency=false (they would be silently dropped).
    *[
        form({"saliency": "false", name: value}, "invalid_option")
        for name, value in [
            ("target", "281"),
            ("objective", "loss"),
            ("colormap", "hot"),
            ("overlay", "true"),
            ("method", "vargrad"),
        ]
    ],
    form({"saliency": "false", "method": "vargrad", "samples": "3"}, "invalid_option"),
    # --- labels -------------------------------------------------------------------------------
    *[
        case
        for label, indices in [
            ("crane", [134, 517]),
            ("cardigan", [264, 474]),
            ("Cardigan", [264, 474]),
            ("maillot", [638, 639]),
        ]
        for case in (
            option("target", label, "ambiguous_label", str(indices)),
            form({"target": label}, "ambiguous_label", str(indices)),
        )
    ],
    *[
        option("target", label, "unknown_label", repr(label))
        for label in ("unicorn", "golden", "retriever golden", "tabby cat")
    ],
    # --- sizes (the served limits are the service's defaults) ----------------------------------
    BadRequest(
        "image over the byte limit",  # 9 MiB: under the front end's 12 MiB, over the 8 MiB
        413,
        "payload_too_large",
        body=b"\x89PNG\r\n\x1a\n" + bytes(9 * MIB),
    ),
    BadRequest(
        "base64 image over the byte limit",  # 11.2 MB of JSON
        413,
        "payload_too_large",
        json_body={"image": base64.b64encode(bytes(8 * MIB + 3000)).decode()},
    ),
    BadRequest(
        "png claiming 30000 x 30000 pixels",
        413,
        "image_too_large",
        body=png_claiming(30_000, 30_000),
    ),
    *[_huge_string(where) for where in ("target", "key", "objective")],
]

# Answered by TorchServe's front end before any handler runs (docs/errors-and-hardening.md).
FRONT_END_ONLY: list[BadRequest] = [
    BadRequest(
        "body over the request limit",  # max_request_size: 413 with no body
        413,
        None,
        body=bytes(12 * MIB + 1),
    ),
    BadRequest(
        "unknown model",
        404,
        None,
        body=GOOD,
        model="no_such_model",
        says=("ModelNotFoundException",),
    ),
    # curl --data-binary's default Content-Type: the front end fails to parse the image as a form
    # (documented, with the fix: send a Content-Type).
    *[
        BadRequest(
            f"{name} sent as a form",
            500,
            None,
            body=PHOTOS[name],
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            says=("ErrorDataDecoderException",),
        )
        for name in ("chelsea", "coffee")
    ],
]

# Rows the service must answer that none of the requests above turns into: name -> (row, status,
# code).
ROW_ONLY: dict[str, tuple[dict[str, Any], int, str]] = {
    "no parameter at all": ({}, 400, "empty_body"),
}


def by_name(name: str) -> BadRequest:
    """The case of BAD_REQUESTS with this name."""
    (case,) = [case for case in BAD_REQUESTS if case.name == name]
    return case
