"""Saliency maps as 8-bit pictures: quantisation, colormaps, overlays, PNG."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from saliency_service import rendering
from saliency_service.rendering import (
    COLORMAPS,
    blend,
    colorize,
    display_levels,
    gray_png,
    png_base64,
    quantise,
    smooth,
)


@pytest.fixture(scope="module")
def maps() -> torch.Tensor:
    """Three non-negative (224, 224) maps of very different scales, the middle one all zero."""
    generator = torch.Generator().manual_seed(11)
    values = torch.rand(3, 224, 224, generator=generator) ** 3  # skewed like real saliency
    values[0] *= 3e-4
    values[1] = 0
    values[2] *= 7.5
    return values


def test_quantise_shapes_and_peaks(maps) -> None:
    pixels, peaks = quantise(maps)
    assert isinstance(pixels, np.ndarray)
    assert pixels.dtype == np.uint8
    assert pixels.shape == (3, 224, 224)
    assert len(peaks) == 3
    for n in range(3):
        assert peaks[n] == pytest.approx(float(maps[n].max()), rel=1e-6)
    assert pixels[0].max() == 255
    assert pixels[2].max() == 255


def test_quantise_round_trip_within_half_a_level(maps) -> None:
    """s = pixel / 255 * max recovers every value within max / 510 (rounding to nearest)."""
    pixels, peaks = quantise(maps)
    for n in (0, 2):
        original = maps[n].double().numpy()
        recovered = pixels[n] / 255.0 * peaks[n]
        assert np.abs(recovered - original).max() <= peaks[n] / 510 * (1 + 1e-4)


def test_quantise_is_round_255_s_over_max(maps) -> None:
    pixels, peaks = quantise(maps)
    for n in (0, 2):
        exact = 255.0 * maps[n].double().numpy() / peaks[n]
        expected = np.floor(exact + 0.5)  # round half up; exact halves are float32 coin flips
        near_half = np.abs(exact - np.floor(exact) - 0.5) < 1e-3
        assert (pixels[n] == expected)[~near_half].all()
        assert np.abs(pixels[n].astype(int) - expected)[near_half].max(initial=0) <= 1


def test_zero_map_stays_zero(maps) -> None:
    pixels, peaks = quantise(maps)
    assert peaks[1] == 0.0
    assert not pixels[1].any()
    only_zeros, zero_peaks = quantise(torch.zeros(2, 5, 7))
    assert only_zeros.shape == (2, 5, 7)
    assert not only_zeros.any()
    assert zero_peaks == [0.0, 0.0]


def test_quantise_accepts_maps_that_require_grad_and_float64(maps) -> None:
    pixels, peaks = quantise(maps[:1])
    tracked, tracked_peaks = quantise(maps[:1].clone().requires_grad_())
    doubled, doubled_peaks = quantise(maps[:1].double())
    np.testing.assert_array_equal(tracked, pixels)
    assert tracked_peaks == peaks
    assert np.abs(doubled.astype(int) - pixels).max() <= 1
    assert doubled_peaks[0] == pytest.approx(peaks[0], rel=1e-6)


def test_quantise_is_per_map(maps) -> None:
    """Each map is scaled by its own max: a map alone quantises as inside the batch."""
    together, _ = quantise(maps)
    alone, _ = quantise(maps[2:3])
    np.testing.assert_array_equal(together[2], alone[0])


# --- colormaps ---------------------------------------------------------------------------------


def test_hot_endpoints_and_monotone_channels() -> None:
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    colors = colorize(levels, "hot").reshape(256, 3).astype(int)
    assert colors.shape == (256, 3)
    assert colors[0].tolist() == [0, 0, 0]
    assert colors[255].tolist() == [255, 255, 255]
    assert (np.diff(colors, axis=0) >= 0).all()
    # black -> red -> yellow -> white: red leads green, green leads blue.
    assert (colors[:, 0] >= colors[:, 1]).all() and (colors[:, 1] >= colors[:, 2]).all()
    assert colors[128].tolist()[0] == 255 and colors[128].tolist()[2] == 0  # past red, not blue


def test_gray_is_the_identity() -> None:
    levels = np.array([[0, 1, 127], [128, 254, 255]], dtype=np.uint8)
    colors = colorize(levels, "gray")
    assert colors.dtype == np.uint8
    assert colors.shape == (2, 3, 3)
    np.testing.assert_array_equal(colors, np.repeat(levels[..., None], 3, axis=2))


def test_blend_is_the_weighted_mean() -> None:
    crop = Image.new("RGB", (4, 3), (100, 100, 100))
    colored = np.zeros((3, 4, 3), dtype=np.uint8)
    colored[...] = (200, 0, 50)
    mixed = blend(crop, colored, alpha=0.5)
    assert mixed.dtype == np.uint8
    assert mixed.shape == (3, 4, 3)
    assert (mixed == (150, 50, 75)).all()
    np.testing.assert_array_equal(blend(crop, colored, alpha=0.0), np.asarray(crop))
    np.testing.assert_array_equal(blend(crop, colored, alpha=1.0), colored)


def test_the_overlay_opacity_follows_the_map() -> None:
    """Where the map is 0 the photo shows unchanged; at its top, ``alpha`` of the colour."""
    crop = Image.new("RGB", (3, 1), (100, 100, 100))
    colored = np.full((1, 3, 3), 200, dtype=np.uint8)
    levels = np.array([[0, 51, 255]], dtype=np.uint8)
    mixed = blend(crop, colored, levels, alpha=0.5)
    assert mixed[0, :, 0].tolist() == [100, 110, 150]  # 100 + 100 * 0.5 * (0, 0.2, 1)


def test_display_levels_clip_at_the_percentile_and_keep_the_order() -> None:
    generator = torch.Generator().manual_seed(3)
    maps = torch.rand(2, 20, 20, generator=generator, dtype=torch.float64) ** 4
    levels = display_levels(maps, [90.0, 100.0])
    top = float(torch.quantile(maps[0].flatten(), 0.9))
    expected = np.round(np.clip(maps[0].numpy() / top, 0, 1) * 255)
    assert np.abs(levels[0].astype(int) - expected).max() <= 1
    assert (levels[0] == 255).mean() == pytest.approx(0.1, abs=0.01)  # the top 10% saturate
    assert (levels[1] == 255).sum() == 1  # 100: only the maximum
    order = np.argsort(maps[0].numpy().ravel(), kind="stable")
    assert (np.diff(levels[0].ravel()[order].astype(int)) >= 0).all()


def test_display_levels_of_an_all_zero_map_are_zero() -> None:
    assert display_levels(torch.zeros(1, 4, 4), [99.0]).max() == 0
    sparse = torch.zeros(1, 10, 10)
    sparse[0, 0, 0] = 2.0  # the 99th percentile is 0: the maximum sets the scale instead
    assert display_levels(sparse, [99.0])[0, 0, 0] == 255


@pytest.mark.parametrize("name", ["inferno", "viridis"])
def test_perceptual_colormaps_brighten_steadily(name: str) -> None:
    """Their point: lightness rises monotonically from dark to bright (Rec. 709 luma here)."""
    lut = COLORMAPS[name].astype(float)
    luma = lut @ np.array([0.2126, 0.7152, 0.0722])
    assert (np.diff(luma) > -0.5).all()  # rounding to 8 bits only
    assert luma[0] < 40 and luma[-1] > 200


# --- PNG -------------------------------------------------------------------------------------


def decode_png(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded, validate=True)))


def test_grayscale_png_round_trip(maps) -> None:
    pixels, _ = quantise(maps)
    encoded = png_base64(pixels[2])
    assert isinstance(encoded, str)
    image = decode_png(encoded)
    assert image.format == "PNG"
    assert image.mode == "L"
    assert image.size == (224, 224)
    np.testing.assert_array_equal(np.asarray(image), pixels[2])


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (224, 224), (7, 300)])
def test_grayscale_png_is_exact_for_any_size(shape) -> None:
    """Every value 0..255, odd sizes: Pillow's own PNG reader gets the array back unchanged."""
    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    pixels.flat[: min(256, pixels.size)] = np.arange(min(256, pixels.size))
    image = decode_png(png_base64(pixels))
    image.load()  # reads and checks the whole stream: a bad CRC or length raises here
    assert image.mode == "L"
    assert image.size == (shape[1], shape[0])
    np.testing.assert_array_equal(np.asarray(image), pixels)


def test_grayscale_png_compresses_skewed_maps(maps) -> None:
    pixels, _ = quantise(maps)
    for map_pixels in pixels:
        assert len(base64.b64decode(png_base64(map_pixels))) < map_pixels.size


def row_filters(encoded: bytes) -> set[int]:
    """The PNG filter types of an 8-bit grayscale PNG's rows, read from its IDAT chunks."""
    width, height = struct.unpack(">II", encoded[16:24])
    position, data = 8, b""
    while position < len(encoded):
        (length,) = struct.unpack(">I", encoded[position : position + 4])
        if encoded[position + 4 : position + 8] == b"IDAT":
            data += encoded[position + 8 : position + 8 + length]
        position += 12 + length
    raw = np.frombuffer(zlib.decompress(data), dtype=np.uint8).reshape(height, width + 1)
    return set(raw[:, 0].tolist())


def cam_like(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A uint8 map the way Grad-CAM's are made: a random 13 x 13 map upsampled bilinearly."""
    coarse = torch.rand(1, 1, 13, 13, generator=torch.Generator().manual_seed(seed))
    fine = torch.nn.functional.interpolate(coarse, size=shape, mode="bilinear")[0]
    pixels, _ = quantise(fine)
    return pixels[0]


def wrapping_ramp(shape: tuple[int, int]) -> np.ndarray:
    """Rows climbing 3 levels a pixel and wrapping from 255 to 0: residuals modulo 256."""
    height, width = shape
    return ((np.arange(width)[None] * 3 + np.arange(height)[:, None]) % 256).astype(np.uint8)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        *[(cam_like, shape) for shape in [(224, 224), (7, 300), (300, 160), (1, 1), (5, 1)]],
        *[(wrapping_ramp, shape) for shape in [(224, 224), (7, 300), (300, 40), (5, 1)]],
    ],
)
def test_smooth_maps_take_sub_filtered_rows_and_decode_exactly(make, shape) -> None:
    pixels = make(shape, 3) if make is cam_like else make(shape)
    encoded = gray_png(pixels)
    assert row_filters(encoded) == {1}  # "Sub"
    image = decode_png(base64.b64encode(encoded).decode())
    image.load()
    assert image.mode == "L" and image.size == (shape[1], shape[0])
    np.testing.assert_array_equal(np.asarray(image), pixels)


def test_noise_like_maps_keep_unfiltered_rows(maps) -> None:
    pixels, _ = quantise(maps)
    rng = np.random.default_rng(5)
    for noisy in [pixels[0], pixels[1], pixels[2], rng.integers(0, 256, (224, 224), np.uint8)]:
        encoded = gray_png(noisy)
        assert row_filters(encoded) == {0}  # "None"
        np.testing.assert_array_equal(np.asarray(decode_png(png_base64(noisy))), noisy)


def test_smooth_maps_shrink_and_noise_like_ones_do_not_grow(maps, monkeypatch) -> None:
    """Sub rows at least halve a Grad-CAM-like map (0.29-0.32 x for the real ones of 10 photos), and
    the choice never costs a noise-like map a byte."""
    smooth_maps = [cam_like((224, 224), seed) for seed in range(4)]
    noisy_maps = list(quantise(maps)[0])
    chosen = [len(gray_png(p)) for p in smooth_maps + noisy_maps]
    monkeypatch.setattr(rendering, "smooth", lambda *_: False)
    unfiltered = [len(gray_png(p)) for p in smooth_maps + noisy_maps]
    for n in range(len(smooth_maps)):
        assert chosen[n] <= 0.5 * unfiltered[n], (chosen[n], unfiltered[n])
    assert chosen[len(smooth_maps) :] == unfiltered[len(smooth_maps) :]


def test_smoothness_is_relative_to_the_pixel_sum() -> None:
    assert not smooth(np.zeros((4, 4), np.uint8))  # nothing to compare with: unfiltered
    assert smooth(np.full((4, 4), 7, np.uint8))
    step = np.zeros((1, 101), np.uint8)
    step[0, 1:] = 100  # one residual of 100 against 100 x 100: 0.01 of the sum
    assert smooth(step)
    dark = np.zeros((1, 10), np.uint8)
    dark[0, 5] = 10  # residuals 10 and -10 (246 as a byte) against 10: twice the sum
    assert not smooth(dark)


def test_rgb_png_round_trip(maps) -> None:
    pixels, _ = quantise(maps)
    colored = colorize(pixels[0], "hot")
    image = decode_png(png_base64(colored))
    assert image.mode == "RGB"
    assert image.size == (224, 224)
    np.testing.assert_array_equal(np.asarray(image), colored)
