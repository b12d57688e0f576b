"""Decoding sound files to the mono signal the audio embedders take, and drawing them.

The container is sniffed from content (``indexer.sniff``), never the extension; libsndfile
(through soundfile) decodes WAV, RF64, AIFF, FLAC, Ogg Vorbis/Opus and MPEG audio from the
bytes already in memory. The header is checked before decoding, the signal is decoded in
blocks, mixed to mono and resampled as it streams, so only the target-rate mono signal is
ever held. Every way a file can be bad ends in ``MediaError`` with a sentence a user can
act on, as in ``indexer.media``.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from indexer.media import Limits, MediaError, _sniff_hint
from indexer.sniff import SNIFF_BYTES, kind_of, sniff_audio

if TYPE_CHECKING:
    import soundfile

# 64k frames a block: 256 KB a channel in float32, few enough calls into libsndfile and
# soxr that the per-call cost vanishes, small beside the output of an hour-long file.
BLOCK_FRAMES = 65536
MAX_CHANNELS = 64  # ambisonics and multitrack recorders stay well under; bounds a block
MIN_RATE, MAX_RATE = 1000, 768_000
# libsndfile's "length not known" (a FLAC stream written without seeking back).
_UNKNOWN_FRAMES = 1 << 62
_OGG_MAX_PAGE = 27 + 255 + 255 * 255
_OGG_CUT = "truncated: the Ogg stream stops in the middle (its last page is missing)"
# libsndfile's frame counts for WAV, AIFF, FLAC, Vorbis and Opus are exact (every clip
# in the tests decodes to the frame), so a shortfall of more than 64 frames or 0.1%
# (writers that count a pad byte or a partial last frame) is a cut. MP3 is exempt: see
# _checked_header.
_SLACK_FRAMES, _SLACK_FRACTION = 64, 0.001


@dataclass(frozen=True)
class AudioInfo:
    """What the header says. ``frames``/``duration_s`` are None when the header does not
    know the length; for MP3 they are libsndfile's estimate (exact only with a Xing/LAME
    header)."""

    format: str  # WAV, RF64, AIFF, FLAC, OGG (Vorbis), OPUS, MP3
    subtype: str  # libsndfile's: PCM_16, FLOAT, VORBIS, OPUS, MPEG_LAYER_III, ...
    sample_rate: int
    channels: int
    frames: int | None
    duration_s: float | None


@dataclass
class DecodedAudio:
    samples: np.ndarray  # float32, mono, at ``rate``
    rate: int
    format: str
    subtype: str
    sample_rate: int  # the file's
    channels: int  # the file's
    duration_s: float  # of what was decoded, at the file's rate
    frames: int  # decoded, at the file's rate


def probe_audio(data: bytes, limits: Limits) -> AudioInfo:
    """Read and check the header only: what ``decode_audio`` would refuse before decoding,
    this refuses too."""
    with _open(data) as sf:
        return _checked_header(sf, data, limits)[0]


def decode_audio(data: bytes, limits: Limits, rate: int = 16000) -> DecodedAudio:
    """Decode to float32 mono at ``rate`` Hz (channels averaged, soxr HQ resampling)."""
    with _open(data) as sf:
        info, promised = _checked_header(sf, data, limits)
        samples, frames = _decode_blocks(sf, info, promised, limits, rate)
    return DecodedAudio(
        samples=samples,
        rate=rate,
        format=info.format,
        subtype=info.subtype,
        sample_rate=info.sample_rate,
        channels=info.channels,
        duration_s=frames / info.sample_rate,
        frames=frames,
    )


def audio_thumbnail(
    data: bytes, limits: Limits, width: int = 512, height: int = 128
) -> Image.Image:
    """The waveform picture of a sound file. Decodes at 4 kHz: a 512-pixel envelope needs
    nothing finer, and the output is a quarter of the 16 kHz one. Where the 16 kHz signal
    is already at hand, ``waveform_picture(decoded.samples)`` saves the second decode."""
    return waveform_picture(decode_audio(data, limits, rate=4000).samples, width, height)


_BACKGROUND = np.array([246, 247, 249], np.uint8)
_CENTRE = np.array([200, 205, 214], np.uint8)
_ACCENT = np.array([47, 111, 214], np.uint8)
# Quiet recordings are scaled up to fill the picture, but by no more than this (24 dB):
# hiss under a silent stretch should look like a line, not like a loud signal.
_MAX_GAIN = 16.0


def waveform_picture(samples: np.ndarray, width: int = 512, height: int = 128) -> Image.Image:
    """RGB picture of the min/max envelope, one pixel column per stretch of samples."""
    if width < 1 or height < 1:
        raise ValueError(f"picture size must be positive, not {width}x{height}")
    x = np.asarray(samples, dtype=np.float32).ravel()
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:] = _BACKGROUND
    mid = (height - 1) / 2
    pixels[math.floor(mid) : math.ceil(mid) + 1] = _CENTRE
    if x.size:
        # Column edges spread the remainder over the picture instead of dropping it; with
        # fewer samples than columns, neighbouring columns share a sample. reduceat is one
        # vectorised pass, an hour at 16 kHz (58M samples) in a fraction of a second.
        starts = (np.arange(width, dtype=np.int64) * x.size) // width
        # NaN/inf (decode_audio never gives them, callers might) are cleaned per column,
        # not per sample: cleaning an hour of samples would cost more than the envelope.
        lo = np.nan_to_num(np.minimum.reduceat(x, starts), nan=0.0, neginf=-1.0, posinf=1.0)
        hi = np.nan_to_num(np.maximum.reduceat(x, starts), nan=0.0, neginf=-1.0, posinf=1.0)
        peak = float(max(-lo.min(), hi.max()))
        gain = min(1.0 / peak, _MAX_GAIN) if peak > 0 else 0.0
        top = np.floor((1.0 - np.clip(hi * gain, -1, 1)) * mid).astype(np.int64)
        bottom = np.ceil((1.0 - np.clip(lo * gain, -1, 1)) * mid).astype(np.int64)
        rows = np.arange(height)[:, None]
        pixels[(rows >= top[None, :]) & (rows <= bottom[None, :])] = _ACCENT
    return Image.fromarray(pixels, "RGB")


@contextmanager
def _open(data: bytes) -> Iterator[Any]:
    """A soundfile.SoundFile over the bytes, for audio only, closed on exit; libsndfile's
    refusals become MediaError."""
    import soundfile  # heavy (loads libsndfile), and only audio needs it

    name = sniff_audio(data[:SNIFF_BYTES])
    if name is None:
        if kind_of(data) == "image":
            raise MediaError("content is an image, not audio")
        raise MediaError(f"not a recognised image or audio format ({unknown_format_hint(data)})")
    try:
        sf = _forward_only()(io.BytesIO(data))
    except soundfile.LibsndfileError as exc:
        if name.startswith("OGG") and _ogg_cut(data):
            raise MediaError(_OGG_CUT) from exc
        raise MediaError(
            f"unreadable {name} audio: {_reason(exc)} (the file is damaged or cut short, "
            "or uses a codec this build cannot read)"
        ) from exc
    except Exception as exc:
        raise MediaError(f"unreadable {name} audio: {exc}") from exc
    try:
        yield sf
    finally:
        sf.close()


@cache
def _forward_only() -> type:
    import soundfile

    class ForwardOnly(soundfile.SoundFile):
        # soundfile seeks to "where it was + frames read" after every read, and refuses
        # to seek past the header's frame count: that breaks FLAC of unknown length and
        # MP3 whose length estimate is short, and costs an MP3 re-sync per block. Decoding
        # only reads forward, so that bookkeeping is switched off.
        def seekable(self) -> bool:
            return False

    return ForwardOnly


def unknown_format_hint(data: bytes) -> str:
    """Why a file is neither audio nor image, said in terms a user recognises."""
    head = data[:64]
    if head[4:8] == b"ftyp":
        return "an MP4/M4A/MOV container; AAC and video files are not supported"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "a WebM/Matroska container; these are not supported"
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0:
        return "an AAC (ADTS) stream; AAC is not supported"
    return _sniff_hint(data)


def _reason(exc: Exception) -> str:
    # LibsndfileError's str() names the BytesIO object; error_string is just the reason.
    text = str(getattr(exc, "error_string", "") or exc).strip()
    return text.removeprefix("Error : ").rstrip(".")


def _checked_header(
    sf: soundfile.SoundFile, data: bytes, limits: Limits
) -> tuple[AudioInfo, int | None]:
    """The header's facts, checked; and the frame count it promises, for the truncation
    check (None where that count cannot be trusted: unknown, or an MP3 estimate)."""
    fmt = "WAV" if sf.format == "WAVEX" else str(sf.format)
    subtype = str(sf.subtype)
    if fmt == "OGG" and subtype == "OPUS":
        fmt = "OPUS"
    rate, channels = int(sf.samplerate), int(sf.channels)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise MediaError(f"{fmt} header gives an implausible sample rate of {rate} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise MediaError(f"{fmt} audio has {channels} channels; at most {MAX_CHANNELS} work")
    if data.startswith(b"OggS") and _ogg_cut(data):
        # Ogg has no length header: libsndfile takes the length from the last page it
        # finds, so a cut file would decode as a shorter, "complete" one.
        raise MediaError(_OGG_CUT)
    raw_frames = int(sf.frames)
    frames = None if raw_frames >= _UNKNOWN_FRAMES else raw_frames
    promised = None if frames is None else _promised_frames(data, fmt, frames)
    if frames == 0:
        if promised:
            raise MediaError(f"truncated: the {fmt} header promises audio but none is there")
        raise MediaError(f"no audio samples (the {fmt} header says the file holds none)")
    if promised is not None and fmt != "MP3":
        seconds = promised / rate
        if seconds > limits.max_audio_seconds:
            raise MediaError(
                f"audio is {_clock(seconds)} long by its header, over the limit of "
                f"{_clock(limits.max_audio_seconds)} (setting max_audio_seconds)"
            )
    if fmt == "MP3":
        # mpg123's count is exact with a Xing/LAME header and an estimate from the first
        # frame's bitrate without one (VBR files can be off by half). Too loose to call a
        # file truncated or too long: MP3 is checked against max_audio_seconds as it
        # decodes, and a cut MP3 is what it looks like, a shorter sound.
        promised = None
    info = AudioInfo(
        fmt, subtype, rate, channels, frames, frames / rate if frames is not None else None
    )
    return info, promised


def _promised_frames(data: bytes, fmt: str, frames: int) -> int:
    """Frames the header promises. libsndfile trims a WAV/AIFF data chunk that claims more
    bytes than the file holds to what is there (so a cut WAV would pass silently), so the
    claim is read from the chunk itself and scaled by libsndfile's own frame count."""
    if fmt not in ("WAV", "RF64", "AIFF", "AIFC"):
        return frames
    chunk = _data_chunk(data)
    if chunk is None:
        return frames
    offset, claimed = chunk
    present = len(data) - offset
    if claimed <= present:
        return frames
    # frames == 0: the file ends at the data chunk; the claim (bytes) only says "some".
    return math.ceil(frames * claimed / present) if frames else claimed


def _data_chunk(data: bytes) -> tuple[int, int] | None:
    """(offset, claimed size) of the sample data in a RIFF/RIFX/RF64/AIFF file, or None
    when the header does not say (streamed WAVs write 0xFFFFFFFF)."""
    order = ">" if data[:4] in (b"RIFX", b"FORM") else "<"
    want = b"SSND" if data[:4] == b"FORM" else b"data"
    pos, ds64_size = 12, None
    for _ in range(256):  # bounded: a crafted chunk list cannot make this walk forever
        if pos + 8 > len(data):
            return None
        cid = data[pos : pos + 4]
        (size,) = struct.unpack_from(order + "I", data, pos + 4)
        if cid == b"ds64" and pos + 24 <= len(data):
            (ds64_size,) = struct.unpack_from("<Q", data, pos + 16)  # after riffSize
        if cid == want:
            if want == b"SSND":  # offset and block size fields come before the samples
                return pos + 16, max(size - 8, 0)
            if size == 0xFFFFFFFF:
                return None if ds64_size is None else (pos + 8, ds64_size)
            return pos + 8, size
        pos += 8 + size + (size & 1)  # chunks are padded to even sizes
    return None


def _ogg_cut(data: bytes) -> bool:
    """Whether an Ogg file lacks its end: the last page is cut short, or the last whole
    page does not carry the end-of-stream flag that every encoder sets on it."""
    floor = max(0, len(data) - _OGG_MAX_PAGE - SNIFF_BYTES)
    pos = data.rfind(b"OggS", floor)
    while pos >= 0:
        if pos + 27 <= len(data) and data[pos + 4] == 0:  # version 0: a page header
            table = data[pos + 27 : pos + 27 + data[pos + 26]]
            if len(table) < data[pos + 26]:
                return True
            if pos + 27 + len(table) + sum(table) > len(data):
                return True
            return not data[pos + 5] & 0x04
        pos = data.rfind(b"OggS", floor, pos)
    return True


def _decode_blocks(
    sf: soundfile.SoundFile, info: AudioInfo, promised: int | None, limits: Limits, rate: int
) -> tuple[np.ndarray, int]:
    import soundfile
    import soxr

    src = info.sample_rate
    limit_frames = int(limits.max_audio_seconds * src)
    # Unknown length: start with a minute and grow, rather than reserve the whole limit.
    expected = min(info.frames or 60 * src, limit_frames)
    out = _Signal(math.ceil(expected * rate / src) + 1024)
    # Streaming keeps the filter state across blocks, so block edges leave no seams.
    stream = soxr.ResampleStream(src, rate, 1, dtype="float32", quality="HQ")
    block = np.empty((BLOCK_FRAMES, info.channels), np.float32)
    done = 0
    while True:
        try:
            got = sf.read(out=block)
        except soundfile.LibsndfileError as exc:
            # soundfile raises without saying how much of the block it decoded, so the
            # place is given as the block's span.
            upto = done + BLOCK_FRAMES if promised is None else min(done + BLOCK_FRAMES, promised)
            raise MediaError(
                f"truncated or damaged {info.format} audio: decoding failed between "
                f"{_clock(done / src)} and {_clock(upto / src)}{_of(promised, src)} "
                f"({_reason(exc)})"
            ) from exc
        n = len(got)
        if n == 0:
            break
        mono = got[:, 0] if info.channels == 1 else got.mean(axis=1, dtype=np.float32)
        if not np.isfinite(mono).all():
            bad = done + int(np.argmin(np.isfinite(mono)))
            raise MediaError(
                f"{info.format} audio holds NaN or infinite sample values (first at "
                f"{_clock(bad / src)}); the file is damaged"
            )
        done += n
        if done > limit_frames:
            raise MediaError(
                f"audio is longer than the limit of {_clock(limits.max_audio_seconds)} "
                "(setting max_audio_seconds)"
            )
        mono = np.ascontiguousarray(mono)
        out.add(mono.copy() if src == rate else stream.resample_chunk(mono))
    if done == 0:
        raise MediaError(f"no audio samples (the {info.format} stream decodes to nothing)")
    if promised is not None and not _complete(done, promised):
        raise MediaError(
            f"truncated: the {info.format} header promises {_clock(promised / src)} but the "
            f"file holds {_clock(done / src)}"
        )
    if src != rate:
        out.add(stream.resample_chunk(np.empty(0, np.float32), last=True))
    return out.result(), done


def _complete(done: int, promised: int) -> bool:
    return promised - done <= max(_SLACK_FRAMES, promised * _SLACK_FRACTION)


class _Signal:
    """The output, grown in place: preallocated from the header's length (capped by the
    limit), doubled only when an estimate was short, trimmed at the end without a copy."""

    def __init__(self, capacity: int) -> None:
        self.buf = np.empty(max(capacity, 1), np.float32)
        self.n = 0

    def add(self, x: np.ndarray) -> None:
        end = self.n + len(x)
        if end > len(self.buf):
            grown = np.empty(max(2 * len(self.buf), end), np.float32)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n : end] = x
        self.n = end

    def result(self) -> np.ndarray:
        self.buf.resize(self.n, refcheck=False)  # no views of buf exist yet
        return self.buf


def _clock(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2f} s"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _of(promised: int | None, rate: int) -> str:
    return f" of {_clock(promised / rate)}" if promised is not None else ""
