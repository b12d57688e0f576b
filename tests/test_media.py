"""Decoding: formats sniffed from content, orientation, colour modes, EXIF, draft mode."""

from __future__ import annotations

import io
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from indexer.media import Limits, MediaError, decode_image, read_file
from tests.helpers import picture

LIMITS = Limits()


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "HEIF", "AVIF"])
def test_every_supported_format_decodes_to_rgb_of_the_right_size(fmt: str):
    src = picture(1, (96, 64))
    out = decode_image(encode(src, fmt), LIMITS)
    assert out.image.mode == "RGB"
    assert out.image.size == (96, 64)
    assert (out.width, out.height) == (96, 64)
    # lossy codecs differ a little; a wrong decode differs a lot
    diff = np.abs(np.asarray(out.image, dtype=int) - np.asarray(src, dtype=int)).mean()
    assert diff < 25, f"{fmt} decoded far from the source (mean abs diff {diff:.1f})"


def test_type_is_sniffed_from_content_not_extension(tmp_path: Path):
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(encode(picture(2), "PNG"))
    out = decode_image(read_file(str(path), LIMITS).data, LIMITS)
    assert out.format == "PNG"


def test_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255)]]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue(), LIMITS)
    r, _g, b = out.image.getpixel((16, 16))
    assert r > 200 and b < 50


def _with_orientation(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def test_exif_orientation_6_is_applied():
    # a wide image with a red left half, stored with "rotate 90 CW to display"
    img = Image.new("RGB", (80, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 40, 40))
    out = decode_image(_with_orientation(img, 6), LIMITS)
    assert out.image.size == (40, 80)
    assert (out.width, out.height) == (40, 80)
    top = out.image.getpixel((20, 5))
    assert top[0] > 200 and top[2] < 60, "the stored left half must end up on top"


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_every_exif_orientation_matches_pillows_reference(orientation: int):
    from PIL import ImageOps

    data = _with_orientation(picture(3, (60, 40)), orientation)
    ref = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    out = decode_image(data, LIMITS)
    assert out.image.size == ref.size
    assert np.array_equal(np.asarray(out.image), np.asarray(ref))


def test_cmyk_jpeg_comes_out_with_the_right_colour():
    red = Image.new("RGB", (32, 32), (220, 20, 20)).convert("CMYK")
    out = decode_image(encode(red, "JPEG", quality=95), LIMITS)
    r, g, b = out.image.getpixel((16, 16))
    assert r > 180 and g < 70 and b < 70


def test_16_bit_greyscale_is_scaled_not_clipped_to_white():
    arr = np.full((20, 20), 32768, dtype=np.uint16)  # mid grey in 16 bits
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = decode_image(encode(img, "PNG"), LIMITS)
    value = out.image.getpixel((5, 5))
    assert value[0] == value[1] == value[2]
    assert 120 <= value[0] <= 136


def test_transparent_pixels_become_white_not_black():
    img = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (0, 0, 10, 20))
    out = decode_image(encode(img, "PNG"), LIMITS)
    assert out.image.getpixel((15, 10)) == (255, 255, 255)
    assert out.image.getpixel((5, 10)) == (255, 0, 0)


def test_palette_image_with_transparency_is_composited_on_white():
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    img.paste(1, (0, 0, 5, 10))
    img.info["transparency"] = 0
    out = decode_image(encode(img, "PNG", transparency=0), LIMITS)
    assert out.image.getpixel((8, 5)) == (255, 255, 255)
    assert out.image.getpixel((2, 5)) == (0, 200, 0)


def test_exif_time_camera_and_gps_are_read():
    exif = Image.Exif()
    exif[0x010F] = "Everlook Optics"
    exif[0x0110] = "EV-1"
    exif.get_ifd(0x8769)[0x9003] = "2021:07:14 09:30:05"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[3] = "N", "W"
    gps[2] = tuple(TiffImagePlugin.IFDRational(Fraction(x)) for x in (48, 51, Fraction(2950, 100)))
    gps[4] = tuple(TiffImagePlugin.IFDRational(Fraction(x)) for x in (2, 17, Fraction(4000, 100)))
    out = decode_image(encode(picture(4), "JPEG", exif=exif.tobytes()), LIMITS)
    assert out.meta["camera_make"] == "Everlook Optics"
    assert out.meta["camera_model"] == "EV-1"
    assert out.meta["taken_at"] == datetime(2021, 7, 14, 9, 30, 5)
    assert out.meta["gps_lat"] == pytest.approx(48 + 51 / 60 + 29.5 / 3600, abs=1e-6)
    assert out.meta["gps_lon"] == pytest.approx(-(2 + 17 / 60 + 40 / 3600), abs=1e-6)


def test_draft_mode_decodes_big_jpegs_small_but_never_below_twice_the_input():
    big = picture(5, (4000, 3000))
    data = encode(big, "JPEG", quality=85)
    out = decode_image(data, LIMITS, draft_side=448)
    assert min(out.image.size) >= 448
    assert out.image.size[0] < 4000 / 2
    assert (out.width, out.height) == (4000, 3000)  # the item keeps its real size
    full = decode_image(data, LIMITS)
    assert full.image.size == (4000, 3000)


def test_draft_is_skipped_when_the_image_is_already_small():
    data = encode(picture(6, (500, 400)), "JPEG")
    assert decode_image(data, LIMITS, draft_side=448).image.size == (500, 400)


def test_pixel_limit_is_checked_before_decoding():
    data = encode(Image.new("L", (3000, 3000)), "PNG")
    with pytest.raises(MediaError, match="max_pixels"):
        decode_image(data, Limits(max_pixels=1_000_000))


def test_file_size_limit_is_enforced(tmp_path: Path):
    p = tmp_path / "big.png"
    p.write_bytes(encode(picture(7), "PNG"))
    with pytest.raises(MediaError, match="max_file_bytes"):
        read_file(str(p), Limits(max_file_bytes=100))


def test_read_file_hashes_the_bytes(tmp_path: Path):
    import hashlib

    p = tmp_path / "a.jpg"
    data = encode(picture(8), "JPEG")
    p.write_bytes(data)
    raw = read_file(str(p), LIMITS)
    assert raw.sha256 == hashlib.sha256(data).hexdigest()
    assert raw.data == data and raw.size == len(data)


def test_all_shared_photos_decode_except_formats_pillow_lacks(shared_images: Path):
    lacking = {".jxl"}  # JPEG XL: no decoder in Pillow or pillow-heif
    for path in sorted(shared_images.iterdir()):
        if path.suffix.lower() in lacking:
            with pytest.raises(MediaError, match="not a recognised image format"):
                decode_image(read_file(str(path), LIMITS).data, LIMITS)
            continue
        out = decode_image(read_file(str(path), LIMITS).data, LIMITS, draft_side=448)
        assert out.image.mode == "RGB", path.name
        assert min(out.image.size) >= min(448, out.width, out.height), path.name


def test_shared_16_bit_tiff_is_not_washed_out(shared_images: Path):
    path = shared_images / "closeup_rusty-building-crop_16bit-rgb_pillow.tiff"
    if not path.exists():
        pytest.skip("16-bit TIFF sample missing")
    arr = np.asarray(decode_image(path.read_bytes(), LIMITS).image)
    assert 20 < arr.mean() < 235 and arr.std() > 5


def test_shared_rotated_portrait_comes_out_upright(shared_images: Path):
    path = shared_images / "people_curie-portrait_exif-orient6-gray_immich.jpg"
    if not path.exists():
        pytest.skip("orientation sample missing")
    out = decode_image(path.read_bytes(), LIMITS)
    stored = Image.open(path).size
    assert out.image.size == (stored[1], stored[0])
