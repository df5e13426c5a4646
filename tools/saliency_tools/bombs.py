"""Decompression bombs in every container the service accepts (and in ICNS, which it refuses).

Each builder returns a few kilobytes whose decoded picture would take gigabytes. They are built
byte by byte from the formats' specifications, with no image library, so that they do not depend
on the decoder under test. ``BOMBS`` maps a name to (bytes, the error code the service must
answer with, or None when the bomb sits in a frame the service never decodes).
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

from PIL import Image

from saliency_service.rendering import png_chunk

SIDE = 24_000  # 576 megapixels: 1.7 GB as RGB, far over the 40-megapixel limit


def _zeros_deflated(row_bytes: int, rows: int) -> bytes:
    """zlib data of ``rows`` x ``row_bytes`` zero bytes, in milliseconds: after a full flush
    deflate starts afresh, so one compressed block of rows can be repeated byte for byte; the
    Adler-32 of n zero bytes is (n mod 65521) << 16 | 1."""
    per_block = max(1, min(rows, (4 << 20) // row_bytes))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: header added below
    block = compressor.compress(bytes(row_bytes * per_block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    blocks, rest = divmod(rows, per_block)
    tail = compressor.compress(bytes(row_bytes * rest)) + compressor.flush()
    adler = ((row_bytes * rows) % 65521) << 16 | 1
    return b"\x78\xda" + block * blocks + tail + struct.pack(">I", adler)


@functools.cache
def png(width: int = SIDE, height: int = SIDE, *, frames: int = 0) -> bytes:
    """A valid all-black RGB PNG (~1000:1); ``frames`` > 0 makes it an APNG of that many frames."""
    idat = _zeros_deflated(3 * width + 1, height)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunks = [png_chunk(b"IHDR", header)]
    if frames:
        chunks.append(png_chunk(b"acTL", struct.pack(">II", frames, 0)))
    sequence = 0
    for frame in range(max(frames, 1)):
        if frames:
            control = struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0, 1, 10, 0, 0)
            chunks.append(png_chunk(b"fcTL", control))
            sequence += 1
        if frame == 0:
            chunks.append(png_chunk(b"IDAT", idat))
        else:
            chunks.append(png_chunk(b"fdAT", struct.pack(">I", sequence) + idat))
            sequence += 1
    chunks.append(png_chunk(b"IEND", b""))
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def ico_with_png(inner: bytes | None = None) -> bytes:
    """An ICO whose one entry says 256x256 (0 = 256) and holds a PNG of any size."""
    inner = png() if inner is None else inner
    return struct.pack("<HHHBBBBHHII", 0, 1, 1, 0, 0, 0, 0, 1, 32, len(inner), 22) + inner


def ico_with_dib(width: int = SIDE, height: int = SIDE) -> bytes:
    """An ICO whose entry is a BMP-style DIB claiming width x height, 8-bit RLE: a few bytes
    of 'end of bitmap' that the decoder would paint onto a width x height canvas."""
    palette = b"\0\0\0\0" * 256
    pixels = b"\x00\x01"  # RLE8: end of bitmap
    header = struct.pack("<IiiHHIIiiII", 40, width, 2 * height, 1, 8, 1, len(pixels), 0, 0, 256, 0)
    dib = header + palette + pixels
    return struct.pack("<HHHBBBBHHII", 0, 1, 1, 0, 0, 0, 0, 1, 8, len(dib), 22) + dib


def icns_with_png(inner: bytes | None = None) -> bytes:
    """An ICNS whose 'ic10' entry (1024x1024@2x, PNG) holds a PNG of any size."""
    inner = png() if inner is None else inner
    entry = b"ic10" + struct.pack(">I", 8 + len(inner)) + inner
    return b"icns" + struct.pack(">I", 8 + len(entry)) + entry


def gif_with_large_frame(width: int = 20_000, height: int = 20_000) -> bytes:
    """A GIF whose logical screen is 1x1 and whose first frame claims width x height: the
    decoder grows the canvas to the frame."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    lzw = b"\x02\x02\x4c\x01\x00"  # minimum code size 2, one tiny sub-block, terminator
    return screen + descriptor + lzw + b";"


def tiff(width: int, height: int, *, pages: list[tuple[int, int]] | None = None) -> bytes:
    """A little-endian TIFF of one or more pages, 8-bit gray, deflate-compressed zeros (each
    page one strip). ``pages`` lists (width, height) of every page; default one page."""
    pages = pages or [(width, height)]
    out = bytearray(b"II*\0" + struct.pack("<I", 0))
    previous_next = 4  # where the offset of the next IFD is written
    for page_width, page_height in pages:
        strip = _zeros_deflated(page_width, page_height)
        strip_offset = len(out)
        out += strip
        if len(out) % 2:
            out += b"\0"
        entries = [
            (256, 4, 1, page_width),  # ImageWidth
            (257, 4, 1, page_height),  # ImageLength
            (258, 3, 1, 8),  # BitsPerSample
            (259, 3, 1, 8),  # Compression: deflate
            (262, 3, 1, 1),  # Photometric: black is zero
            (273, 4, 1, strip_offset),  # StripOffsets
            (277, 3, 1, 1),  # SamplesPerPixel
            (278, 4, 1, page_height),  # RowsPerStrip
            (279, 4, 1, len(strip)),  # StripByteCounts
        ]
        ifd_offset = len(out)
        struct.pack_into("<I", out, previous_next, ifd_offset)
        out += struct.pack("<H", len(entries))
        for tag, kind, count, value in entries:
            packed = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
            out += struct.pack("<HHI", tag, kind, count) + packed
        previous_next = len(out)
        out += struct.pack("<I", 0)
    return bytes(out)


def tiff_with_huge_tiles(tile: int = 65_536 - 16) -> bytes:
    """A 16x16 deflate TIFF whose one tile is declared tile x tile pixels."""
    data = _zeros_deflated(64, 64)
    out = bytearray(b"II*\0" + struct.pack("<I", 8 + len(data)) + data)
    entries = [
        (256, 4, 1, 16),
        (257, 4, 1, 16),
        (258, 3, 1, 8),
        (259, 3, 1, 8),
        (262, 3, 1, 1),
        (277, 3, 1, 1),
        (322, 4, 1, tile),  # TileWidth
        (323, 4, 1, tile),  # TileLength
        (324, 4, 1, 8),  # TileOffsets
        (325, 4, 1, len(data)),  # TileByteCounts
    ]
    out += struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + packed
    out += struct.pack("<I", 0)
    return bytes(out)


def _sof_sized(jpeg: bytes, width: int, height: int, occurrence: int = 0) -> bytes:
    """A JPEG stream with the ``occurrence``-th SOF0/SOF2 frame header claiming another size."""
    at = -1
    for _ in range(occurrence + 1):
        at = min(
            i for i in (jpeg.find(b"\xff\xc0", at + 1), jpeg.find(b"\xff\xc2", at + 1)) if i >= 0
        )
    patched = bytearray(jpeg)
    struct.pack_into(">HH", patched, at + 5, height, width)
    return bytes(patched)


def jpeg(width: int = 60_000, height: int = 60_000) -> bytes:
    """A small real JPEG whose frame header claims width x height: the decoder would allocate
    the whole picture before noticing the data runs out."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "JPEG")
    return _sof_sized(buffer.getvalue(), width, height)


def mpo(bomb_frame: int) -> bytes:
    """A two-picture MPO (what stereo and many phone cameras write) with picture ``bomb_frame``
    claiming 60000x60000."""
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue")]
    frames[0].save(buffer, "MPO", save_all=True, append_images=frames[1:])
    return _sof_sized(buffer.getvalue(), 60_000, 60_000, occurrence=bomb_frame)


def webp_canvas(width: int, height: int) -> bytes:
    """A real animated WebP whose extended header (VP8X) claims a width x height canvas."""
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue")]
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"VP8X"
    data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def bmp_rle(width: int = SIDE, height: int = SIDE) -> bytes:
    """A BMP, 8-bit RLE, that ends its bitmap at once: a few bytes for a width x height canvas."""
    palette = b"\0\0\0\0" * 256
    pixels = b"\x00\x01"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 0, 0, 256, 0)
    return (
        b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + palette + pixels
    )


def bombs() -> dict[str, tuple[bytes, str | None]]:
    """name -> (data, expected error code; None: the bomb is in a frame that is never decoded,
    so the first frame is answered)."""
    small = png(16, 16)
    return {
        "png": (png(), "image_too_large"),
        "apng": (png(frames=2), "image_too_large"),
        "ico with png": (ico_with_png(), "image_too_large"),
        "ico with dib": (ico_with_dib(), "image_too_large"),
        "icns with png": (icns_with_png(), "invalid_image"),  # ICNS is not accepted at all
        "icns with small png": (icns_with_png(small), "invalid_image"),
        "gif frame over its screen": (gif_with_large_frame(), "image_too_large"),
        "tiff": (tiff(SIDE, SIDE), "image_too_large"),
        "tiff second page": (tiff(0, 0, pages=[(16, 16), (SIDE, SIDE)]), None),
        "tiff tiles": (tiff_with_huge_tiles(), "image_too_large"),
        "jpeg": (jpeg(), "image_too_large"),
        "mpo first picture": (mpo(0), "image_too_large"),
        "mpo second picture": (mpo(1), None),
        "webp canvas": (webp_canvas(7_000, 7_000), "image_too_large"),  # 49 M: 1-2x the limit
        "bmp rle": (bmp_rle(), "image_too_large"),
    }
