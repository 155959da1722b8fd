"""An image's size, read from its header bytes before anything decodes it.

A 0.4 MB greyscale PNG can declare 20000x20000 pixels: TensorFlow would decode
it to 400 MB, and the pipeline's float32 conversion makes that about 5 GB
before the image is resized to 64x64. So the pipeline reads each image's
dimensions here and skips (and counts) the ones above a pixel limit, as it
skips corrupt files, before they reach the decoder.

Plain Python on the bytes already in memory, rather than Pillow's lazy
`Image.open`, for three reasons:
- It reads the fields the decoders that run next size their buffers from:
  for a GIF, TensorFlow's decoder (giflib) holds every frame, so the cost is
  the frames' pixels, which Pillow's `size` (the first frame's canvas) hides;
  for a BMP, the signed 32-bit fields TensorFlow reads.
- It parses only what it needs, with every offset bounds-checked, and never
  hands hostile bytes to another parser: Pillow's `open` tries every plugin
  that claims the bytes, in C and Python, with its own history of CVEs.
- It costs microseconds in the one Python thread that feeds tf.data.
tests/test_image_limits.py checks it against Pillow on every format and mode.

The sizes are what the headers claim; a file whose header cannot be read to
the end is refused, since no decoder could read it either.
"""

from __future__ import annotations

from dataclasses import dataclass


class UnreadableHeader(ValueError):
    """The bytes start like an image of some format, but its header is cut short or malformed."""


@dataclass(frozen=True)
class ImageHeader:
    format: str  # "png", "jpeg", "gif", "bmp" or "webp"
    width: int
    height: int
    frames: int = 1
    # What decoding costs, in pixels: width x height, and for an animation every frame's pixels.
    pixels: int = 0

    def describe(self) -> str:
        frames = f" x {self.frames} frames" if self.frames > 1 else ""
        return f"{self.width}x{self.height} pixels{frames}"


def read_header(data: bytes, image_format: str) -> ImageHeader:
    """The header of an image whose format (decode.image_format) is known; UnreadableHeader if malformed."""
    reader = _READERS[image_format]
    try:
        header = reader(data)
    except IndexError:
        raise UnreadableHeader(f"{image_format.upper()} header is cut short") from None
    if header.width <= 0 or header.height <= 0:
        raise UnreadableHeader(f"{image_format.upper()} header declares {header.width}x{header.height} pixels")
    return header


def _uint(data: bytes, start: int, size: int, order: str = "big") -> int:
    if start < 0 or start + size > len(data):
        raise IndexError(start)
    return int.from_bytes(data[start:start + size], order)


def _png(data: bytes) -> ImageHeader:
    # The IHDR chunk must come first: length, "IHDR", width, height (big-endian).
    if data[12:16] != b"IHDR":
        raise UnreadableHeader("PNG does not start with its IHDR chunk")
    width, height = _uint(data, 16, 4), _uint(data, 20, 4)
    # An APNG's extra frames are ignored by TensorFlow's PNG decoder: only the default image counts.
    return ImageHeader("png", width, height, 1, width * height)


# Start-of-frame markers (SOF0-SOF15) except DHT (C4), JPG (C8) and DAC (CC), which share the range.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg(data: bytes) -> ImageHeader:
    # Segments follow the SOI marker; the first frame header (SOFn), which must come before the
    # first scan, holds the size. A second SOF is an error to libjpeg, so the first one decides.
    position = 2
    while True:
        if data[position] != 0xFF:
            raise UnreadableHeader("JPEG segment does not start with a marker")
        while data[position] == 0xFF:  # fill bytes
            position += 1
        marker = data[position]
        position += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan, before any frame header
            raise UnreadableHeader("JPEG has no frame header before its image data")
        length = _uint(data, position, 2)
        if length < 2:
            raise UnreadableHeader("JPEG segment length is invalid")
        if marker in _JPEG_FRAME_MARKERS:
            height, width = _uint(data, position + 3, 2), _uint(data, position + 5, 2)
            return ImageHeader("jpeg", width, height, 1, width * height)
        position += length


def _gif(data: bytes) -> ImageHeader:
    width, height = _uint(data, 6, 2, "little"), _uint(data, 8, 2, "little")
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # after the global colour table
    canvas = width * height
    frames = 0
    pixels = 0
    # Walk the blocks: giflib reads (and allocates) every frame, whatever TensorFlow keeps of them.
    while position < len(data):
        kind = data[position]
        if kind == 0x3B:  # trailer
            break
        if kind == 0x21:  # extension: label, then sub-blocks
            position = _skip_sub_blocks(data, position + 2)
        elif kind == 0x2C:  # image descriptor: left, top, width, height, flags
            frame_width, frame_height = _uint(data, position + 5, 2, "little"), _uint(data, position + 7, 2, "little")
            frame_flags = data[position + 9]
            position += 10 + (3 << ((frame_flags & 7) + 1) if frame_flags & 0x80 else 0)
            position = _skip_sub_blocks(data, position + 1)  # after the LZW code size
            frames += 1
            pixels += max(canvas, frame_width * frame_height)
        else:
            raise UnreadableHeader(f"GIF has an unknown block type 0x{kind:02x}")
    if frames == 0:
        raise UnreadableHeader("GIF holds no image")
    return ImageHeader("gif", width, height, frames, pixels)


def _skip_sub_blocks(data: bytes, position: int) -> int:
    """The position after a chain of GIF data sub-blocks (each a length byte and data; 0 ends it)."""
    while True:
        size = data[position]
        position += 1 + size
        if size == 0:
            return position


def _bmp(data: bytes) -> ImageHeader:
    # TensorFlow's BMP decoder reads signed 32-bit width and height at 18 and 22 whatever the
    # header's version (a negative height means top-down rows), and so does this.
    width = _uint(data, 18, 4, "little")
    height = _uint(data, 22, 4, "little")
    width, height = width - (width >> 31 << 32), abs(height - (height >> 31 << 32))  # as signed
    return ImageHeader("bmp", width, height, 1, width * height)


def _webp(data: bytes) -> ImageHeader:
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: canvas size (24-bit, minus one), then chunks; ANMF chunks are frames
        width, height = _uint(data, 24, 3, "little") + 1, _uint(data, 27, 3, "little") + 1
        frames = 0
        position = 12
        while position + 8 <= len(data):
            size = _uint(data, position + 4, 4, "little")
            frames += data[position:position + 4] == b"ANMF"
            position += 8 + size + (size & 1)
        frames = max(frames, 1)
        return ImageHeader("webp", width, height, frames, width * height * frames)
    if chunk == b"VP8 ":  # lossy: a key frame's start code, then 14-bit width and height
        if data[23:26] != b"\x9d\x01\x2a":
            raise UnreadableHeader("WebP (lossy) frame has no start code")
        width, height = _uint(data, 26, 2, "little") & 0x3FFF, _uint(data, 28, 2, "little") & 0x3FFF
    elif chunk == b"VP8L":  # lossless: a signature byte, then 14-bit width and height, minus one
        if data[20] != 0x2F:
            raise UnreadableHeader("WebP (lossless) has no signature")
        bits = _uint(data, 21, 4, "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    else:
        raise UnreadableHeader(f"WebP has an unknown first chunk {chunk!r}")
    return ImageHeader("webp", width, height, 1, width * height)


_READERS = {"png": _png, "jpeg": _jpeg, "gif": _gif, "bmp": _bmp, "webp": _webp}
