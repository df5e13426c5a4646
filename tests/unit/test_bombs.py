"""Decompression bombs in every container the service accepts are refused before decoding.

The header check alone does not see images nested in containers: an ICO names a 256x256 entry
and holds a 24000x24000 PNG, a TIFF of 16x16 pixels declares 65520x65520 tiles. Each bomb must
be refused with its error code without the decoder ever allocating the picture: checked in
process by watching Pillow's image allocations, and in a fresh interpreter by its peak resident
memory, which also sees what C libraries (libtiff, libwebp) allocate on their own.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from saliency_service import images
from saliency_service.errors import RequestError
from saliency_tools import bombs

BOMBS = bombs.bombs()
LIMITS = images.ImageLimits()  # the production limits: 8 MiB, 40 megapixels


@pytest.fixture
def allocations(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """Sizes of every image Pillow allocates (its decoders write into these)."""
    sizes: list[tuple[int, int]] = []
    for name in ("new", "fill"):
        original = getattr(Image.core, name)

        def spy(mode, size, *args, original=original):
            sizes.append(tuple(size))
            return original(mode, size, *args)

        monkeypatch.setattr(Image.core, name, spy)
    yield sizes


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_each_bomb_is_refused_before_its_picture_is_allocated(name, allocations) -> None:
    data, code = BOMBS[name]
    assert len(data) < 4 * 2**20  # a few bytes to a few MB on the wire
    if code is None:  # the bomb is in a later page or picture, which is never decoded
        assert images.decode(data, LIMITS).size == (16, 16)
    else:
        with pytest.raises(RequestError) as caught:
            images.decode(data, LIMITS)
        expected_status = 413 if code == "image_too_large" else 400
        assert (caught.value.code, caught.value.status) == (code, expected_status)
    assert all(w * h <= LIMITS.max_pixels for w, h in allocations), allocations


PEAK_SCRIPT = """
import json, resource, sys
from saliency_tools import bombs
from saliency_service import images
from saliency_service.errors import RequestError

cases = bombs.bombs()
images.decode(bombs.png(16, 16))  # warm up: decoders and their libraries loaded
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
answers = {}
for name, (data, _) in cases.items():
    try:
        answers[name] = list(images.decode(data).size)
    except RequestError as error:
        answers[name] = error.code
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"answers": answers, "growth_kib": peak - base}))
"""


def test_no_bomb_raises_the_peak_memory_of_a_fresh_interpreter() -> None:
    """Decoding one of these pictures would take 0.3-4 GB (the ICO bomb took 2.2 GB before the
    nested check); refusing them all must not move the peak resident set by more than a few MB."""
    root = Path(__file__).resolve().parents[2]
    environment = {"PYTHONPATH": f"{root / 'handler'}:{root / 'scripts'}", "PATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,  # generous: only a broken check would take long
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    expected = {name: code or [16, 16] for name, (_, code) in BOMBS.items()}
    assert report["answers"] == expected
    growth_mib = report["growth_kib"] / 1024  # ru_maxrss is in KiB on Linux
    assert growth_mib < 32, f"peak resident memory grew by {growth_mib:.0f} MiB"


# --- the nested check is exact: Pillow's guard at our limit, its warning range included -------


@pytest.mark.parametrize(("side", "accepted"), [((40, 25), True), ((41, 25), False)])
def test_an_image_nested_in_an_ico_is_held_to_the_limit_exactly(side, accepted) -> None:
    """1000 pixels allowed: a 1025-pixel PNG is within Pillow's warning range (1x-2x its
    limit), which must refuse just like its error range."""
    data = bombs.ico_with_png(bombs.png(*side))
    limits = images.ImageLimits(max_pixels=1000)
    if accepted:
        assert images.decode(data, limits).size == side
        return
    with pytest.raises(RequestError) as caught:
        images.decode(data, limits)
    assert (caught.value.code, caught.value.status) == ("image_too_large", 413)
    assert "1025" in caught.value.message and "1000" in caught.value.message


def test_a_webp_canvas_just_over_the_limit_is_refused_before_the_decoder_exists(
    monkeypatch,
) -> None:
    """libwebp allocates its canvas when the file is opened; Pillow checks that canvas there only
    against twice its limit."""
    from PIL import WebPImagePlugin

    def no_decoder(*args, **kwargs):
        raise AssertionError("the WebP decoder was created")

    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", no_decoder)
    limits = images.ImageLimits(max_pixels=1000)
    with pytest.raises(RequestError) as caught:
        images.decode(bombs.webp_canvas(41, 25), limits)
    assert caught.value.code == "image_too_large" and "1025" in caught.value.message


def test_pillows_own_guard_and_warning_filters_are_restored() -> None:
    before_limit, before_filters = Image.MAX_IMAGE_PIXELS, list(warnings.filters)
    for data, _ in BOMBS.values():
        with contextlib.suppress(RequestError):
            images.decode(data, LIMITS)
    assert before_limit == Image.MAX_IMAGE_PIXELS
    assert list(warnings.filters) == before_filters


# --- formats -----------------------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def test_a_small_ico_is_decoded() -> None:
    icon = Image.new("RGB", (32, 32), (0, 128, 255))
    decoded = images.decode(encoded(icon, "ICO", sizes=[(32, 32)]))
    assert decoded.size == (32, 32) and decoded.getpixel((5, 5)) == (0, 128, 255)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(bombs.icns_with_png(bombs.png(16, 16)), id="ICNS"),
        *(
            pytest.param(encoded(Image.new("RGB", (8, 8)), fmt), id=fmt)
            for fmt in ("PPM", "TGA", "PCX", "JPEG2000")
        ),
    ],
)
def test_formats_outside_the_documented_list_are_refused(data) -> None:
    """Pillow reads all of these; the service does not, and says which formats it takes."""
    assert Image.open(io.BytesIO(data)).format  # the premise: a valid file Pillow identifies
    with pytest.raises(RequestError) as caught:
        images.decode(data, LIMITS)
    assert (caught.value.code, caught.value.status) == ("invalid_image", 400)
    assert images.ACCEPTED_NAMES in caught.value.message
