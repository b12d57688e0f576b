"""JPEG decoding and CLIP preprocessing in batches on the GPU (nvJPEG through torchvision).

On a GPU the model embeds hundreds of pictures a second and decoding a 12 MP JPEG on
the CPU becomes the ceiling; nvJPEG decodes a whole batch on the GPU
(``torchvision.io.decode_jpeg(list, device="cuda")``), and the resize, crop and
normalisation follow there, so only the compressed bytes cross the bus.

The result matches open_clip's eval transform (resize the short side with PIL's
antialiased bicubic, centre crop, scale, normalise) as closely as tensors allow: the
same output sizes and crop offsets (torchvision computes both for PIL and tensors
alike), torch's antialiased bicubic (PIL's kernel, a = -0.5) rounded to 8 bits as PIL
does. What differs is the decoder's arithmetic (nvJPEG's IDCT and chroma upsampling)
and the resampler's rounding: measured on CPU against PIL (libjpeg on both sides) in
tests/test_gpu.py, stated there as the tolerance.

Only what this path decodes exactly like media.decode_image goes here: baseline and
progressive JPEGs in YCbCr or greyscale, without an ICC profile (the CPU path converts
profiles to sRGB), complete (a truncated file is an error there, a grey tail here),
within the pixel limit. The EXIF orientation is applied here, as there. Anything else
gets a reason and goes back to the CPU path, which decodes it or records why not: this
module never decides that a file is bad.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

MAX_PIXELS = 100_000_000  # media.Limits' default


class DecodedBatch(NamedTuple):
    """``pixels``: [B, 3, side, side] float32 on the device, one row per input; a row
    whose ``errors`` entry is not None is zeros and must be prepared by the CPU path."""

    pixels: torch.Tensor
    errors: list[str | None]

    @property
    def ok(self) -> list[bool]:
        return [e is None for e in self.errors]


@dataclass(frozen=True)
class EvalTransform:
    """open_clip's eval transform, as the parameters decode_preprocess_batch takes."""

    side: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"


def eval_transform(transform: Any) -> EvalTransform | None:
    """Read open_clip's eval transform (Resize(short side) + CenterCrop + convert +
    ToTensor + Normalize); None for any other shape (resize_mode longest or squash,
    non-square input), which this module does not reproduce."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    resize = next((s for s in steps if isinstance(s, T.Resize)), None)
    crop = next((s for s in steps if isinstance(s, T.CenterCrop)), None)
    norm = next((s for s in steps if isinstance(s, T.Normalize)), None)
    if resize is None or crop is None or norm is None:
        return None
    size = resize.size if isinstance(resize.size, int) else list(resize.size)
    if isinstance(size, list):
        if len(size) != 1:
            return None  # squash: both sides given
        size = size[0]
    if list(crop.size) != [size, size] or resize.max_size is not None:
        return None
    mode = resize.interpolation
    if mode not in (T.InterpolationMode.BICUBIC, T.InterpolationMode.BILINEAR):
        return None
    return EvalTransform(int(size), tuple(norm.mean), tuple(norm.std), mode.value)


def gpu_decodable(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, str | None]:
    """(EXIF orientation, None) when this module decodes data exactly as the CPU path
    would, else (1, why not). Reads the header only (Pillow opens lazily)."""
    from PIL import Image, UnidentifiedImageError

    if not data.startswith(b"\xff\xd8"):
        return 1, "not a JPEG"
    if not data[-256:].rstrip(b"\x00").endswith(b"\xff\xd9"):
        # libjpeg fills a truncated file with grey and warns; Pillow, as the CPU path
        # uses it, refuses it. Trailing data after the end marker lands here too.
        return 1, "JPEG without its end-of-image marker (truncated?)"
    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        mode, fmt = img.mode, img.format
        icc = img.info.get("icc_profile")
        orientation = int(img.getexif().get(0x0112, 1) or 1)
    except UnidentifiedImageError:
        return 1, "unreadable JPEG header"
    except Exception as exc:  # header parsers raise many types on garbage
        return 1, f"unreadable JPEG header: {exc}"
    if fmt not in ("JPEG", "MPO"):
        return 1, f"not a JPEG ({fmt})"
    if mode not in ("RGB", "L"):
        return 1, f"{mode} JPEG: its colours need the CPU path's conversion"
    if icc:
        return 1, "has an ICC profile: the CPU path converts it to sRGB"
    if w <= 0 or h <= 0 or w * h > max_pixels:
        return 1, f"{w}x{h} pixels: outside the limits"
    return (orientation if 1 <= orientation <= 8 else 1), None


def orient(img: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a [C, H, W] tensor, as Pillow's transposes do in
    media.decode_image (nvJPEG does not apply it; libjpeg on the CPU may, but not here,
    so both devices take the same path)."""
    import torch

    if orientation == 2:
        return img.flip(-1)
    if orientation == 3:
        return img.flip(-1).flip(-2)
    if orientation == 4:
        return img.flip(-2)
    if orientation == 5:
        return img.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(img, -1, dims=(-2, -1))
    if orientation == 7:
        return img.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:
        return torch.rot90(img, 1, dims=(-2, -1))
    return img


def _decode(tensors: list[torch.Tensor], device: str) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec,
        # which has no batched nvJPEG image decoder yet.
        warnings.simplefilter("ignore", DeprecationWarning)
        out = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    return list(out) if isinstance(out, list) else [out]


def decode_preprocess_batch(
    datas: Sequence[bytes],
    side: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    device: str = "cuda",
    max_pixels: int = MAX_PIXELS,
) -> DecodedBatch:
    """Decode JPEG bytes on ``device`` (nvJPEG on CUDA, batched; libjpeg on the CPU) and
    preprocess them for a CLIP model of input ``side``.

    One bad item never fails the batch: nvJPEG's batched call returns nothing when one
    image fails, so the batch is then decoded one by one and each failure is reported
    in its row's ``errors`` entry, as is everything gpu_decodable turns away.
    """
    import torch

    n = len(datas)
    errors: list[str | None] = [None] * n
    orientations = [1] * n
    for i, data in enumerate(datas):
        orientations[i], errors[i] = gpu_decodable(data, max_pixels)
    todo = [i for i in range(n) if errors[i] is None]
    pixels = torch.zeros((n, 3, side, side), dtype=torch.float32, device=device)
    if not todo:
        return DecodedBatch(pixels, errors)
    with torch.inference_mode():
        # A copy: torch.frombuffer over immutable bytes would warn and share memory the
        # decoder must not write (it does not, but torch cannot know).
        raw = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in todo]
        decoded: list[torch.Tensor | None]
        try:
            decoded = list(_decode(raw, device))
        except RuntimeError:
            decoded = []
            for i, t in zip(todo, raw, strict=True):
                try:
                    decoded.append(_decode([t], device)[0])
                except RuntimeError as exc:
                    errors[i] = _decoder_error(exc)
                    decoded.append(None)
        m = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
        for i, img in zip(todo, decoded, strict=True):
            if img is not None:
                pixels[i] = _preprocess(orient(img, orientations[i]), side, interpolation)
        pixels.sub_(m).div_(s)
        for i in range(n):
            if errors[i] is not None:
                pixels[i].zero_()
    return DecodedBatch(pixels, errors)


def _decoder_error(exc: BaseException) -> str:
    # torchvision prefixes its C++ source position: "decode_jpeg, /path/x.cpp:171, why".
    why = re.sub(r"^[^\n]*?\.(?:cpp|cu|h):\d+,\s*", "", str(exc)).splitlines()
    return f"JPEG decoder: {why[0] if why else type(exc).__name__}"[:300]


def _preprocess(img: torch.Tensor, side: int, interpolation: str) -> torch.Tensor:
    """uint8 [3, H, W] -> float [3, side, side] in 0..1: resize the short side to side,
    centre crop, as open_clip's Resize + CenterCrop + ToTensor do on a PIL image."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    mode = InterpolationMode(interpolation)
    # On uint8, torchvision resizes in float and rounds and clamps back to 8 bits, which
    # is what PIL's resampler returns; the crop offsets are torchvision's for PIL too.
    img = F.resize(img, [side], interpolation=mode, antialias=True)
    img = F.center_crop(img, [side, side])
    return img.float().div_(255.0)


# ---- the pipeline's GPU route ------------------------------------------------------------
def route(embedder: Any, needs_pictures: bool) -> EvalTransform | None:
    """How the pipeline's JPEGs are decoded on the GPU, or None for the CPU path: only
    when the settings put the model on CUDA (EVERLOOK_DEVICE=cuda; "auto" keeps the CPU
    decoders rather than load torch to ask) and no inline stage needs the decoded
    pictures themselves."""
    if needs_pictures or not str(getattr(embedder, "device", "cpu")).startswith("cuda"):
        return None
    transform = getattr(embedder, "transform", None)  # loads the torch model: it runs here
    return eval_transform(transform) if transform is not None else None


def take(raw: Any, limits: Any) -> tuple[Any, tuple[int, int], dict[str, Any]] | None:
    """What the pool records for a JPEG the GPU will decode with its batch: (format,
    oriented (width, height), EXIF), from the header alone; None when the CPU path must
    decode it (see gpu_decodable)."""
    from indexer.media import open_image, read_exif

    orientation, why = gpu_decodable(raw.data, limits.max_pixels)
    if why is not None:
        return None
    head = open_image(raw.data, limits)
    w, h = head.size if orientation < 5 else head.size[::-1]
    return head.format or "JPEG", (w, h), read_exif(head)


def pixels_for(
    jpegs: Sequence[bytes], prep: EvalTransform, device: str, limits: Any,
    fallback: Any,
) -> list[Any]:  # fmt: skip
    """The batch's model inputs on the device, in order; for a JPEG nvJPEG turned away,
    fallback(data) (the CPU decoder and preprocessing), whose MediaError the caller
    records for that file alone."""
    got = decode_preprocess_batch(list(jpegs), prep.side, prep.mean, prep.std,
                                  prep.interpolation, device=device,
                                  max_pixels=limits.max_pixels)  # fmt: skip
    out: list[Any] = []
    for data, row, why in zip(jpegs, got.pixels, got.errors, strict=True):
        out.append(row if why is None else fallback(data))
    return out
