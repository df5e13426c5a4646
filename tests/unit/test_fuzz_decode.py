"""Fuzzing the path from request bytes to the model's input: parse, decode, preprocess.

Whatever a client sends, that path either yields a (3, 224, 224) finite tensor or raises
``RequestError`` (a 4xx with a code); any other exception would be a 500. Inputs are mutations of
real photos (scikit-image's chelsea and coffee) in every format the service accepts, images whose
headers claim other sizes, and random JSON documents, raw or carrying those images as base64.
"""

from __future__ import annotations

import base64
import json
import struct
import tracemalloc
import zlib
from typing import Any

import numpy as np
import pytest
import torch
from hardening import png_claiming
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from photos import encode
from PIL import Image, ImageFile

from saliency_service import images
from saliency_service.errors import RequestError
from saliency_service.labels import Labels, torchvision_categories
from saliency_service.parsing import RequestLimits, parse_request
from saliency_service.rendering import png_chunk

# Small limits keep each example fast; the checks are the same code as with production limits.
IMAGE_LIMITS = images.ImageLimits(max_bytes=2 * 1024 * 1024, max_pixels=2_000_000)
REQUEST_LIMITS = RequestLimits(max_image_bytes=IMAGE_LIMITS.max_bytes)
LABELS = Labels(torchvision_categories())
FUZZ = settings(
    # Measured: 120 reach every outcome that 300 did (a tensor; invalid_image, image_too_large;
    # each parsing error code but unknown_label, which tests/bad_inputs.py covers by name).
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI failures reproduce
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _seeds() -> dict[str, bytes]:
    """Real photos, shrunk, in every format and mode the service decodes."""
    from skimage import data

    cat = Image.fromarray(data.chelsea()).resize((90, 60))
    cup = Image.fromarray(data.coffee()).resize((60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    gray16 = np.asarray(cup.convert("L"), dtype=np.uint16) * 257
    palette = cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "png": encode(cat, "PNG"),
        "jpeg": encode(cup, "JPEG", quality=80),
        "progressive": encode(cat, "JPEG", progressive=True),
        "exif": encode(cat, "JPEG", exif=exif),
        "cmyk": encode(cup.convert("CMYK"), "JPEG"),
        "gray16": encode(Image.fromarray(gray16), "PNG"),
        "palette": encode(palette, "PNG", transparency=0),
        "rgba": encode(cup.convert("RGBA"), "PNG"),
        "gif": encode(cat, "GIF", save_all=True, append_images=[cat.rotate(90)]),
        "webp": encode(cup, "WEBP", quality=70),
        "bmp": encode(cup, "BMP"),
        "tiff": encode(cup, "TIFF"),
    }


SEEDS = _seeds()


def prepare(data: bytes) -> torch.Tensor:
    """Decode and preprocess like the service; return the model's input."""
    return images.preprocess(images.decode(data, IMAGE_LIMITS)).tensor


def assert_tensor_or_request_error(data: bytes) -> None:
    try:
        tensor = prepare(data)
    except RequestError as error:
        assert error.code and error.message and 400 <= error.status < 500
        return
    assert tensor.shape == (3, images.CROP_TO, images.CROP_TO)
    assert torch.isfinite(tensor).all()


# --- mutations of real images -------------------------------------------------------------------


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "insert", "delete", "truncate", "size"]))
        # Mostly past the format's magic number: a file that no decoder claims tests little.
        last = max(len(data) - 1, 0)
        at = draw(st.integers(0 if kind == "flip" else min(8, last), last))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at : at + len(chunk)] = chunk
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 256))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "size" and len(data) > 24:
            # Header fields of every format sit in the first bytes: write a big or odd number
            # somewhere there (PNG's IHDR width/height are at bytes 16-23).
            value = draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            at = draw(st.integers(8, min(len(data), 64) - 4))
            data[at : at + 4] = struct.pack(">I", value)
    if draw(st.booleans()):
        _fix_png_checksums(data)  # else Pillow stops at the first CRC and never sees the rest
    return bytes(data)


def _fix_png_checksums(data: bytearray) -> None:
    """Recompute the CRC of every whole chunk of a PNG, in place; other formats are left alone."""
    at = 8
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return
    while at + 12 <= len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        end = at + 8 + length
        if end + 4 > len(data):
            return
        data[end : end + 4] = struct.pack(">I", zlib.crc32(data[at + 4 : end]))
        at = end + 4


@FUZZ
@given(data=mutated_images())
def test_mutated_images_decode_or_raise_request_error(data: bytes) -> None:
    assert_tensor_or_request_error(data)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_format_decodes(name: str) -> None:
    """The unmutated seeds all work: the fuzzing starts from valid images of every kind."""
    assert prepare(SEEDS[name]).shape == (3, 224, 224)


# --- random JSON documents and request rows ------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["281", "tabby", "crane", "hot", "loss", "smoothgrad", "true", "+-5", "²"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children)
    ),
    max_leaves=10,
)
image_b64 = st.one_of(
    st.sampled_from(sorted(SEEDS)).map(lambda name: base64.b64encode(SEEDS[name]).decode()),
    mutated_images().map(lambda data: base64.b64encode(data).decode()),
    st.text(max_size=40),
)
option_names = st.sampled_from(
    ["target", "topk", "objective", "colormap", "overlay", "saliency", "method", "samples"]
) | st.text(max_size=8)
documents = st.dictionaries(option_names, json_values, max_size=4).flatmap(
    lambda options: st.one_of(
        st.just(options), image_b64.map(lambda image: {**options, "image": image})
    )
)


def _as_field(value: Any) -> bytearray:
    return bytearray(value.encode() if isinstance(value, str) else json.dumps(value).encode())


rows = st.one_of(
    documents.map(lambda document: {"body": document}),  # application/json, decoded by TorchServe
    documents.map(lambda document: {"body": json.dumps(document).encode()}),  # JSON as raw bytes
    documents.map(lambda document: {"body": json.dumps(document)}),  # text/* body
    documents.map(lambda document: {k: _as_field(v) for k, v in document.items()}),  # multipart
    json_values.map(lambda value: {"body": value}),
    st.binary(max_size=64).map(lambda raw: {"body": raw}),
    mutated_images().map(lambda data: {"body": data}),
)


@FUZZ
@given(row=rows)
def test_random_requests_parse_and_decode_or_raise_request_error(row: dict) -> None:
    try:
        request = parse_request(row, LABELS, REQUEST_LIMITS)
    except RequestError as error:
        assert error.code and error.message and 400 <= error.status < 500
        assert len(json.dumps(error.to_json())) < 2000  # never an echo of a huge input
        return
    assert_tensor_or_request_error(request.image)


# --- resource abuse, in process -----------------------------------------------------------------


def test_decompression_bomb_is_refused_before_decoding(monkeypatch) -> None:
    bomb = png_claiming(30_000, 30_000)
    assert len(bomb) < 4096

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    tracemalloc.start()
    with pytest.raises(RequestError) as caught:
        images.decode(bomb)  # the production limits
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (caught.value.code, caught.value.status) == ("image_too_large", 413)
    assert peak < 5 * 1024 * 1024, peak


def test_huge_strings_are_not_echoed_in_errors() -> None:
    image = base64.b64encode(SEEDS["png"]).decode()
    huge = "x" * 1_000_000
    for document in ({"image": image, "target": huge}, {"image": image, huge: 1}):
        with pytest.raises(RequestError) as caught:
            parse_request({"body": json.dumps(document).encode()}, LABELS)
        assert len(caught.value.message) < 300, caught.value.code


def png_gray16(width: int, height: int) -> bytes:
    """A 16-bit grayscale PNG, width x height, of a horizontal ramp (compresses to a few KB)."""

    row = b"\0" + np.linspace(0, 65535, width).astype(">u2").tobytes()
    compressor = zlib.compressobj(9)
    rows = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return (
        signature + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")
    )


def test_a_large_16_bit_image_is_scaled_without_float_copies_of_all_of_it() -> None:
    """16 megapixels of 16-bit gray: float64 copies of the whole image would be 128 MB each
    (a 40-megapixel image within the production limit cost 1.5 GB that way)."""
    data = png_gray16(4000, 4000)
    tracemalloc.start()
    image = images.decode(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert image.mode == "RGB" and image.size == (4000, 4000)
    assert peak < 100 * 2**20, f"{peak / 2**20:.0f} MiB"
    ramp = np.asarray(image)[0, :, 0]
    assert ramp[0] == 0 and ramp[-1] == 255 and (np.diff(ramp.astype(int)) >= 0).all()
