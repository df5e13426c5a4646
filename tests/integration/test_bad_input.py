"""The bad-input matrix against the real server: a clear 4xx or a correct 200, never a 5xx.

Malformed requests get ``{"error": {"code", "message"}}`` with a stable code; unusual but valid
images (every mode and container a client may send) get the answer their pixels deserve; abusive
requests are refused before the work is done. The worker that started the module must still be
the one serving at its end.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator

import numpy as np
import pytest
from hardening import encode, error_of, png_claiming, proc_status
from photos import CAT_CLASSES, packaged_photos
from PIL import Image, ImageOps

PHOTOS = packaged_photos()
GOOD = PHOTOS["coffee"]
GOOD_B64 = base64.b64encode(GOOD).decode()
JSON = {"Content-Type": "application/json"}


def chelsea() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.chelsea())  # 451 x 300


@pytest.fixture(scope="module", autouse=True)
def first_workers(server, api) -> Iterator[list[int]]:
    """The worker PIDs before this module; after it (whatever order its tests ran in), the same
    worker must still be there and answer."""
    before = server.worker_pids(None)
    yield before
    assert server.worker_pids(None) == before, "a request of this module restarted the worker"
    assert api.post(GOOD).status_code == 200, "the worker no longer answers a good request"


# --- malformed requests: 4xx with a code -------------------------------------------------------

BAD = {
    "empty body": ({"body": b""}, 400, "empty_body"),
    "random bytes": ({"body": np.random.default_rng(1).bytes(4096)}, 400, "invalid_image"),
    "text": (
        {
            "body": b"hello, is this the saliency service?",
            "headers": {"Content-Type": "text/plain"},
        },
        400,
        "invalid_image",
    ),
    "html": (
        {"body": b"<!doctype html><html><body><img src=x></body></html>", "headers": {}},
        400,
        "invalid_image",
    ),
    "truncated png": ({"body": GOOD[: len(GOOD) // 2]}, 400, "invalid_image"),
    "png with a broken checksum": (
        {"body": GOOD[:30] + bytes([GOOD[30] ^ 0xFF]) + GOOD[31:]},
        400,
        "invalid_image",
    ),
    "truncated jpeg": ({"body": encode(chelsea(), "JPEG")[:700]}, 400, "invalid_image"),
    "jpeg header only": (
        {"body": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\0" * 64},
        400,
        "invalid_image",
    ),
    "claims to be a jpeg": (
        {"body": b"definitely a jpeg", "headers": {"Content-Type": "image/jpeg"}},
        400,
        "invalid_image",
    ),
    "png signature then junk": (
        {"body": b"\x89PNG\r\n\x1a\n" + b"junk" * 100},
        400,
        "invalid_image",
    ),
    "multipart file that is not an image": (
        {"files": {"image": ("cat.jpg", b"GIF89a but not really", "image/jpeg")}},
        400,
        "invalid_image",
    ),
    "multipart without an image": ({"files": {"topk": (None, "3")}}, 400, "missing_image"),
    "malformed json": ({"body": b'{"image": "abc', "headers": JSON}, 400, "invalid_json"),
    "json list": ({"body": b"[1, 2, 3]", "headers": JSON}, 400, "invalid_json"),
    "json number": ({"body": b"42", "headers": JSON}, 400, "invalid_json"),
    "deeply nested json": (
        {"body": b"[" * 50_000 + b"]" * 50_000, "headers": JSON},
        400,
        "invalid_json",
    ),
    "json without an image": ({"json_body": {"topk": 3}}, 400, "missing_image"),
    "empty image string": ({"json_body": {"image": ""}}, 400, "missing_image"),
    "image not a string": ({"json_body": {"image": 12345}}, 400, "invalid_option"),
    "invalid base64": ({"json_body": {"image": "not*base64*at*all"}}, 400, "invalid_base64"),
    "base64 of text": (
        {"json_body": {"image": base64.b64encode(b"just text").decode()}},
        400,
        "invalid_image",
    ),
    "unknown option": ({"json_body": {"image": GOOD_B64, "colour": "red"}}, 400, "unknown_option"),
    "topk not a number": (
        {"json_body": {"image": GOOD_B64, "topk": "five"}},
        400,
        "invalid_option",
    ),
    "topk a boolean": ({"json_body": {"image": GOOD_B64, "topk": True}}, 400, "invalid_option"),
    "topk a fraction": ({"json_body": {"image": GOOD_B64, "topk": 2.5}}, 400, "invalid_option"),
    "topk 0": ({"json_body": {"image": GOOD_B64, "topk": 0}}, 400, "invalid_option"),
    "topk too large": ({"json_body": {"image": GOOD_B64, "topk": 1000}}, 400, "invalid_option"),
    "topk with two signs": (
        {"json_body": {"image": GOOD_B64, "topk": "+-5"}},
        400,
        "invalid_option",
    ),
    "target 1000": ({"json_body": {"image": GOOD_B64, "target": 1000}}, 400, "invalid_option"),
    "target -1": ({"json_body": {"image": GOOD_B64, "target": -1}}, 400, "invalid_option"),
    "target a list": ({"json_body": {"image": GOOD_B64, "target": [281]}}, 400, "invalid_option"),
    "target of 5000 digits": (
        {"json_body": {"image": GOOD_B64, "target": "9" * 5000}},
        400,
        None,
    ),
    "unknown label": (
        {"json_body": {"image": GOOD_B64, "target": "unicorn"}},
        400,
        "unknown_label",
    ),
    "ambiguous label": (
        {"json_body": {"image": GOOD_B64, "target": "crane"}},
        400,
        "ambiguous_label",
    ),
    "unknown objective": (
        {"json_body": {"image": GOOD_B64, "objective": "l2"}},
        400,
        "invalid_option",
    ),
    "unknown colormap": (
        {"json_body": {"image": GOOD_B64, "colormap": "jet"}},
        400,
        "invalid_option",
    ),
    "colormap a number": ({"json_body": {"image": GOOD_B64, "colormap": 3}}, 400, "invalid_option"),
    "overlay not a boolean": (
        {"json_body": {"image": GOOD_B64, "overlay": "maybe"}},
        400,
        "invalid_option",
    ),
    "multipart option not utf-8": (
        {"files": {"image": ("c.png", GOOD, "image/png"), "target": (None, b"\xff\xfe")}},
        400,
        "invalid_option",
    ),
    "multipart unknown option": (
        {"files": {"image": ("c.png", GOOD, "image/png"), "size": (None, "big")}},
        400,
        "unknown_option",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_requests_get_a_clear_4xx(api, first_workers, case) -> None:
    kwargs, status, code = BAD[case]
    kwargs = dict(kwargs)
    response = api.post(kwargs.pop("body", None), **kwargs)
    got_status, got_code = error_of(response)
    assert got_status == status, response.text[:300]
    if code is not None:
        assert got_code == code, response.text[:300]
    assert len(response.content) < 2000  # an error never echoes a large input back


# --- unusual images that must work -------------------------------------------------------------


def _top3(answer: dict) -> set[int]:
    return {entry["index"] for entry in answer["topk"][:3]}


def _png_of(image: Image.Image) -> bytes:
    return encode(image.convert("RGB"), "PNG")


def _working_cases() -> dict[str, tuple[bytes, bytes]]:
    """name -> (what a client sends, a plain RGB PNG of the pixels the answer must be about)."""
    cat = chelsea()
    cases: dict[str, tuple[bytes, bytes]] = {}
    gray = cat.convert("L")
    cases["grayscale"] = (encode(gray), _png_of(gray))
    # 16 bits: 8-bit value v stored as v * 257 must come back as v (a naive convert -> white).
    gray16 = np.asarray(gray, dtype=np.uint16) * 257
    cases["16-bit grayscale png"] = (encode(gray16), _png_of(gray))
    # Palette with a transparent index: transparent pixels composite on white.
    palette = cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    indices = np.asarray(palette)
    clear = int(indices[150, 225])  # a colour of the cat's face: a visible patch turns white
    colours = np.array(palette.getpalette()[: 3 * 64], dtype=np.uint8).reshape(-1, 3)
    expected = colours[indices]
    expected[indices == clear] = 255
    cases["palette with transparency"] = (encode(palette, transparency=clear), encode(expected))
    # RGBA: a fully transparent band (-> white) and opaque elsewhere.
    rgba = np.dstack([np.asarray(cat), np.full(indices.shape, 255, np.uint8)])
    rgba[100:200, :, 3] = 0
    expected = np.asarray(cat).copy()
    expected[100:200] = 255
    cases["rgba"] = (encode(rgba), encode(expected))
    cases["bmp"] = (encode(cat, "BMP"), encode(cat))
    cases["tiff"] = (encode(cat, "TIFF", compression="tiff_lzw"), encode(cat))
    cases["lossless webp"] = (encode(cat, "WEBP", lossless=True), encode(cat))
    for name, data in {
        "cmyk jpeg": encode(cat.convert("CMYK"), "JPEG", quality=92),
        "progressive jpeg": encode(cat, "JPEG", quality=90, progressive=True),
        "lossy webp": encode(cat, "WEBP", quality=80),
    }.items():
        cases[name] = (data, _png_of(Image.open(io.BytesIO(data))))
    # Animated GIF: the first frame (the cat) is the picture; the second is an espresso.
    coffee = Image.open(io.BytesIO(PHOTOS["coffee"])).resize(cat.size)
    gif = encode(cat, "GIF", save_all=True, append_images=[coffee], duration=100, loop=0)
    cases["animated gif"] = (gif, _png_of(Image.open(io.BytesIO(gif))))
    return cases


WORKING = _working_cases()


@pytest.mark.parametrize("name", sorted(WORKING))
def test_unusual_images_get_the_answer_their_pixels_deserve(api, first_workers, name) -> None:
    sent, equivalent = WORKING[name]
    response = api.post(sent)
    assert response.status_code == 200, response.text[:300]
    answer = response.json()
    expected = api.post(equivalent).json()
    assert {k: v for k, v in answer.items() if k != "serving"} == {
        k: v for k, v in expected.items() if k != "serving"
    }
    assert _top3(answer) & CAT_CLASSES, answer["topk"][:3]  # every one of them is the cat
    assert answer["crop_box"] == [94, 19, 357, 281]


def test_exif_rotated_jpeg_is_answered_in_display_orientation(api) -> None:
    upright = chelsea()
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sent = encode(stored, "JPEG", quality=92, exif=exif)
    displayed = ImageOps.exif_transpose(Image.open(io.BytesIO(sent)))
    assert displayed.size == upright.size == (451, 300)  # the premise: landscape when displayed

    answer = api.post(sent).json()
    expected = api.post(_png_of(displayed)).json()
    assert answer["crop_box"] == expected["crop_box"] == [94, 19, 357, 281]  # not [19, 94, ...]
    assert answer["saliency"]["png"] == expected["saliency"]["png"]
    assert answer["prediction"] == expected["prediction"]
    assert _top3(answer) & CAT_CLASSES
    sideways = api.post(_png_of(Image.open(io.BytesIO(sent)))).json()  # EXIF ignored
    assert sideways["crop_box"] == [19, 94, 281, 357]


@pytest.mark.parametrize(
    ("size", "crop_box"), [((1, 1), [0, 0, 1, 1]), ((7, 300), [0, 147, 7, 153])]
)
def test_tiny_images_work(api, size, crop_box) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    response = api.post(encode(pixels))
    assert response.status_code == 200, response.text[:300]
    answer = response.json()
    assert answer["crop_box"] == crop_box
    assert answer["saliency"]["width"] == answer["saliency"]["height"] == 224


# --- resource abuse: refused before the work ---------------------------------------------------


def test_decompression_bomb_is_refused_quickly_with_flat_memory(api, server) -> None:
    bomb = png_claiming(30_000, 30_000)  # 2.7 GB of pixels once decoded
    assert len(bomb) < 2048
    api.post(GOOD)  # the worker is warm: its peak memory so far is that of normal work
    (worker,) = server.worker_pids()
    before = proc_status(worker)
    start = time.perf_counter()
    response = api.post(bomb)
    seconds = time.perf_counter() - start
    after = proc_status(worker)
    grew = (after["VmHWM"] - before["VmHWM"]) / 2**20
    print(
        f"\n[bomb] 30000x30000 PNG of {len(bomb)} B: {response.status_code} in {seconds:.3f} s; "
        f"worker peak RSS {before['VmHWM'] / 2**20:.0f} -> {after['VmHWM'] / 2**20:.0f} MiB"
    )
    assert error_of(response) == (413, "image_too_large")
    assert seconds < 2.0
    assert grew < 20, f"the worker's peak memory grew by {grew:.0f} MiB"


def test_image_over_the_byte_limit_is_refused_by_the_handler(api) -> None:
    """9 MiB: under the front end's request limit (12 MiB), over the image limit (8 MiB)."""
    body = b"\x89PNG\r\n\x1a\n" + b"\0" * (9 * 2**20)
    assert error_of(api.post(body)) == (413, "payload_too_large")


def test_base64_image_over_the_byte_limit_is_refused(api) -> None:
    encoded = base64.b64encode(b"\0" * (8 * 2**20 + 3000)).decode()  # 11.2 MB of JSON
    assert error_of(api.post(json_body={"image": encoded})) == (413, "payload_too_large")


def test_body_over_the_request_limit_is_refused_by_the_front_end(api) -> None:
    """Above max_request_size TorchServe answers 413 itself, with no body (see the docs)."""
    response = api.post(b"\0" * (12 * 2**20 + 1))
    assert response.status_code == 413


@pytest.mark.parametrize("where", ["target", "key", "objective"])
def test_json_with_a_huge_string_gets_a_short_error(api, where) -> None:
    huge = "x" * 4_000_000
    document = {"image": GOOD_B64}
    if where == "key":
        document[huge] = 1
    else:
        document[where] = huge
    response = api.post(json.dumps(document).encode(), headers=JSON)
    status, _ = error_of(response)
    assert status == 400
    assert len(response.content) < 1000


# --- what TorchServe's front end answers before the handler (docs/errors-and-hardening.md) ------


def test_an_unknown_model_is_a_404(api, server) -> None:
    url = f"{server.url('inference')}/predictions/no_such_model"
    headers = {"Authorization": f"Bearer {server.keys['inference']}"}
    response = api.session.post(url, data=GOOD, headers=headers, timeout=30)
    assert response.status_code == 404
    assert response.json()["type"] == "ModelNotFoundException"


def test_image_bytes_sent_as_a_form_are_a_500_of_the_front_end(api) -> None:
    """curl --data-binary's default Content-Type: the front end fails to parse a form. Documented
    with the fix (send a Content-Type); the same bytes as application/octet-stream work."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for name in ("chelsea", "coffee"):
        response = api.post(PHOTOS[name], headers=form)
        assert response.status_code == 500
        assert response.json()["type"] == "ErrorDataDecoderException"
    assert api.post(GOOD, headers={"Content-Type": "application/octet-stream"}).status_code == 200
