"""What an upload is, judged by its content (never its name or declared type)."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from api.errors import ApiError
from indexer.audio import DecodedAudio, decode_audio
from indexer.media import Limits, MediaError, decode_image
from indexer.sniff import sniff_audio

# Audio containers by their first bytes, for telling "a sound" from "not media at all".
_AUDIO_MAGIC = (
    (0, b"RIFF", 8, b"WAVE"), (0, b"fLaC", None, None), (0, b"OggS", None, None),
    (0, b"ID3", None, None), (4, b"ftypM4A", None, None), (0, b"FORM", 8, b"AIFF"),
    # What browsers record (MediaRecorder): WebM/Matroska (EBML) from Chrome and Firefox,
    # MP4 from Safari, whatever its brand.
    (0, b"\x1a\x45\xdf\xa3", None, None), (4, b"ftyp", None, None),
)  # fmt: skip


_IMAGE_MAGIC = (
    (0, b"\xff\xd8\xff"), (0, b"\x89PNG\r\n\x1a\n"), (0, b"GIF87a"), (0, b"GIF89a"),
    (8, b"WEBP"), (0, b"II*\x00"), (0, b"MM\x00*"), (0, b"BM"), (4, b"ftypheic"),
    (4, b"ftypheix"), (4, b"ftypmif1"), (4, b"ftypavif"), (4, b"ftypmsf1"),
)  # fmt: skip


def looks_like_image(data: bytes) -> bool:
    """By signature, so a damaged image (header intact or not) is told apart from a
    file that is not an image at all: the first is 422, the second 415."""
    return any(data[off : off + len(magic)] == magic for off, magic in _IMAGE_MAGIC)


def is_audio(data: bytes) -> bool:
    for off, magic, off2, magic2 in _AUDIO_MAGIC:
        if data[off : off + len(magic)] == magic and (
            off2 is None or data[off2 : off2 + len(magic2 or b"")] == magic2
        ):
            return True
    # An MPEG audio frame header: 11 sync bits, then a valid layer.
    return len(data) > 2 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0 and (data[1] & 6) != 0


def sniff(data: bytes) -> str:
    """'image', 'audio', or a 415 ApiError."""
    if not data:
        raise ApiError(422, "the upload is empty")
    if looks_like_image(data):
        return "image"
    if is_audio(data):
        return "audio"
    try:
        with Image.open(io.BytesIO(data)):
            return "image"
    except UnidentifiedImageError:
        pass
    except Exception:  # a known header that is damaged: an image, undecodable (422)
        return "image"
    raise ApiError(
        415, "unsupported file type: send an image (JPEG, PNG, WebP, GIF, TIFF, BMP, HEIC, "
        "AVIF) or a sound (WAV, FLAC, Ogg, MP3, M4A)",
    )  # fmt: skip


@dataclass
class UploadedImage:
    image: Image.Image
    format: str


def decode_upload_image(
    data: bytes, limits: Limits, draft_side: int | None = None
) -> UploadedImage:
    kind = sniff(data)
    if kind != "image":
        raise ApiError(415, f"this endpoint takes an image; the upload is {kind}")
    try:
        decoded = decode_image(data, limits, draft_side)
    except MediaError as exc:
        raise ApiError(422, f"cannot decode the image: {exc}") from exc
    return UploadedImage(decoded.image, decoded.format)


def decode_upload_audio(data: bytes, limits: Limits, rate: int) -> DecodedAudio:
    """A recording, decoded to mono at rate; 415 for what is not a sound we decode, 422
    for a sound that is damaged, empty or over the limits."""
    kind = sniff(data)
    if kind != "audio":
        raise ApiError(415, f"this endpoint takes a sound recording; the upload is {kind}")
    if sniff_audio(data[:64]) is None:
        # WebM and MP4/M4A: browsers record those, libsndfile does not read them. The web
        # page converts its recordings to WAV before sending.
        raise ApiError(415, "this sound container (WebM, MP4/M4A) is not decoded here: "
                       "send WAV, FLAC, Ogg (Vorbis, Opus) or MP3")  # fmt: skip
    try:
        return decode_audio(data, limits, rate)
    except MediaError as exc:
        raise ApiError(422, f"cannot decode the recording: {exc}") from exc
