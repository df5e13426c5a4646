"""Image decoding and the preprocessing the model's weights expect.

Decoding turns whatever a client sends into an upright 8-bit RGB picture, refusing oversized or
undecodable data with a ``RequestError`` before any expensive work. Preprocessing is torchvision's
classification recipe, parameterised by a ``Preprocessing``: shorter side to ``resize``
(bilinear or bicubic, antialiased), centre crop ``crop``, scale to [0, 1], normalise with ``mean``
and ``std``. The default is SqueezeNet 1.1's ImageNet recipe: 256, 224, ImageNet's statistics.
"""

from __future__ import annotations

import io
import math
import re
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from . import errors

RESIZE_TO = 256
CROP_TO = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white

# The formats a client may send, as Pillow names them (README's list); everything else is refused
# before any parser of it runs. JPEG covers MPO (multi-picture JPEG from cameras), which Pillow's
# JPEG opener hands out itself. ICO is accepted because Pillow's guard checks its nested PNG or
# BMP before decoding it; ICNS (which nests JPEG 2000 too) and Pillow's rarer formats are not.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "ICO")
ACCEPTED_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF or ICO"


INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@dataclass(frozen=True)
class Preprocessing:
    """torchvision's ``Resize(resize) + CenterCrop(crop) + Normalize(mean, std)`` for one model.

    ``resize`` is the shorter side after resizing, ``crop`` the side of the square centre crop
    (at most ``resize``: torchvision would pad a larger crop); ``mean`` and ``std`` one value
    per RGB channel, in [0, 1] units.
    """

    resize: int = RESIZE_TO
    crop: int = CROP_TO
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        # Lists from JSON become tuples: the dataclass stays hashable and compares equal.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not 1 <= self.crop <= self.resize:
            raise ValueError(f"crop must be 1..resize ({self.resize}), got {self.crop}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need one value per RGB channel (3 each)")
        if not all(math.isfinite(v) for v in self.mean) or not all(
            math.isfinite(v) and v > 0 for v in self.std
        ):
            raise ValueError("mean must be finite and std finite and positive")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}")

    def to_json(self) -> dict:
        return {
            "resize": self.resize,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }

    def normalised_black(self) -> torch.Tensor:
        """A black image in the model's input space: ``(0 - mean) / std`` per channel, (3, 1, 1)."""
        mean, std = torch.tensor(self.mean), torch.tensor(self.std)
        return (-mean / std).view(-1, 1, 1)


SQUEEZENET_PREPROCESSING = Preprocessing()


@dataclass(frozen=True)
class ImageLimits:
    """What a single image may cost; both limits are checked before any pixel is decoded."""

    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 40_000_000


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the model, and what is needed to describe the map afterwards."""

    tensor: torch.Tensor  # (3, crop, crop) float32, normalised
    crop: Image.Image  # the crop x crop RGB picture the model saw, for overlays
    crop_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the oriented original
    size: tuple[int, int]  # width, height of the oriented original


def decode(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Decode image bytes to an upright RGB image (EXIF orientation applied, first frame).

    Every size that decides an allocation is checked against ``limits.max_pixels`` before any
    pixel is decoded: the header's, those of images nested in containers (Pillow's own guard,
    set to our limit for the call), a WebP canvas and TIFF tiles (our checks, where Pillow has
    none or a looser one). Only the first frame or page is decoded; later ones are never read.
    """
    if len(data) > limits.max_bytes:
        raise errors.payload_too_large(len(data), limits.max_bytes)
    with _PillowPixelLimit(limits.max_pixels):
        try:
            _check_webp_canvas(data, limits)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large(exc, limits) from None
        except Image.UnidentifiedImageError:
            raise errors.invalid_image(
                f"not an image in an accepted format ({ACCEPTED_NAMES})"
            ) from None
        except (OSError, SyntaxError, ValueError, TypeError, EOFError) as exc:
            raise errors.invalid_image(_describe(exc)) from None
        width, height = image.size
        if width * height > limits.max_pixels:
            raise errors.image_too_large(width * height, limits.max_pixels)
        if width < 1 or height < 1:
            raise errors.invalid_image(f"it has no pixels ({width}x{height})")
        _check_tiff_tiles(image, limits)
        try:
            image.load()
            image = _orient(image)
            return to_rgb(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large(exc, limits) from None
        except (
            OSError,
            SyntaxError,
            ValueError,
            TypeError,
            EOFError,
            IndexError,
            KeyError,
            ZeroDivisionError,
            MemoryError,
        ) as exc:
            raise errors.invalid_image(_describe(exc)) from None


# Image.MAX_IMAGE_PIXELS and the warning filters are process-wide: one decode at a time sets them.
_PILLOW_SETTINGS = threading.Lock()


class _PillowPixelLimit:
    """Pillow's decompression-bomb guard at exactly ``max_pixels``, as an exception.

    Pillow only warns between its limit and twice its limit: that warning is made an error.
    Pillow checks nested images where it meets them (an ICO's PNG or DIB, a GIF frame larger than
    its screen, an MPO picture), which no header check of ours could do for every container.
    Other warnings (odd but decodable files) are silenced. A class, not @contextmanager: a
    generator would set ``__traceback__`` on our frozen RequestError on its way out, which fails.
    """

    def __init__(self, max_pixels: int) -> None:
        self.max_pixels = max_pixels
        self.previous: int | None = None
        self.warnings = warnings.catch_warnings()

    def __enter__(self) -> None:
        _PILLOW_SETTINGS.acquire()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        self.previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, self.max_pixels

    def __exit__(self, *exc_info: object) -> None:
        Image.MAX_IMAGE_PIXELS = self.previous
        self.warnings.__exit__(*exc_info)
        _PILLOW_SETTINGS.release()


def _too_large(exc: Exception, limits: ImageLimits) -> errors.RequestError:
    found = re.search(r"\((\d+) pixels\)", str(exc))  # "Image size (N pixels) exceeds ..."
    pixels = int(found.group(1)) if found else limits.max_pixels + 1
    return errors.image_too_large(pixels, limits.max_pixels)


def _check_webp_canvas(data: bytes, limits: ImageLimits) -> None:
    """WebP's decoder allocates its canvas when Pillow opens the file, and Pillow checks it
    there only against twice its limit: read the canvas size from the header first."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return
    chunk, size = data[12:16], None
    if chunk == b"VP8X":  # extended: 24-bit canvas width - 1, height - 1
        size = int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    elif chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit width - 1, height - 1
        bits = int.from_bytes(data[21:25], "little")
        size = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: 14-bit width, height
        size = (
            int.from_bytes(data[26:28], "little") & 0x3FFF,
            int.from_bytes(data[28:30], "little") & 0x3FFF,
        )
    if size and size[0] * size[1] > limits.max_pixels:
        raise errors.image_too_large(size[0] * size[1], limits.max_pixels)


_TILE_WIDTH, _TILE_LENGTH = 322, 323


def _check_tiff_tiles(image: Image.Image, limits: ImageLimits) -> None:
    """libtiff allocates a whole tile whatever the image's size: a tiny image may declare
    tiles of 65535 x 65535 pixels."""
    tags = getattr(image, "tag_v2", None)
    if image.format != "TIFF" or tags is None:
        return
    width, length = tags.get(_TILE_WIDTH), tags.get(_TILE_LENGTH)
    if isinstance(width, int) and isinstance(length, int) and width * length > limits.max_pixels:
        raise errors.image_too_large(width * length, limits.max_pixels)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


def _orient(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # a broken EXIF block must not cost the picture: keep it as stored
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode: high bit depths scaled (not clipped), alpha composited."""
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    return image.convert("RGB")


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale single-channel integer or float pixels onto 0-255 by the mode's nominal range.

    16-bit modes span 0-65535 whatever the brightest pixel (a dark 16-bit image stays dark);
    32-bit integer images are read as 16-bit data when they exceed 255; float images as [0, 1]
    when they fit in it.
    """
    # Row blocks of ~1M pixels: float64 copies of a whole 40-megapixel image would take ~1.5 GB.
    rows = max(1, (1 << 20) // max(1, values.shape[-1]))
    blocks = [slice(top, top + rows) for top in range(0, values.shape[0], rows)]

    def finite(block: slice) -> np.ndarray:
        return np.nan_to_num(values[block].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)

    peak = max((float(finite(block).max()) for block in blocks), default=0.0)
    if mode.startswith("I;16") or (mode == "I" and peak > 255.0):
        scale = 255.0 / 65535.0
    elif mode == "F" and peak <= 1.0:
        scale = 255.0
    else:
        scale = 1.0
    pixels = np.empty(values.shape, dtype=np.uint8)
    for block in blocks:
        pixels[block] = np.clip(finite(block) * scale, 0, 255).round()
    return pixels


# Beyond this many resized pixels (a 1x30000 strip would become 256x7680000) only the crop's
# source region is resampled; below it the exact resize-then-crop of torchvision is used.
MAX_RESIZED_PIXELS = 4_000_000


@dataclass(frozen=True)
class CropGeometry:
    """torchvision's Resize(resize) + CenterCrop(crop) for one image size."""

    resized: tuple[int, int]  # width, height after Resize(resize)
    offset: tuple[int, int]  # left, top of the crop in the resized image
    source_box: tuple[float, float, float, float]  # the crop in original pixels

    @property
    def crop_box(self) -> tuple[int, int, int, int]:
        """The crop in whole original pixels: edges rounded to the nearest pixel boundary, except
        where the crop spans under a pixel of the original (the short side of an extreme strip
        would round to an empty box): there, the pixels the crop touches."""
        x0, y0, x1, y1 = self.source_box
        (left, right), (top, bottom) = _pixel_span(x0, x1), _pixel_span(y0, y1)
        return left, top, right, bottom


def _pixel_span(start: float, end: float) -> tuple[int, int]:
    low, high = round(start), round(end)
    if high > low:
        return low, high
    return math.floor(start), max(math.ceil(end), math.floor(start) + 1)


def crop_geometry(
    width: int, height: int, preprocessing: Preprocessing = SQUEEZENET_PREPROCESSING
) -> CropGeometry:
    resize, crop = preprocessing.resize, preprocessing.crop
    short, long = sorted((width, height))
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    top = round((new_h - crop) / 2.0)
    left = round((new_w - crop) / 2.0)
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
    return CropGeometry(resized=(new_w, new_h), offset=(left, top), source_box=box)


def preprocess(
    image: Image.Image, preprocessing: Preprocessing = SQUEEZENET_PREPROCESSING
) -> PreparedImage:
    """Resize the shorter side to ``resize`` (antialiased), centre-crop ``crop``, normalise."""
    geometry = crop_geometry(*image.size, preprocessing)
    (new_w, new_h), (left, top) = geometry.resized, geometry.offset
    side, resample = preprocessing.crop, INTERPOLATIONS[preprocessing.interpolation]
    if new_w * new_h <= MAX_RESIZED_PIXELS:
        resized = image.resize((new_w, new_h), resample)
        crop = resized.crop((left, top, left + side, top + side))
    else:  # same sampling grid, within one 8-bit level
        crop = image.resize((side, side), resample, box=geometry.source_box)
    pixels = torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1)
    mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(preprocessing.std).view(3, 1, 1)
    tensor = (pixels.float().div_(255.0) - mean) / std
    return PreparedImage(tensor=tensor, crop=crop, crop_box=geometry.crop_box, size=image.size)
