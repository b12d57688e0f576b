"""Sound files: sniffed by content, decoded to 16 kHz mono, bad ones refused with a reason,
drawn as waveforms. Every file is generated here, in a temporary folder, except the real
clips of the shared media set."""

from __future__ import annotations

import csv
import io
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from indexer.audio import (
    audio_thumbnail,
    decode_audio,
    probe_audio,
    waveform_picture,
)
from indexer.media import Limits, MediaError, read_file
from indexer.sniff import kind_of, sniff_audio
from tests.helpers import jpeg_bytes, picture

LIMITS = Limits()
REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO.parent / "shared" / "data" / "media" / "audio"


def tone(freq: float, seconds: float, rate: int, amp: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def encode(x: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    """Bytes of ``x`` in a container; skips the test only where this libsndfile cannot
    write the format at all."""
    if fmt not in sf.available_formats() or subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"libsndfile {sf.__libsndfile_version__} cannot write {fmt}/{subtype}")
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def stored(tmp_path: Path, name: str, data: bytes) -> bytes:
    """Write the bytes under ``name`` and read them back the way the indexer does."""
    path = tmp_path / name
    path.write_bytes(data)
    return read_file(str(path), LIMITS).data


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


FORMATS = [
    # container, subtype, file rate, extension, sniffed as, reported format
    ("WAV", "PCM_16", 44100, "wav", "WAV", "WAV"),
    ("WAV", "FLOAT", 22050, "wav", "WAV", "WAV"),
    ("RF64", "PCM_24", 32000, "wav", "RF64", "RF64"),
    ("AIFF", "PCM_16", 8000, "aiff", "AIFF", "AIFF"),
    ("FLAC", "PCM_24", 48000, "flac", "FLAC", "FLAC"),
    ("OGG", "VORBIS", 44100, "ogg", "OGG/VORBIS", "OGG"),
    ("OGG", "OPUS", 48000, "opus", "OGG/OPUS", "OPUS"),
    ("MP3", "MPEG_LAYER_III", 44100, "mp3", "MP3", "MP3"),
]


@pytest.mark.parametrize(("fmt", "subtype", "rate", "ext", "sniffed", "name"), FORMATS)
def test_each_format_decodes_to_16_khz_mono_with_its_duration_rate_and_channels(
    tmp_path: Path, fmt: str, subtype: str, rate: int, ext: str, sniffed: str, name: str
):
    data = stored(tmp_path, f"clip.{ext}", encode(tone(440, 1.5, rate), rate, fmt, subtype))
    assert sniff_audio(data[:4096]) == sniffed
    out = decode_audio(data, LIMITS)
    assert (out.format, out.subtype) == (name, subtype)
    assert (out.sample_rate, out.channels, out.rate) == (rate, 1, 16000)
    assert out.samples.dtype == np.float32 and out.samples.ndim == 1
    # lossy codecs pad or trim a few milliseconds; the rest are exact
    assert out.duration_s == pytest.approx(1.5, abs=0.03 if name in ("MP3", "OPUS") else 1e-6)
    assert len(out.samples) == pytest.approx(out.duration_s * 16000, abs=2)
    assert np.isfinite(out.samples).all()
    assert rms(out.samples) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_stereo_at_44_1_khz_is_mixed_down_to_the_mean_of_its_channels(tmp_path: Path):
    both = np.stack([tone(440, 1.0, 44100, amp=0.6), tone(440, 1.0, 44100, amp=0.2)], axis=1)
    data = stored(tmp_path, "stereo.wav", encode(both, 44100, "WAV", "FLOAT"))
    out = decode_audio(data, LIMITS)
    assert (out.channels, out.sample_rate, out.rate) == (2, 44100, 16000)
    assert out.samples.ndim == 1
    assert rms(out.samples[1000:-1000]) == pytest.approx(0.4 / np.sqrt(2), rel=0.01)


def test_a_tone_above_the_new_nyquist_is_filtered_out_not_aliased():
    # 11 kHz cannot exist at 16 kHz (Nyquist 8 kHz): dropping samples would fold it to
    # 5 kHz at full level; a real resampler's low-pass removes it.
    data = encode(tone(11000, 2.0, 44100), 44100, "WAV", "FLOAT")
    out = decode_audio(data, LIMITS)
    attenuation_db = 20 * np.log10(rms(tone(11000, 2.0, 44100)) / rms(out.samples[800:-800]))
    assert attenuation_db >= 40


def test_a_1_khz_tone_keeps_its_frequency_and_level_through_resampling():
    out = decode_audio(encode(tone(1000, 2.0, 44100), 44100, "WAV", "FLOAT"), LIMITS)
    x = out.samples[800:-800]
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    peak_hz = np.argmax(spectrum) * 16000 / len(x)
    assert peak_hz == pytest.approx(1000, abs=2)
    assert 20 * np.log10(rms(x) / (0.5 / np.sqrt(2))) == pytest.approx(0, abs=0.1)


def test_a_file_at_the_target_rate_is_passed_through_unchanged():
    x = tone(300, 0.5, 16000)
    out = decode_audio(encode(x, 16000, "WAV", "FLOAT"), LIMITS)
    assert np.array_equal(out.samples, x)


def test_wav_bytes_named_jpg_are_sniffed_as_audio_and_decode(tmp_path: Path):
    data = stored(tmp_path, "photo.jpg", encode(tone(440, 0.5, 8000), 8000, "WAV", "PCM_16"))
    assert kind_of(data) == "audio"
    assert decode_audio(data, LIMITS).duration_s == pytest.approx(0.5)


def test_a_jpeg_named_wav_is_an_image_and_is_refused_as_audio(tmp_path: Path):
    data = stored(tmp_path, "song.wav", jpeg_bytes(picture(1)))
    assert kind_of(data) == "image"
    assert sniff_audio(data[:4096]) is None
    with pytest.raises(MediaError, match="content is an image, not audio"):
        decode_audio(data, LIMITS)


def test_random_bytes_named_mp3_end_in_a_media_error_not_a_decode(tmp_path: Path):
    data = stored(tmp_path, "noise.mp3", np.random.default_rng(7).bytes(50_000))
    assert kind_of(data) is None
    with pytest.raises(MediaError, match="not a recognised image or audio format"):
        decode_audio(data, LIMITS)


def test_random_bytes_almost_never_pass_for_audio_even_behind_one_valid_mpeg_header():
    rng = np.random.default_rng(11)
    assert not [1 for _ in range(3000) if sniff_audio(rng.bytes(4096)) is not None]
    # one valid MPEG-1 layer III header (128 kbit/s, 44.1 kHz) then noise: the second frame
    # header that would follow is missing, so it is not taken for MP3
    fake = [b"\xff\xfb\x90\x64" + rng.bytes(4092) for _ in range(3000)]
    assert not [1 for f in fake if sniff_audio(f) is not None]


def test_an_id3_tag_in_front_of_noise_is_refused_by_the_decoder():
    data = b"ID3\x04\x00\x00\x00\x00\x00\x00" + np.random.default_rng(3).bytes(20_000)
    assert sniff_audio(data) == "MP3"
    with pytest.raises(MediaError, match="unreadable MP3 audio"):
        decode_audio(data, LIMITS)


def test_a_zero_byte_file_is_refused_before_decoding(tmp_path: Path):
    (tmp_path / "empty.wav").touch()
    with pytest.raises(MediaError, match=r"empty file \(0 bytes\)"):
        read_file(str(tmp_path / "empty.wav"), LIMITS)
    with pytest.raises(MediaError, match="not a recognised image or audio format"):
        decode_audio(b"", LIMITS)


@pytest.mark.parametrize("fmt", ["WAV", "RF64", "AIFF"])
def test_a_wav_cut_in_half_is_truncated(tmp_path: Path, fmt: str):
    # libsndfile quietly shortens a data chunk that claims more than the file holds; the
    # claim is read from the chunk so the cut is seen
    whole = encode(tone(440, 2.0, 44100), 44100, fmt, "PCM_16")
    data = stored(tmp_path, "cut.wav", whole[: len(whole) // 2])
    with pytest.raises(MediaError, match=rf"truncated: the {fmt} header promises 2\.00 s"):
        decode_audio(data, LIMITS)


def test_a_flac_cut_in_half_is_truncated(tmp_path: Path):
    whole = encode(tone(440, 2.0, 44100), 44100, "FLAC", "PCM_16")
    data = stored(tmp_path, "cut.flac", whole[: len(whole) // 2])
    with pytest.raises(MediaError, match=r"truncated or damaged FLAC audio.*of 2\.00 s"):
        decode_audio(data, LIMITS)


@pytest.mark.parametrize("subtype", ["VORBIS", "OPUS"])
def test_an_ogg_cut_short_is_truncated(subtype: str):
    whole = encode(tone(440, 3.0, 48000), 48000, "OGG", subtype)
    for keep in (0.5, 0.95):
        with pytest.raises(MediaError, match="truncated: the Ogg stream stops in the middle"):
            decode_audio(whole[: int(len(whole) * keep)], LIMITS)


def wav_header(rate: int, channels: int, data_bytes: int) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2, channels * 2, 16)
    return (
        b"RIFF" + struct.pack("<I", (36 + data_bytes) & 0xFFFFFFFF) + b"WAVE"
        + b"fmt " + struct.pack("<I", 16) + fmt
        + b"data" + struct.pack("<I", data_bytes)
    )  # fmt: skip


def test_a_wav_header_claiming_hours_is_refused_before_any_big_allocation():
    # the data chunk claims 0xFFFFFF00 bytes (6.8 hours at 44.1 kHz stereo); one second follows
    data = wav_header(44100, 2, 0xFFFFFF00) + np.zeros(44100 * 2, np.int16).tobytes()
    tracemalloc.start()
    try:
        with pytest.raises(MediaError, match=r"6:45:\d\d long .*setting max_audio_seconds"):
            decode_audio(data, LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"{peak} bytes allocated for a refused file"


def test_a_flac_header_claiming_hours_is_refused_by_the_duration_limit():
    data = bytearray(encode(tone(440, 1.0, 44100), 44100, "FLAC", "PCM_16"))
    # STREAMINFO's total sample count: the low 36 bits of the 8 bytes at offset 18
    (packed,) = struct.unpack_from(">Q", data, 18)
    struct.pack_into(">Q", data, 18, packed & ~((1 << 36) - 1) | 44100 * 3600 * 5)
    with pytest.raises(MediaError, match="setting max_audio_seconds"):
        probe_audio(bytes(data), LIMITS)
    with pytest.raises(MediaError, match="setting max_audio_seconds"):
        decode_audio(bytes(data), LIMITS)


def test_a_flac_whose_header_does_not_know_its_length_still_decodes():
    data = bytearray(encode(tone(440, 1.0, 44100), 44100, "FLAC", "PCM_16"))
    (packed,) = struct.unpack_from(">Q", data, 18)
    struct.pack_into(">Q", data, 18, packed & ~((1 << 36) - 1))  # 0: "not known"
    assert probe_audio(bytes(data), LIMITS).duration_s is None
    assert decode_audio(bytes(data), LIMITS).duration_s == pytest.approx(1.0)


def test_a_wav_with_no_samples_has_no_audio_samples(tmp_path: Path):
    data = stored(tmp_path, "silent.wav", wav_header(16000, 1, 0))
    with pytest.raises(MediaError, match="no audio samples"):
        decode_audio(data, LIMITS)


def test_a_wav_ending_at_its_data_chunk_is_truncated():
    with pytest.raises(MediaError, match="truncated: the WAV header promises audio"):
        decode_audio(wav_header(16000, 1, 32000), LIMITS)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_samples_in_a_float_wav_are_refused(bad: float):
    x = tone(440, 1.0, 16000)
    x[8000] = bad
    with pytest.raises(MediaError, match=r"NaN or infinite sample values \(first at 0\.50 s\)"):
        decode_audio(encode(x, 16000, "WAV", "FLOAT"), LIMITS)


def test_samples_beyond_full_scale_in_a_float_wav_are_kept_not_clipped():
    out = decode_audio(encode(tone(50, 1.0, 16000, amp=2.0), 16000, "WAV", "FLOAT"), LIMITS)
    assert out.samples.max() == pytest.approx(2.0, rel=1e-3)


def test_audio_over_max_audio_seconds_is_refused_naming_the_setting():
    data = encode(tone(440, 3.0, 8000), 8000, "WAV", "PCM_16")
    short = Limits(max_audio_seconds=2.0)
    for check in (probe_audio, decode_audio):
        with pytest.raises(MediaError, match=r"3\.00 s long .*2\.00 s \(setting max_audio_second"):
            check(data, short)
    assert decode_audio(data, Limits(max_audio_seconds=3.0)).duration_s == pytest.approx(3.0)


def test_an_mp3_over_max_audio_seconds_is_stopped_while_decoding():
    # MP3 lengths from headers are estimates, so the limit is applied to what decodes
    data = encode(tone(440, 3.0, 44100), 44100, "MP3", "MPEG_LAYER_III")
    with pytest.raises(MediaError, match=r"longer than the limit .*setting max_audio_seconds"):
        decode_audio(data, Limits(max_audio_seconds=1.0))


def test_sound_over_max_audio_bytes_is_refused_when_read_and_has_its_own_limit(tmp_path: Path):
    path = tmp_path / "long.flac"
    path.write_bytes(encode(tone(440, 2.0, 44100), 44100, "WAV", "PCM_16"))  # 176 KB
    with pytest.raises(MediaError, match=r"over the limit of 100000 \(setting max_audio_bytes\)"):
        read_file(str(path), Limits(max_audio_bytes=100_000))
    # an image limit that would refuse it does not apply to sound, and the reverse
    assert read_file(str(path), Limits(max_file_bytes=1000)).size == path.stat().st_size
    img = tmp_path / "photo.mp3"
    img.write_bytes(jpeg_bytes(picture(2, (400, 300))))
    with pytest.raises(MediaError, match=r"setting max_file_bytes"):
        read_file(str(img), Limits(max_file_bytes=1000, max_audio_bytes=10**9))


def test_probe_reads_the_header_only():
    info = probe_audio(encode(tone(440, 1.25, 22050, channels=2), 22050, "FLAC", "PCM_16"), LIMITS)
    assert (info.format, info.subtype, info.sample_rate, info.channels) == (
        "FLAC", "PCM_16", 22050, 2,
    )  # fmt: skip
    assert (info.frames, info.duration_s) == (27562, pytest.approx(1.25, abs=1e-4))
    assert not hasattr(info, "samples")


def test_waveform_picture_is_rgb_of_the_asked_size_for_long_and_short_signals():
    for n in (0, 5, 511, 512, 16000 * 60 + 7):
        img = waveform_picture(tone(3, n / 16000, 16000), width=300, height=90)
        assert (img.mode, img.size) == ("RGB", (300, 90))


def ink_rows(img: Image.Image) -> np.ndarray:  # rows holding anything but the background colour
    background = np.asarray(waveform_picture(np.zeros(1, np.float32), 4, 4))[0, 0]
    return np.flatnonzero((np.asarray(img) != background).any(axis=(1, 2)))


def test_silence_draws_a_flat_line_across_the_middle():
    img = waveform_picture(np.zeros(16000, np.float32), width=200, height=64)
    assert set(ink_rows(img)) <= {31, 32}
    quiet_hiss = np.random.default_rng(0).normal(0, 1e-5, 16000).astype(np.float32)
    assert set(ink_rows(waveform_picture(quiet_hiss, width=200, height=64))) <= {30, 31, 32, 33}


def test_a_loud_signal_fills_the_height_in_the_accent_colour():
    img = waveform_picture(tone(440, 1.0, 16000, amp=1.0), width=200, height=64)
    assert list(ink_rows(img)) == list(range(64))
    px = np.asarray(img)
    accent = px[0, 100]
    assert (px[0] == accent).all() and (px[63] == accent).all(), "one colour, edge to edge"
    assert len({tuple(accent), tuple(px[0, 0]), tuple(px[32, 0])}) == 1


def test_the_envelope_follows_the_sound_from_left_to_right():
    x = np.concatenate([np.zeros(8000, np.float32), tone(440, 0.5, 16000, amp=0.8)])
    rows = np.asarray(waveform_picture(x, width=100, height=50))
    inked = (rows != rows[0, 0]).any(axis=2).sum(axis=0)  # ink per column
    assert inked[:45].max() <= 2 and inked[55:].min() >= 45


def test_audio_thumbnail_draws_the_decoded_sound():
    img = audio_thumbnail(encode(tone(440, 1.0, 44100), 44100, "FLAC", "PCM_16"), LIMITS, 128, 40)
    assert (img.mode, img.size) == ("RGB", (128, 40))
    assert len(ink_rows(img)) == 40


def manifest() -> dict[str, dict[str, str]]:
    for path in (CLIPS / "MANIFEST.tsv", CLIPS.parent / "MANIFEST.tsv"):
        if path.exists():
            with path.open(newline="", encoding="utf-8") as fh:
                return {Path(r["path"]).name: r for r in csv.DictReader(fh, delimiter="\t")}
    return {}


def clip_paths() -> list[Path]:
    if not CLIPS.is_dir():
        return []
    return sorted(p for p in CLIPS.iterdir() if p.is_file() and p.name != "MANIFEST.tsv")


@pytest.mark.parametrize("path", clip_paths() or [None], ids=lambda p: p.name if p else "none")
def test_each_real_clip_decodes_to_finite_samples_of_its_recorded_length(path: Path | None):
    if path is None:
        pytest.skip(f"the shared audio clips are not here ({CLIPS})")
    out = decode_audio(read_file(str(path), LIMITS).data, LIMITS)
    assert out.duration_s > 0 and len(out.samples) > 0
    assert np.isfinite(out.samples).all()
    row = manifest().get(path.name)
    if row is None:
        return
    seconds = row.get("pixels_or_duration", "").removesuffix("s").strip()
    if seconds:
        # The listed MP3 lengths include the encoder's delay and padding (about 50 ms),
        # which gapless decoding drops: the decoded MP3s match their Ogg twins exactly.
        tolerance = 0.06 if out.format == "MP3" else 0.006
        assert out.duration_s == pytest.approx(float(seconds), abs=tolerance)
    described = row.get("format", "").split()
    if "Hz" in described:
        assert out.sample_rate == int(described[described.index("Hz") - 1])
    if "ch" in described:
        assert out.channels == int(described[described.index("ch") - 1])
