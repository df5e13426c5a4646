"""Saliency maps as pictures: 8-bit grayscale PNG (data), colour heatmaps and overlays (for eyes).

The grayscale PNG is the map itself, ``round(255 * s / max)``: exact, never clipped. Heatmaps and
overlays are for people, and one hot pixel would set their whole scale: they clip the map at a
high percentile first (``clip``, default the 99th, as PAIR's saliency library; Captum's
``visualize_image_attr`` clips the top 2% of attribution mass), and the overlay's opacity
follows the map, so unimportant regions show the photo rather than a darkened blend.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import torch
from PIL import Image

from .colormaps import INFERNO, VIRIDIS

# Colour pictures (heatmap, overlay) go through Pillow: level 1 is several times faster than 6 for
# ~10% more bytes. The grayscale map, in every answer, has its own faster writer below.
PNG_COMPRESS_LEVEL = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OVERLAY_ALPHA = 0.7  # the overlay's opacity where the clipped map is at its top; 0 where it is 0
DEFAULT_CLIP = 99.0  # percentile of the map that the colour pictures show as full intensity


def quantise(maps: torch.Tensor) -> tuple[np.ndarray, list[float]]:
    """Per-map 8-bit quantisation ``round(255 * s / max)``; an all-zero map stays zero.

    Returns the ``(N, H, W)`` uint8 maps and each map's max, so a client can recover
    ``s = pixel / 255 * max``.
    """
    maps = maps.detach().float()
    peaks = maps.flatten(1).amax(dim=1)
    scale = torch.where(peaks > 0, 255.0 / peaks, torch.zeros_like(peaks))
    pixels = torch.round(maps * scale[:, None, None]).clamp_(0, 255).to(torch.uint8)
    return pixels.cpu().numpy(), peaks.cpu().tolist()


def _hot_lut() -> np.ndarray:
    """Matplotlib's "hot": black -> red -> yellow -> white, as in the saliency papers' figures."""
    x = np.linspace(0.0, 1.0, 256)
    red = np.clip(x / 0.365079, 0, 1)
    green = np.clip((x - 0.365079) / (0.746032 - 0.365079), 0, 1)
    blue = np.clip((x - 0.746032) / (1 - 0.746032), 0, 1)
    return np.round(np.stack([red, green, blue], axis=1) * 255).astype(np.uint8)


COLORMAPS = {
    "gray": np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1),
    "hot": _hot_lut(),
    "inferno": INFERNO,
    "viridis": VIRIDIS,
}


def display_levels(maps: torch.Tensor, percentiles: list[float]) -> np.ndarray:
    """8-bit levels for colour pictures: each map divided by its own ``percentiles[n]``-th
    percentile and clipped to [0, 1]; 100 (or a percentile of 0) divides by the maximum."""
    maps = maps.detach().float()
    flat = maps.flatten(1)
    levels = torch.tensor(percentiles, dtype=torch.float32, device=maps.device) / 100
    tops = torch.stack([torch.quantile(flat[n], levels[n]) for n in range(len(flat))])
    tops = torch.where(tops > 0, tops, flat.amax(dim=1))
    scale = torch.where(tops > 0, 1.0 / tops, torch.zeros_like(tops))
    scaled = (maps * scale[:, None, None]).clamp_(0, 1).mul_(255).round_()
    return scaled.to(torch.uint8).cpu().numpy()


def colorize(pixels: np.ndarray, colormap: str) -> np.ndarray:
    """``(H, W)`` uint8 -> ``(H, W, 3)`` uint8 through the named colormap."""
    return COLORMAPS[colormap][pixels]


def blend(
    crop: Image.Image,
    colored: np.ndarray,
    levels: np.ndarray | None = None,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """The heatmap laid over the image crop the model saw, ``alpha * levels / 255`` opaque per
    pixel (``levels``: the map's display levels), or ``alpha`` everywhere without levels."""
    base = np.asarray(crop.convert("RGB"), dtype=np.float32)
    opacity = np.float32(alpha)
    if levels is not None:
        opacity = (alpha * levels.astype(np.float32) / 255)[..., None]
    mixed = (1 - opacity) * base + opacity * colored.astype(np.float32)
    return np.round(mixed).astype(np.uint8)


def gray_png(pixels: np.ndarray) -> bytes:
    """A uint8 ``(H, W)`` array as an 8-bit grayscale PNG, its rows filtered as suits the map.

    Gradient maps are noise-like: PNG's row filters cost more time than they save bytes, and
    unfiltered rows with zlib's run-length matching encode ~4x faster than Pillow at level 1 and
    12% smaller (scripts/bench.py, PNG table). Smooth maps (Grad-CAM's, upsampled from 13 x 13)
    are the opposite: each pixel is nearly its left neighbour, so filter "Sub" leaves small
    residuals that deflate at level 1 to a third of the unfiltered size in the same time.
    ``smooth`` decides; the pixels a reader decodes are the same either way.
    """
    height, width = pixels.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    # Filter "Sub": each byte minus its left neighbour, modulo 256 (PNG spec, section 9.2).
    residuals = pixels[:, 1:] - pixels[:, :-1]
    if smooth(pixels, residuals):
        rows[:, 0], rows[:, 1], rows[:, 2:] = 1, pixels[:, 0], residuals
        compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY)
    else:
        rows[:, 0], rows[:, 1:] = 0, pixels  # filter "None"
        compressor = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = compressor.compress(rows.tobytes()) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


# Sub-filtered rows are chosen when their residuals sum to at most this fraction of the pixels'
# sum. Measured on the maps of 10 photos (docs/benchmarks.md): Grad-CAM 0.016-0.027, SmoothGrad
# 0.27-0.28, vanilla 0.67-0.75, Integrated Gradients 0.91-0.94; below 0.1 (blurred gradient maps
# included) Sub at level 1 gave 0.3-0.72 x the unfiltered bytes at 0.9-1.5 x the time, above
# 0.25 it gave 0.96-1.3 x the bytes at ~2 x the time.
SMOOTH_RESIDUALS = 0.1


def smooth(pixels: np.ndarray, residuals: np.ndarray | None = None) -> bool:
    """Whether a uint8 map is smooth along its rows: the summed magnitudes of its "Sub"
    residuals (as signed bytes) are at most ``SMOOTH_RESIDUALS`` of the summed pixels."""
    if residuals is None:
        residuals = pixels[:, 1:] - pixels[:, :-1]
    magnitudes = np.minimum(residuals, -residuals)  # |r| of r as a signed byte, for uint8 r
    total = int(pixels.sum(dtype=np.int64))
    return total > 0 and int(magnitudes.sum(dtype=np.int64)) <= SMOOTH_RESIDUALS * total


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC-32 of type and payload."""
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png_base64(array: np.ndarray) -> str:
    """A uint8 ``(H, W)`` (grayscale) or ``(H, W, 3)`` (RGB) array as base64 PNG."""
    if array.ndim == 2:
        encoded = gray_png(array)
    else:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        encoded = buffer.getvalue()
    return base64.b64encode(encoded).decode("ascii")
