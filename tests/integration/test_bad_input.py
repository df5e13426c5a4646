"""The bad-input matrix against the real server: a clear 4xx or a correct 200, never a 5xx.

Malformed requests (tests/bad_inputs.py, the same matrix the unit tests feed to the in-process
service) get ``{"error": {"code", "message"}}`` with a stable code; unusual but valid images
(every mode and container a client may send) get the answer their pixels deserve; abusive
requests are refused before the work is done. The worker that started the module must still be
the one serving at its end, whatever order its tests ran in.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
from bad_inputs import BAD_REQUESTS, FRONT_END_ONLY, BadRequest
from hardening import error_of, png_claiming, proc_status
from photos import CAT_CLASSES, encode, packaged_photos
from PIL import Image, ImageOps

PHOTOS = packaged_photos()
GOOD = PHOTOS["coffee"]


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


# --- bad requests: the shared matrix (tests/bad_inputs.py) -------------------------------------


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=str)
def test_bad_requests_get_their_status_and_code(api, case: BadRequest) -> None:
    response = api.post(**case.post_kwargs())
    assert error_of(response) == (case.status, case.code), response.text[:300]
    message = response.json()["error"]["message"]
    assert all(text in message for text in case.says), message
    assert len(message) < case.max_message


@pytest.mark.parametrize("case", FRONT_END_ONLY, ids=str)
def test_the_front_end_answers_before_the_handler(api, case: BadRequest) -> None:
    response = api.post(**case.post_kwargs())
    assert response.status_code == case.status, response.text[:300]
    assert all(text in response.text for text in case.says), response.text[:300]


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


def test_decompression_bomb_is_refused_with_flat_memory(api, server) -> None:
    bomb = png_claiming(30_000, 30_000)  # 2.7 GB of pixels once decoded
    assert len(bomb) < 2048
    api.post(GOOD)  # the worker is warm: its peak memory so far is that of normal work
    (worker,) = server.worker_pids()
    before = proc_status(worker)
    response = api.post(bomb)
    after = proc_status(worker)
    grew = (after["VmHWM"] - before["VmHWM"]) / 2**20
    print(
        f"\n[bomb] 30000x30000 PNG of {len(bomb)} B: {response.status_code}; "
        f"worker peak RSS {before['VmHWM'] / 2**20:.0f} -> {after['VmHWM'] / 2**20:.0f} MiB"
    )
    assert error_of(response) == (413, "image_too_large")
    assert grew < 20, f"the worker's peak memory grew by {grew:.0f} MiB"
