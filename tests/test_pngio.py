"""read_png keeps every bit of 16-bit PNGs (which Pillow truncates) and rejects broken files."""

import struct
import zlib

import numpy as np
import png
import pytest
from PIL import Image

from cicld.data.pngio import read_image, read_png, write_image, write_png16
from cicld.errors import DataError


def _write_pypng_rgb16(path, array):
    height, width, _ = array.shape
    with open(path, "wb") as handle:
        png.Writer(width, height, bitdepth=16, greyscale=False).write(handle, array.reshape(height, -1).tolist())


def test_16bit_rgb_from_an_independent_writer_is_read_exactly(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 65536, size=(13, 17, 3), dtype=np.uint16)
    _write_pypng_rgb16(tmp_path / "label.png", array)
    decoded = read_png(tmp_path / "label.png")
    assert decoded.dtype == np.uint16 and decoded.shape == (13, 17, 3)
    np.testing.assert_array_equal(decoded, array)


def test_pillow_alone_gets_small_16bit_values_wrong_which_is_why_read_png_exists(tmp_path):
    array = np.zeros((4, 4, 3), dtype=np.uint16)
    array[..., 0] = 3  # SYNTHIA "road": 0x0003, whose high byte is 0
    _write_pypng_rgb16(tmp_path / "label.png", array)
    assert np.asarray(Image.open(tmp_path / "label.png"))[..., 0].max() == 0
    assert read_png(tmp_path / "label.png")[..., 0].max() == 3


def _filtered_png(array: np.ndarray, filters: list[int]) -> bytes:
    """Encode a 16-bit RGB image with the given PNG filter per row (reference encoder, plain Python)."""
    height, width, channels = array.shape
    bpp = 2 * channels
    rows = [bytes(array[r].astype(">u2").tobytes()) for r in range(height)]
    out = bytearray()
    previous = bytes(len(rows[0]))
    for kind, row in zip(filters, rows):
        encoded = bytearray()
        for i, value in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            p = a + b - c
            paeth = (
                a if abs(p - a) <= abs(p - b) and abs(p - a) <= abs(p - c) else (b if abs(p - b) <= abs(p - c) else c)
            )
            predictor = [0, a, b, (a + b) // 2, paeth][kind]
            encoded.append((value - predictor) % 256)
        out += bytes([kind]) + encoded
        previous = row

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b"")
    )


def test_all_five_png_row_filters_are_undone_exactly(tmp_path):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 65536, size=(10, 7, 3), dtype=np.uint16)
    filters = [0, 1, 2, 3, 4, 4, 3, 2, 1, 0]
    (tmp_path / "filtered.png").write_bytes(_filtered_png(array, filters))
    np.testing.assert_array_equal(read_png(tmp_path / "filtered.png"), array)


def test_16bit_greyscale_saved_by_pillow_with_adaptive_filters_is_read_exactly(tmp_path):
    rng = np.random.default_rng(2)
    smooth = np.cumsum(np.cumsum(rng.integers(0, 50, size=(40, 60)), 0), 1).astype(np.uint16)
    Image.fromarray(smooth.astype(np.int32)).convert("I;16").save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_png(tmp_path / "grey.png"), smooth)


def test_8bit_and_palette_pngs_return_their_values_and_indices(tmp_path):
    indices = np.arange(24, dtype=np.uint8).reshape(4, 6)
    write_image(tmp_path / "palette.png", indices, palette=[v for i in range(256) for v in (i, 255 - i, 7)])
    assert Image.open(tmp_path / "palette.png").mode == "P"
    np.testing.assert_array_equal(read_png(tmp_path / "palette.png"), indices)


def test_write_png16_round_trips_greyscale_and_rgb(tmp_path):
    rng = np.random.default_rng(3)
    for shape in ((5, 8), (5, 8, 3), (5, 8, 4)):
        array = rng.integers(0, 65536, size=shape, dtype=np.uint16)
        write_png16(tmp_path / "x.png", array)
        np.testing.assert_array_equal(read_png(tmp_path / "x.png"), array)


@pytest.mark.parametrize("cut", [20, 40, -20])
def test_truncated_16bit_png_is_a_data_error_naming_the_file(tmp_path, cut):
    write_png16(tmp_path / "x.png", np.arange(600, dtype=np.uint16).reshape(10, 20, 3))
    blob = (tmp_path / "x.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(blob[:cut])
    with pytest.raises(DataError, match="cut.png"):
        read_png(tmp_path / "cut.png")


def test_flipped_byte_in_16bit_png_fails_its_checksum(tmp_path):
    write_png16(tmp_path / "x.png", np.arange(600, dtype=np.uint16).reshape(10, 20, 3))
    blob = bytearray((tmp_path / "x.png").read_bytes())
    blob[50] ^= 0xFF
    (tmp_path / "bad.png").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="corrupt"):
        read_png(tmp_path / "bad.png")


def test_any_flipped_byte_in_the_image_data_of_an_8bit_label_is_reported_never_read_as_other_ids(tmp_path):
    # Pillow skips the IDAT checksums: some flips there decode to other ids without a word.
    label = (np.arange(32 * 64).reshape(32, 64) % 34).astype(np.uint8)
    write_image(tmp_path / "label.png", label)
    blob = (tmp_path / "label.png").read_bytes()
    start = blob.index(b"IDAT") + 4
    (length,) = struct.unpack(">I", blob[start - 8 : start - 4])
    for offset in range(length):
        flipped = bytearray(blob)
        flipped[start + offset] ^= 0x01
        (tmp_path / "bad.png").write_bytes(bytes(flipped))
        with pytest.raises(DataError, match=r"bad.png is corrupt \(checksum error in the IDAT chunk\)"):
            read_png(tmp_path / "bad.png")


def test_an_8bit_png_is_read_once_so_its_pixels_are_the_bytes_whose_checksums_were_checked(tmp_path, monkeypatch):
    import cicld.data.pngio

    first, second = np.zeros((4, 6), np.uint8), np.full((4, 6), 7, np.uint8)
    write_image(tmp_path / "label.png", first)
    write_image(tmp_path / "other.png", second)
    checked = cicld.data.pngio._chunks

    def replaced_once_checked(blob, path):
        yield from checked(blob, path)
        path.write_bytes((tmp_path / "other.png").read_bytes())  # another process rewrites the file

    monkeypatch.setattr(cicld.data.pngio, "_chunks", replaced_once_checked)
    np.testing.assert_array_equal(read_png(tmp_path / "label.png"), first)


def test_a_file_that_is_not_a_png_is_a_data_error(tmp_path):
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(DataError, match="not a PNG"):
        read_png(tmp_path / "text.png")
    with pytest.raises(DataError, match="text.png"):
        read_image(tmp_path / "text.png")


def test_truncated_8bit_image_is_caught_when_decoded(tmp_path):
    write_image(tmp_path / "x.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    blob = (tmp_path / "x.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_written_files_get_the_usual_permissions_not_mkstemps_private_ones(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        write_image(tmp_path / "x.png", np.zeros((2, 2), np.uint8))
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "x.png").stat().st_mode) == 0o644


def test_a_16_bit_greyscale_png_is_read_as_rgb_like_its_8_bit_twin(tmp_path):
    eight = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(eight).save(tmp_path / "eight.png")
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")  # 0..65535, full range
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    twin = read_image(tmp_path / "eight.png", "RGB")
    np.testing.assert_array_equal(read_image(tmp_path / "sixteen.png", "RGB"), twin)
    assert twin.shape == (16, 16, 3) and twin.dtype == np.uint8


def test_a_32_bit_integer_image_holding_16_bit_values_is_scaled_like_a_16_bit_one(tmp_path):
    values = (np.arange(256, dtype=np.int32) * 257).reshape(16, 16)
    Image.fromarray(values).save(tmp_path / "wide.tif")
    assert Image.open(tmp_path / "wide.tif").mode == "I"
    np.testing.assert_array_equal(read_image(tmp_path / "wide.tif", "RGB")[..., 0], (values >> 8).astype(np.uint8))


@pytest.mark.parametrize(
    "mode, suffix", [("1", "png"), ("L", "png"), ("LA", "png"), ("P", "png"), ("RGBA", "png"), ("CMYK", "tif")]
)
def test_every_8_bit_mode_reaches_rgb_with_its_colours(tmp_path, mode, suffix):
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [200, 30, 90], [10, 160, 240]]], dtype=np.uint8)
    if mode in ("1", "L", "LA"):
        rgb[0, 2:] = 255  # greys that these modes can hold
    if mode == "P":
        image = Image.fromarray(np.array([[0, 1, 2, 3]], dtype=np.uint8)).convert("L")
        image = Image.frombytes("P", image.size, image.tobytes())
        image.putpalette(rgb.reshape(-1).tolist())
    else:
        image = Image.fromarray(rgb).convert(mode)
    image.save(tmp_path / f"x.{suffix}")
    assert Image.open(tmp_path / f"x.{suffix}").mode == mode
    read = read_image(tmp_path / f"x.{suffix}", "RGB")
    assert read.dtype == np.uint8
    np.testing.assert_array_equal(read, rgb)


def test_a_floating_point_image_is_refused_in_one_line_naming_the_file(tmp_path):
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DataError, match=r"float\.tif.*outside the 16-bit range"):
        read_image(tmp_path / "float.tif", "RGB")


@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["grey", "grey-alpha", "rgb", "rgba"])
def test_every_kind_of_16_bit_png_reaches_rgb_as_its_high_bytes(tmp_path, channels):
    values = (np.arange(32, dtype=np.uint16) * 2047).reshape(4, 8)
    samples = np.repeat(values[..., None], channels, axis=2)
    if channels in (2, 4):
        samples[..., -1] = 65535  # opaque
    with open(tmp_path / "x.png", "wb") as handle:
        png.Writer(8, 4, bitdepth=16, greyscale=channels < 3, alpha=channels in (2, 4)).write(
            handle, samples.reshape(4, -1).tolist()
        )
    expected = np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=2)
    np.testing.assert_array_equal(read_image(tmp_path / "x.png", "RGB"), expected)
