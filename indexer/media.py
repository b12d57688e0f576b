"""Reading, hashing and decoding media files.

One read per file: the bytes are hashed (SHA-256, chunk by chunk) as they come in, and
the same buffer is decoded. The type is sniffed from content by Pillow's openers, never
taken from the extension. Every way a file can be bad ends in ``MediaError`` with a
sentence a user can act on.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from PIL import Image, ImageCms, ImageFile, UnidentifiedImageError

from indexer.sniff import SNIFF_BYTES, sniff_audio

try:  # HEIC/HEIF from phones: registered as a Pillow opener.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a hard dependency
    pass

# Our own pixel limit is checked from the header before decoding; Pillow's global bomb
# check would fire first with a different message, so it defers to ours.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

CHUNK = 1 << 20
_SRGB = ImageCms.createProfile("sRGB")


def printable(path: str) -> str:
    """A path as text: bytes that are not UTF-8 shown as \\xNN (like ``ls -b``). For
    terminals and for text columns, which cannot hold PEP 383 surrogates."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class MediaError(Exception):
    """A file that cannot be indexed; the message is the reason shown to users."""


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 100_000_000
    max_file_bytes: int = 200 * 1024 * 1024
    max_audio_seconds: float = 3600.0
    # Audio gets its own byte limit: an hour of uncompressed WAV is 635 MB at CD quality,
    # far more than any photo, while its decoded form is bounded by max_audio_seconds.
    max_audio_bytes: int = 512 * 1024 * 1024


@dataclass
class RawFile:
    path: str
    data: bytes
    sha256: str
    size: int
    mtime_ns: int


@dataclass
class Decoded:
    image: Image.Image  # RGB, orientation applied
    format: str
    width: int  # full size, after orientation
    height: int
    meta: dict[str, Any] = field(default_factory=dict)


def read_file(path: str, limits: Limits) -> RawFile:
    """Read and hash a regular file. Never blocks on FIFOs or devices."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer would otherwise hang forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        if os.path.islink(path):
            raise MediaError(
                f"broken symbolic link (target {os.readlink(path)!r} is missing)"
            ) from exc
        raise MediaError("file vanished before it could be read") from exc
    except IsADirectoryError as exc:
        raise MediaError("is a directory, not a file") from exc
    except PermissionError as exc:
        raise MediaError("permission denied") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise MediaError("symbolic link loop") from exc
        raise MediaError(f"cannot open: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        _check_regular(st)
        _check_size(st.st_size, _peek(fd), limits)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb", buffering=0) as fh:
        st = os.fstat(fd)
        h = hashlib.sha256()
        # One buffer of the expected size, filled in place and hashed chunk by chunk:
        # no copies of a multi-megabyte photo on the hot path.
        buf = bytearray(st.st_size + 1)  # +1: notice a file that grew since fstat
        view = memoryview(buf)
        got = 0
        while got < len(buf):
            try:
                n = fh.readinto(view[got : got + CHUNK])
            except OSError as exc:
                raise MediaError(f"read error: {exc.strerror}") from exc
            if not n:
                break
            h.update(view[got : got + n])
            got += n
        if got > st.st_size:
            raise MediaError("file is still being written (it grew while being read)")
        del view
    return RawFile(path, bytes(buf[:got]), h.hexdigest(), got, st.st_mtime_ns)


def _check_regular(st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise MediaError("is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise MediaError(f"not a regular file ({_file_type(st.st_mode)})")
    if st.st_size == 0:
        raise MediaError("empty file (0 bytes)")


def _peek(fd: int) -> bytes:
    # pread leaves the file position at 0 for the one read that follows; the head comes
    # from the page cache that read will use anyway.
    try:
        return os.pread(fd, SNIFF_BYTES, 0)
    except OSError as exc:
        raise MediaError(f"read error: {exc.strerror}") from exc


def _check_size(size: int, head: bytes, limits: Limits) -> None:
    """The byte limit for what the file's first bytes say it is, before reading the rest."""
    if sniff_audio(head) is not None:
        limit, setting = limits.max_audio_bytes, "max_audio_bytes"
    else:
        limit, setting = limits.max_file_bytes, "max_file_bytes"
    if size > limit:
        raise MediaError(f"file is {size} bytes, over the limit of {limit} (setting {setting})")


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "special file"


def open_image(data: bytes, limits: Limits) -> Image.Image:
    """Identify the content and check the pixel limit, without decoding pixels."""
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise MediaError(f"not a recognised image format ({_sniff_hint(data)})") from exc
    except Exception as exc:  # header parsers raise many types on garbage
        raise MediaError(f"unreadable image header: {exc}") from exc
    w, h = img.size
    if w <= 0 or h <= 0:
        raise MediaError(f"image has invalid size {w}x{h}")
    if w * h > limits.max_pixels:
        raise MediaError(
            f"image is {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels} "
            "(setting max_pixels; protects against decompression bombs)"
        )
    return img


def _sniff_hint(data: bytes) -> str:
    head = data[:512]
    if head.startswith((b"\xff\xd8", b"\x89PNG")):
        return "looks like a damaged JPEG/PNG"
    try:
        head.decode("utf-8")
        return "content is text"
    except UnicodeDecodeError:
        return f"starts with bytes {head[:8].hex()}"


def decode_image(data: bytes, limits: Limits, draft_side: int | None = None) -> Decoded:
    """Decode to an RGB image with EXIF orientation applied.

    ``draft_side``: for JPEGs, let libjpeg scale down by 1/2, 1/4 or 1/8 while decoding,
    keeping both sides >= draft_side. Decoding a 12 MP photo in full costs more than a
    ViT-B/32 forward pass; CLIP only ever sees 224 px of it.
    """
    img = open_image(data, limits)
    fmt = img.format or "unknown"
    full_w, full_h = img.size
    try:
        meta = read_exif(img)
        if draft_side and fmt in ("JPEG", "MPO"):
            img.draft(img.mode, (draft_side, draft_side))
        img.load()
        orientation = img.getexif().get(0x0112, 1)
        rgb = to_rgb(img)
        if orientation in (5, 6, 7, 8):
            full_w, full_h = full_h, full_w
        if orientation != 1:
            rgb.info["exif"] = img.info.get("exif", b"")
            rgb = _apply_orientation(rgb, orientation)
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(f"cannot decode {fmt} image: {exc}") from exc
    return Decoded(rgb, fmt, full_w, full_h, meta)


def _apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    method = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(orientation)
    return img.transpose(method) if method is not None else img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit sRGB, correctly.

    - Embedded ICC profiles (CMYK JPEGs from Adobe tools, wide-gamut photos) are
      converted to sRGB with LittleCMS; a naive convert() gets CMYK badly wrong.
    - 16-bit and 32-bit greyscale are scaled, not clipped (Pillow's convert clips
      I;16 values above 255 to white).
    - Transparency is composited over white, not dropped: transparent pixels often
      hold black or garbage colour.
    """
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np  # only for 16-bit and float images; keeps imports light

        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        img = Image.fromarray(((arr - lo) * scale).astype(np.uint8), "L")
    icc = img.info.get("icc_profile")
    if icc and img.mode in ("RGB", "CMYK", "RGBA", "L"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
            converted = ImageCms.profileToProfile(img, src, _SRGB, outputMode=out_mode)
            if converted is not None:
                img = converted
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: fall back to Pillow's plain conversion below
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (
        img.mode in ("L", "RGB") and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def read_exif(img: Image.Image) -> dict[str, Any]:
    """Capture time, camera make/model and GPS position, where present and sane."""
    out: dict[str, Any] = {}
    try:
        exif = img.getexif()
    except Exception:
        return out
    make, model = exif.get(0x010F), exif.get(0x0110)
    if isinstance(make, str) and make.strip("\x00 "):
        out["camera_make"] = make.strip("\x00 ")[:128]
    if isinstance(model, str) and model.strip("\x00 "):
        out["camera_model"] = model.strip("\x00 ")[:128]
    try:
        sub = exif.get_ifd(0x8769)
        when = sub.get(0x9003) or sub.get(0x9004) or exif.get(0x0132)
        if isinstance(when, str):
            out["taken_at"] = datetime.strptime(when.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        gps = exif.get_ifd(0x8825)
        lat = _dms(gps.get(2), gps.get(1))
        lon = _dms(gps.get(4), gps.get(3))
        plausible = lat is not None and lon is not None and abs(lat) <= 90 and abs(lon) <= 180
        if plausible and (lat, lon) != (0.0, 0.0):  # 0,0 is what empty GPS blocks hold
            out["gps_lat"], out["gps_lon"] = lat, lon
    except (ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError):
        pass
    return out


def _dms(value: Any, ref: Any) -> float | None:
    if not value or len(value) != 3:
        return None
    d, m, s = (float(x) for x in value)
    if any(x != x for x in (d, m, s)):  # NaN from 0/0 rationals
        return None
    deg = d + m / 60.0 + s / 3600.0
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "ignore")
    if isinstance(ref, str) and ref.strip("\x00 ").upper() in ("S", "W"):
        deg = -deg
    return round(deg, 7)
