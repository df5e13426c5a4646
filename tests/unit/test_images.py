"""Decoding any client image to upright RGB, and preprocessing equal to torchvision's recipe."""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision import transforms

from saliency_service.errors import RequestError
from saliency_service.images import ImageLimits, decode, preprocess
from saliency_service.rendering import png_chunk

# torchvision's classic ImageNet evaluation transform, without the normalisation: the service's
# tensor is un-normalised before the comparison, so that differences read as 8-bit levels.
STANDARD = transforms.Compose(
    [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()]
)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
LEVEL = 1 / 255


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG, compressed row block by row block (a bomb: tiny file)."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed bits
    compressor = zlib.compressobj(9)
    rows_per_block = 1000
    data = b"".join(
        compressor.compress(row * min(rows_per_block, height - start))
        for start in range(0, height, rows_per_block)
    )
    data += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def with_claimed_size(png: bytes, width: int, height: int) -> bytes:
    """A real small PNG whose IHDR (with a correct CRC) claims another size."""
    assert png[12:16] == b"IHDR"
    ihdr = struct.pack(">II", width, height) + png[24:29]
    return png[:8] + png_chunk(b"IHDR", ihdr) + png[33:]


# --- preprocessing ------------------------------------------------------------------------------


def compare_with_torchvision(image: Image.Image) -> tuple[float, float]:
    """Max and mean absolute difference, in [0, 1] units, to torchvision's transform."""
    prepared = preprocess(image)
    assert prepared.tensor.shape == (3, 224, 224)
    assert prepared.tensor.dtype == torch.float32
    restored = prepared.tensor * STD + MEAN
    difference = (restored - STANDARD(image)).abs()
    return float(difference.max()), float(difference.mean())


@pytest.mark.parametrize(
    "size", [(256, 256), (300, 451), (451, 300), (7, 300), (300, 7), (1, 1), (255, 257), (224, 224)]
)
def test_preprocess_equals_torchvision_on_synthetic_images(size) -> None:
    worst, mean = compare_with_torchvision(noise(*size))
    assert worst <= LEVEL + 1e-5
    assert mean < 1e-3


@pytest.mark.parametrize("photo", ["chelsea", "coffee"])
def test_preprocess_equals_torchvision_on_photos(photo, request) -> None:
    image = Image.fromarray(request.getfixturevalue(photo))
    worst, mean = compare_with_torchvision(image)
    assert worst <= LEVEL + 1e-5
    assert mean < 1e-3


@pytest.mark.parametrize("size", [(20, 3000), (1000, 3)])
def test_preprocess_of_extreme_strips_is_within_one_level(size) -> None:
    """Strips whose full resize would be huge: the result stays within one 8-bit level."""
    worst, mean = compare_with_torchvision(noise(*size, seed=1))
    assert worst <= LEVEL + 1e-5
    assert mean < 0.5 * LEVEL


def test_preprocess_of_a_giant_strip_resizes_only_the_crop(monkeypatch) -> None:
    """1x30000 would be resized to 256x7680000 by the naive recipe; the crop alone is needed."""
    strip = noise(1, 30000)
    sizes: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def recorded(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        return resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", recorded)
    prepared = preprocess(strip)
    assert sizes and max(w * h for w, h in sizes) <= 224 * 224, sizes
    assert prepared.tensor.shape == (3, 224, 224)
    x0, y0, x1, y1 = prepared.crop_box
    assert (x0, x1) == (0, 1)
    assert abs((y0 + y1) / 2 - 15000) <= 1


def test_crop_is_the_image_the_model_sees(chelsea) -> None:
    prepared = preprocess(Image.fromarray(chelsea))
    assert prepared.crop.mode == "RGB"
    assert prepared.crop.size == (224, 224)
    from_tensor = ((prepared.tensor * STD + MEAN) * 255).round().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(from_tensor.astype(np.uint8), np.asarray(prepared.crop))


def test_crop_box_of_a_256_square() -> None:
    prepared = preprocess(noise(256, 256))
    assert tuple(prepared.crop_box) == (16, 16, 240, 240)
    assert tuple(prepared.size) == (256, 256)


@pytest.mark.parametrize(
    "size", [(300, 451), (451, 300), (7, 300), (300, 7), (1, 1), (255, 257), (600, 400), (999, 97)]
)
def test_crop_box_is_the_centred_224_of_256(size) -> None:
    """Shorter side scaled to 256, 224 of it kept, centred: within a pixel of the ideal box."""
    width, height = size
    prepared = preprocess(noise(width, height))
    assert tuple(prepared.size) == size
    half = 112 * min(width, height) / 256  # half the crop's side, in original pixels
    ideal = (width / 2 - half, height / 2 - half, width / 2 + half, height / 2 + half)
    box = prepared.crop_box
    assert all(isinstance(v, int) for v in box)
    assert 0 <= box[0] < box[2] <= width
    assert 0 <= box[1] < box[3] <= height
    for actual, expected in zip(box, ideal, strict=True):
        assert abs(actual - expected) <= 1, (box, ideal)


@pytest.mark.parametrize(
    "size", [(1, 10000), (10000, 1), (1, 299), (1, 30000), (2, 5000), (3, 100000), (5000, 3)]
)
def test_crop_box_of_extreme_strips_is_never_empty(size) -> None:
    """The crop spans 224/256 of the short side in both directions: under a pixel of a 1-pixel
    strip's length. The box is then the pixels that span touches, never an empty range."""
    width, height = size
    x0, y0, x1, y1 = preprocess(noise(width, height)).crop_box
    assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    half = 112 * min(width, height) / 256  # computed here from the recipe, not from images.py
    for low, high, centre in ((x0, x1, width / 2), (y0, y1, height / 2)):
        ideal_low, ideal_high = centre - half, centre + half
        if ideal_high - ideal_low < 1:
            assert (low, high) == (math.floor(ideal_low), math.ceil(ideal_high)), size
        else:
            assert abs(low - ideal_low) <= 1 and abs(high - ideal_high) <= 1, size


@pytest.mark.parametrize(
    ("size", "box"), [((1, 10000), (0, 4999, 1, 5001)), ((10000, 1), (4999, 0, 5001, 1))]
)
def test_the_model_sees_exactly_the_crop_box_of_a_strip(size, box) -> None:
    """Pixels beyond the box (and the bilinear filter's 1-pixel reach) do not change the model's
    input; pixels inside it do."""
    original = np.asarray(noise(*size, seed=3))
    prepared = preprocess(Image.fromarray(original))
    assert prepared.crop_box == box
    x0, y0, x1, y1 = box
    outside = (255 - original).astype(np.uint8)  # every pixel changed ...
    near = np.s_[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1]
    outside[near] = original[near]  # ... except the box and its margin
    assert torch.equal(preprocess(Image.fromarray(outside)).tensor, prepared.tensor)
    inside = original.copy()
    inside[y0:y1, x0:x1] = 255 - inside[y0:y1, x0:x1]
    assert not torch.equal(preprocess(Image.fromarray(inside)).tensor, prepared.tensor)


# --- decoding: formats and modes ---------------------------------------------------------------


def test_decode_png_is_lossless(chelsea, chelsea_png) -> None:
    decoded = decode(chelsea_png)
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded), chelsea)


def test_decode_jpeg_is_close_to_the_photo(chelsea, chelsea_jpeg) -> None:
    decoded = pixels(decode(chelsea_jpeg))
    assert decoded.shape == chelsea.shape
    assert np.abs(decoded - chelsea).mean() < 3  # JPEG quality 90


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True}), ("PNG", {"optimize": True})],
)
def test_lossless_formats_round_trip(encoder, fmt, params) -> None:
    original = noise(37, 23, seed=5)
    decoded = decode(encoder(original, fmt, **params))
    np.testing.assert_array_equal(pixels(decoded), pixels(original))


def test_progressive_jpeg(encoder, coffee) -> None:
    data = encoder(coffee, "JPEG", quality=90, progressive=True)
    assert Image.open(io.BytesIO(data)).info.get("progressive")  # the premise of this test
    decoded = pixels(decode(data))
    assert decoded.shape == coffee.shape
    assert np.abs(decoded - coffee).mean() < 3


@pytest.mark.parametrize(
    ("fmt", "params"), [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})]
)
def test_animation_gives_its_first_frame(encoder, fmt, params) -> None:
    frames = [
        Image.new("RGB", (8, 6), colour) for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]
    ]
    data = encoder(frames[0], fmt, save_all=True, append_images=frames[1:], **params)
    assert Image.open(io.BytesIO(data)).n_frames == 3  # the premise of this test
    decoded = decode(data)
    assert decoded.size == (8, 6)
    assert (pixels(decoded) == (255, 0, 0)).all()


def test_exif_orientation_is_applied(encoder) -> None:
    """Orientation 6: the stored picture must turn 90 degrees clockwise to stand upright."""
    stored = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    stored[:10, :20] = (255, 0, 0)  # red top-left quarter
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode(encoder(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert decoded.size == (20, 40)  # width and height swapped
    upright = pixels(decoded)
    # Turning clockwise takes the stored top-left corner to the top-right corner.
    assert np.abs(upright[3:7, 13:17] - (255, 0, 0)).max() < 40
    assert np.abs(upright[3:7, 3:7]).max() < 40
    assert np.abs(upright[33:37, 13:17]).max() < 40


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_keeps_the_picture(encoder) -> None:
    jpeg = encoder(Image.new("RGB", (30, 20), (0, 200, 0)), "JPEG", quality=95)
    payload = b"Exif\x00\x00MM\x00\x2a" + b"\xff" * 16  # a TIFF header pointing nowhere
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    decoded = decode(jpeg[:2] + app1 + jpeg[2:])
    assert decoded.size == (30, 20)
    assert np.abs(pixels(decoded) - (0, 200, 0)).max() < 8


def test_grayscale(encoder) -> None:
    gray = np.array([[0, 77], [200, 255]], dtype=np.uint8)
    decoded = pixels(decode(encoder(gray, "PNG")))
    np.testing.assert_array_equal(decoded, np.repeat(gray[..., None], 3, axis=2))


def test_bilevel(encoder) -> None:
    bits = Image.fromarray(np.array([[0, 255, 0], [255, 0, 255]], dtype=np.uint8)).convert("1")
    data = encoder(bits, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "1"
    expected = np.array([[0, 255, 0], [255, 0, 255]])
    np.testing.assert_array_equal(pixels(decode(data)), np.repeat(expected[..., None], 3, axis=2))


def test_rgba_is_composited_on_white(encoder) -> None:
    rgba = np.array(
        [[[0, 0, 0, 0], [10, 200, 30, 255]], [[0, 0, 0, 128], [255, 0, 0, 0]]], dtype=np.uint8
    )
    decoded = pixels(decode(encoder(rgba, "PNG")))
    assert decoded[0, 0].tolist() == [255, 255, 255]  # fully transparent black: white
    assert decoded[1, 1].tolist() == [255, 255, 255]  # fully transparent red: white
    assert decoded[0, 1].tolist() == [10, 200, 30]  # opaque: unchanged
    # Half-covered black over white: 255 * (1 - 128/255) = 127.
    assert np.abs(decoded[1, 0] - 127).max() <= 1


def test_grayscale_with_alpha(encoder) -> None:
    la = Image.fromarray(np.array([[[100, 0], [100, 255]]], dtype=np.uint8), "LA")
    decoded = pixels(decode(encoder(la, "PNG")))
    assert decoded[0, 0].tolist() == [255, 255, 255]
    assert decoded[0, 1].tolist() == [100, 100, 100]


def test_palette_with_transparency(encoder) -> None:
    palette = Image.new("P", (3, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # 0: red, 1: blue
    palette.putdata([0, 1, 0])
    data = encoder(palette, "PNG", transparency=0)  # red is the transparent index
    assert Image.open(io.BytesIO(data)).mode == "P"
    decoded = pixels(decode(data))
    assert decoded[0].tolist() == [[255, 255, 255], [0, 0, 255], [255, 255, 255]]


def test_gif_with_transparency(encoder) -> None:
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 255, 0, 0, 0, 0] + [0] * 762)  # 0: green, 1: black
    palette.putdata([0, 1])
    decoded = pixels(decode(encoder(palette, "GIF", transparency=1)))
    assert decoded[0].tolist() == [[0, 255, 0], [255, 255, 255]]


def test_rgb_png_with_colour_key_is_composited_on_white(encoder) -> None:
    """Like palette and grayscale PNGs, an RGB PNG's tRNS colour key marks transparent pixels."""
    rgb = np.array([[[0, 0, 0], [10, 20, 30]]], dtype=np.uint8)
    data = encoder(rgb, "PNG", transparency=(0, 0, 0))
    assert Image.open(io.BytesIO(data)).info.get("transparency") == (0, 0, 0)  # the premise
    decoded = pixels(decode(data))
    assert decoded[0].tolist() == [[255, 255, 255], [10, 20, 30]]


def test_cmyk_jpeg(encoder) -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # no cyan or black: red
    cmyk.paste((0, 0, 0, 0), (8, 0, 16, 16))  # no ink at all: white
    data = encoder(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = pixels(decode(data))
    assert np.abs(decoded[8, 2] - (255, 0, 0)).max() < 12
    assert np.abs(decoded[8, 13] - (255, 255, 255)).max() < 12


def test_16_bit_grayscale_is_scaled_not_clipped(encoder) -> None:
    values = np.array([[0, 30000], [65535, 12850]], dtype=np.uint16)
    data = encoder(values, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # the premise: a 16-bit image
    decoded = pixels(decode(data))[..., 0]
    expected = values / 257.0  # 65535 -> 255
    assert np.abs(decoded - expected).max() <= 0.5 + 1e-9
    assert decoded[0, 1] not in (0, 255)


def test_16_bit_gradient_is_monotone(encoder) -> None:
    ramp = np.linspace(0, 65535, 256 * 4).round().astype(np.uint16).reshape(4, 256)
    decoded = pixels(decode(encoder(ramp, "PNG")))[..., 0].ravel()
    assert decoded[0] == 0
    assert decoded[-1] == 255
    assert (np.diff(decoded) >= 0).all()


def test_dark_16_bit_grayscale_stays_dark(encoder) -> None:
    values = np.array([[0, 200], [255, 100]], dtype=np.uint16)  # all below 1/256 of full scale
    decoded = pixels(decode(encoder(values, "PNG")))[..., 0]
    assert np.abs(decoded - values / 257.0).max() <= 0.5 + 1e-9


def test_float_tiff_in_unit_range(encoder) -> None:
    values = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    data = encoder(Image.fromarray(values, "F"), "TIFF")
    decoded = pixels(decode(data))[..., 0]
    assert np.abs(decoded - values * 255).max() <= 0.5 + 1e-9


# --- decoding: errors --------------------------------------------------------------------------


def assert_refused(data: bytes, code: str, status: int, limits: ImageLimits = ImageLimits()):
    with pytest.raises(RequestError) as caught:
        decode(data, limits)
    assert caught.value.code == code
    assert caught.value.status == status
    assert caught.value.message
    return caught.value


@pytest.mark.parametrize("kind", ["empty", "random", "text", "truncated png", "truncated jpeg"])
def test_undecodable_data_is_invalid_image(kind, chelsea_png, chelsea_jpeg) -> None:
    data = {
        "empty": b"",
        "random": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "text": b"hello, this is not an image",
        "truncated png": chelsea_png[: len(chelsea_png) // 2],
        "truncated jpeg": chelsea_jpeg[: len(chelsea_jpeg) // 2],
    }[kind]
    assert_refused(data, "invalid_image", 400)


def test_corrupted_png_data_is_invalid_image(chelsea_png) -> None:
    corrupted = bytearray(chelsea_png)
    middle = len(corrupted) // 2
    corrupted[middle : middle + 64] = bytes(64)
    assert_refused(bytes(corrupted), "invalid_image", 400)


def test_size_limit_boundary(encoder) -> None:
    data = encoder(noise(10, 10), "PNG")
    limits = ImageLimits(max_pixels=100)
    assert decode(data, limits).size == (10, 10)
    error = assert_refused(encoder(noise(10, 11), "PNG"), "image_too_large", 413, limits)
    assert "110" in error.message


# The premise opens the bomb with Pillow's default guard, which warns about it.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_refused_before_decoding(monkeypatch) -> None:
    bomb = bilevel_png(12000, 12000)  # 144 megapixels in ~20 kB
    assert len(bomb) < 100_000
    assert Image.open(io.BytesIO(bomb)).size == (12000, 12000)  # the premise: a valid header

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    error = assert_refused(bomb, "image_too_large", 413)
    assert str(12000 * 12000) in error.message


def test_claimed_huge_size_is_refused(encoder) -> None:
    """A small PNG whose header claims 30000x30000 (over Pillow's own bomb limit too)."""
    forged = with_claimed_size(encoder(noise(4, 4), "PNG"), 30000, 30000)
    assert_refused(forged, "image_too_large", 413)


def test_payload_over_max_bytes(chelsea_png) -> None:
    size = len(chelsea_png)
    assert decode(chelsea_png, ImageLimits(max_bytes=size)).size == (451, 300)
    error = assert_refused(chelsea_png, "payload_too_large", 413, ImageLimits(max_bytes=size - 1))
    assert str(size) in error.message


class Decoding(Exception):
    """Raised instead of decoding pixels: the image got past every size check."""


def test_default_limits_admit_40_megapixels_and_refuse_more(encoder, monkeypatch) -> None:
    """The documented defaults (README, model-config.yaml): a header claiming exactly 40
    megapixels reaches the decoder; one more row is refused before it."""

    def decoding(self, *args, **kwargs):
        raise Decoding

    monkeypatch.setattr(ImageFile.ImageFile, "load", decoding)
    small = encoder(noise(4, 4), "PNG")
    with pytest.raises(Decoding):
        decode(with_claimed_size(small, 8000, 5000))
    error = assert_refused(with_claimed_size(small, 8000, 5001), "image_too_large", 413)
    assert str(8000 * 5001) in error.message


def test_default_limits_admit_8_mib_and_refuse_more(encoder) -> None:
    """A valid PNG padded after its end to exactly 8 MiB decodes; one byte more is refused."""
    small = encoder(noise(4, 4), "PNG")
    padded = small + bytes(8 * 2**20 - len(small))
    assert decode(padded).size == (4, 4)
    assert_refused(padded + b"\0", "payload_too_large", 413)
