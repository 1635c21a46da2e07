"""Exact PNG reading and atomic image writing.

Pillow reads a 16-bit RGB PNG as 8-bit RGB by keeping only the high byte of every sample, so a
SYNTHIA label (class id in the 16-bit red channel, e.g. 0x0003) comes back as all zeros. Rather
than pull in OpenCV for one function, :func:`read_png` decodes 16-bit PNGs itself with ``zlib``
and numpy. 8-bit files and palette images go through Pillow, which reads them exactly.

Writes are atomic (:func:`cicld.files.atomic_write`), so an interrupted run never leaves a
half-written image that a later run would take for a finished one.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cicld.errors import DataError
from cicld.files import atomic_write

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel (3, palette, excluded)


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG with every bit kept: (H, W) or (H, W, C), uint8 or uint16.

    Palette images return their indices (GTA5 stores Cityscapes label ids there), not colours.
    Raises :class:`DataError` naming the file if it is missing, not a PNG (a JPEG renamed to
    ``.png``), truncated or corrupt (every chunk's CRC is checked, the image data's included).
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not blob.startswith(PNG_SIGNATURE):
        raise DataError(f"{path} is not a PNG file{_actual_format(path)}")
    header = _read_header(blob, path)
    if header["bit_depth"] != 16:
        # Pillow skips the checksums of the image data (IDAT): a flipped bit there can decode
        # to wrong pixels without a word, so every chunk's CRC is checked first.
        for _ in _chunks(blob, path):
            pass
        return _decode(io.BytesIO(blob), path)  # the bytes already read, not the file again
    return _decode_16bit(blob, header, path)


def _actual_format(path: Path) -> str:
    """`` (it is a JPEG file)`` where Pillow recognises the file's real format, else nothing."""
    try:
        with Image.open(path) as image:
            return f" (it is a {image.format} file)" if image.format else ""
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return ""


def read_image(path: str | os.PathLike, mode: str | None = None) -> np.ndarray:
    """Read any image Pillow knows, fully decoded (so truncation is caught here, not later).

    ``mode`` converts (e.g. "RGB" for network input); None keeps the file's own mode, and a
    palette ("P") image returns its indices. 16-bit greyscale is scaled to 8 bits on the way
    (:func:`_wide_to_8bit`), not clipped as Pillow's ``convert`` would.
    """
    path = Path(path)
    return _decode(path, path, mode)


def _decode(source: Path | io.BytesIO, path: Path, mode: str | None = None) -> np.ndarray:
    """:func:`read_image` of ``source``, the file ``path`` or its bytes; errors name ``path``."""
    try:
        with Image.open(source) as image:
            image.load()
            if mode is not None and image.mode != mode:
                image = (
                    image.convert(mode) if image.mode not in _WIDE_MODES else _wide_to_8bit(image, path).convert(mode)
                )
            return np.asarray(image)
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except UnidentifiedImageError:
        raise DataError(f"{path} is not an image (or is corrupt)") from None
    except (OSError, SyntaxError, ValueError, zlib.error) as exc:
        # Pillow says "image file is truncated", "broken PNG file", "incorrect header check"...
        raise DataError(f"{path} is corrupt or truncated ({exc})") from None


#: Greyscale modes with more than 8 bits a sample. Pillow's ``convert`` clips them to 0..255
#: (a 16-bit photo becomes white), so :func:`_wide_to_8bit` scales them instead.
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16LS", "I;16BS", "I;32", "I;32B", "I;32S", "F"}


def _wide_to_8bit(image: Image.Image, path: Path) -> Image.Image:
    """A 16-bit greyscale image as 8-bit "L": the high byte of each sample (``value >> 8``).

    Pillow opens 16-bit greyscale as "I;16" (or as 32-bit "I" holding 0..65535); both are taken
    to span 0..65535, as a 16-bit file does. Values outside that range (negative, 32-bit or
    floating-point data) have no agreed brightness scale, so they are refused, not guessed at.
    """
    values = np.asarray(image)
    if image.mode == "F" or values.size and (values.min() < 0 or values.max() > 0xFFFF):
        raise DataError(
            f"{path} has {image.mode!r} pixels outside the 16-bit range 0..65535 (floating-point or 32-bit data); "
            "save it as an 8- or 16-bit image"
        )
    return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8))


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) from the header alone, without decoding the pixels."""
    return _header(path).size


def image_mode(path: str | os.PathLike) -> str:
    """Pillow's mode ("P", "L", "RGB", "I;16"...) from the header alone."""
    return _header(path).mode


def image_format(path: str | os.PathLike) -> str | None:
    """Pillow's name of the file's format ("PNG", "JPEG"...), from the header alone."""
    return _header(path).format


def _header(path: str | os.PathLike) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DataError(f"{path} is not a readable image ({exc})") from None


def _chunks(blob: bytes, path: Path):
    pos = len(PNG_SIGNATURE)
    while pos < len(blob):
        if pos + 8 > len(blob):
            raise DataError(f"{path} is truncated (cut inside a chunk header)")
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        kind = blob[pos + 4 : pos + 8]
        data = blob[pos + 8 : pos + 8 + length]
        crc_bytes = blob[pos + 8 + length : pos + 12 + length]
        if len(data) != length or len(crc_bytes) != 4:
            raise DataError(f"{path} is truncated (cut inside the {kind.decode('latin-1')} chunk)")
        if zlib.crc32(kind + data) != struct.unpack(">I", crc_bytes)[0]:
            raise DataError(f"{path} is corrupt (checksum error in the {kind.decode('latin-1')} chunk)")
        yield kind, data
        if kind == b"IEND":
            return
        pos += 12 + length
    raise DataError(f"{path} is truncated (no IEND chunk)")


def _read_header(blob: bytes, path: Path) -> dict:
    if len(blob) < 33 or blob[12:16] != b"IHDR":
        raise DataError(f"{path} is corrupt (no PNG header)")
    width, height, bit_depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", blob[16:29])
    return dict(width=width, height=height, bit_depth=bit_depth, color_type=color_type, interlace=interlace)


def _decode_16bit(blob: bytes, header: dict, path: Path) -> np.ndarray:
    width, height, color_type = header["width"], header["height"], header["color_type"]
    if color_type not in _CHANNELS:
        raise DataError(f"{path} has PNG colour type {color_type}, which cannot be 16-bit")
    if header["interlace"]:
        raise DataError(f"{path} is an interlaced 16-bit PNG; re-save it without interlacing")
    channels = _CHANNELS[color_type]
    compressed = b"".join(data for kind, data in _chunks(blob, path) if kind == b"IDAT")
    try:
        raw = zlib.decompress(compressed)
    except zlib.error as exc:
        raise DataError(f"{path} is corrupt (image data does not decompress: {exc})") from None
    pixel_bytes = 2 * channels
    row_bytes = 1 + width * pixel_bytes
    if len(raw) != height * row_bytes:
        raise DataError(f"{path} is truncated ({len(raw)} of {height * row_bytes} pixel bytes)")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, row_bytes)
    filters = rows[:, 0]
    if filters.max(initial=0) > 4:
        raise DataError(f"{path} is corrupt (unknown PNG row filter {int(filters.max())})")
    pixels = _unfilter(rows[:, 1:].reshape(height, width, pixel_bytes), filters)
    samples = pixels.reshape(height, width * channels, 2)
    values = (samples[..., 0].astype(np.uint16) << 8) | samples[..., 1]
    return values.reshape(height, width, channels) if channels > 1 else values.reshape(height, width)


def _unfilter(filtered: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """Undo PNG row filtering for (H, W, bytes-per-pixel) data.

    Every reconstructed pixel depends on its left, upper and upper-left neighbours, so the pixels
    on one anti-diagonal (row + column = const) depend only on earlier anti-diagonals: we sweep
    the H + W - 1 anti-diagonals, each as one vectorised step, instead of every pixel in Python.
    """
    height, width, bpp = filters.shape[0], filtered.shape[1], filtered.shape[2]
    out = np.zeros((height + 1, width + 1, bpp), dtype=np.int16)  # zero row/column of padding
    data = filtered.astype(np.int16)
    kinds = filters.astype(np.int16)
    for diagonal in range(height + width - 1):
        r = np.arange(max(0, diagonal - width + 1), min(height, diagonal + 1))
        x = diagonal - r
        left, up, up_left = out[r + 1, x], out[r, x + 1], out[r, x]
        kind = kinds[r][:, None]
        estimate = np.abs(up - up_left)  # Paeth: |p - a| with p = a + b - c
        pb, pc = np.abs(left - up_left), np.abs(left + up - 2 * up_left)
        paeth = np.where((estimate <= pb) & (estimate <= pc), left, np.where(pb <= pc, up, up_left))
        predictor = np.select(
            [kind == 1, kind == 2, kind == 3, kind == 4],
            [left, up, (left + up) >> 1, paeth],
            default=0,
        )
        out[r + 1, x + 1] = (data[r, x] + predictor) & 0xFF
    return out[1:, 1:].astype(np.uint8)


def write_png16(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a (H, W) or (H, W, 3|4) uint16 array as a 16-bit PNG (atomically)."""
    array = np.asarray(array)
    if array.dtype != np.uint16:
        raise ValueError(f"write_png16 needs uint16 data, got {array.dtype}")
    channels = 1 if array.ndim == 2 else array.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    height, width = array.shape[:2]
    rows = array.astype(">u2").reshape(height, width * channels).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    blob = PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    atomic_write(path, blob)


def write_image(path: str | os.PathLike, array: np.ndarray, palette: list[int] | None = None) -> None:
    """Write a uint8 (H, W) or (H, W, 3) array as an image (atomically); format from the suffix.

    With ``palette``, a (H, W) array is written as a palette image whose indices are the values.
    """
    image = Image.fromarray(np.ascontiguousarray(array))
    if palette is not None:
        image = image.convert("L") if image.mode != "L" else image
        image = Image.frombytes("P", image.size, image.tobytes())
        image.putpalette(palette)
    path = Path(path)
    atomic_write(path, lambda handle: image.save(handle, format=Image.registered_extensions()[path.suffix.lower()]))
