"""Sounds through the whole path: files in a library -> decode -> clips -> ImageBind ->
index -> search, from the CLI; and bad audio as data (each file its own failure)."""

from __future__ import annotations

import io
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import SHARED_MEDIA, TINY_IMAGEBIND
from tests.helpers import jpeg_bytes, make_library, picture, save, tone

pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL


@pytest.fixture
def sound_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {"EVERLOOK_SPACES": '["clip", "imagebind"]',
              "EVERLOOK_IMAGEBIND_MODEL": TINY_IMAGEBIND}  # fmt: skip
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return {**env, **values}


def _parts() -> Any:
    from everlook.settings import Settings
    from everlook.wiring import Parts

    return Parts(Settings())


def wav(samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def bad_sounds(folder: Path) -> dict[str, str]:
    """name -> words its recorded reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    good = wav(0.3 * np.sin(np.linspace(0, 2000, 32000)).astype(np.float32))
    header = (b"RIFF" + struct.pack("<I", 0xFFFFFF24) + b"WAVE" + b"fmt "
              + struct.pack("<IHHIIHH", 16, 1, 2, 44100, 44100 * 4, 4, 16)
              + b"data" + struct.pack("<I", 0xFFFFFF00) + bytes(44100 * 4))  # fmt: skip
    nan = np.full(16000, 0.1, np.float32)
    nan[5000] = np.nan
    files = {
        "empty.wav": (b"", "empty file"),
        "cut.wav": (good[: len(good) // 2], "truncated"),
        "hours.wav": (header, "max_audio_seconds"),
        "noise.mp3": (os.urandom(20000), "not a recognised"),
        "nothing.wav": (wav(np.zeros(0, np.float32)), "no audio samples"),
        "nan.wav": (wav(nan, subtype="FLOAT"), "NaN"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return {name: why for name, (_, why) in files.items()}


def test_bad_audio_is_one_recorded_failure_each_and_nothing_else_is_disturbed(
    sound_env, tmp_path: Path, cli
):
    lib = tmp_path / "lib"
    make_library(lib, 2)
    tone(lib / "good.wav", 440)
    # Wrong extensions: the content decides what an item is.
    shutil.copy(lib / "good.wav", lib / "sound-named.jpg")
    (lib / "pic-named.wav").write_bytes(jpeg_bytes(picture(5)))
    expected = bad_sounds(lib / "bad")
    res = cli("index", str(lib))
    assert res.exit_code == 1, res.stdout + res.stderr  # 1: some files failed
    _, stats = cli.json("stats")
    reasons = {Path(f["path"]).name: f["reason"] for f in stats["failures"]}
    assert set(reasons) == set(expected)
    for name, words in expected.items():
        assert words in reasons[name], (name, reasons[name])
    assert stats["items"]["by_kind"] == {"image": 3, "audio": 1}  # copies are one item
    parts = _parts()
    kinds = {Path(p).name: parts.catalog.items_of_kind([parts.catalog.item_id_for_path(p)])
             for p in map(str, lib.iterdir()) if os.path.isfile(p)}  # fmt: skip
    assert list(kinds["sound-named.jpg"].values()) == ["audio"]
    assert list(kinds["pic-named.wav"].values()) == ["image"]
    ib = parts.spaces["imagebind"]
    assert len(parts.catalog.embedding_ids("imagebind", ib.embedder.model_id)) == 4


def test_searching_by_sound_text_or_picture_from_the_cli(sound_env, tmp_path: Path, cli):
    lib = tmp_path / "lib"
    make_library(lib, 3)
    low = tone(lib / "low.wav", 220)
    tone(lib / "high.flac", 2500, seconds=3.0, rate=22050, channels=2)
    assert cli("index", str(lib)).exit_code == 0
    code, rows = cli.json("search", "--audio", str(low), "-k", "10")
    assert code == 0 and rows[0]["path"] == str(low) and rows[0]["kind"] == "audio"
    assert rows[0]["duration_s"] == pytest.approx(2.5) and len(rows) == 5
    code, rows = cli.json("search", "rain on a window", "--kind", "audio")
    assert code == 0 and {r["kind"] for r in rows} == {"audio"} and len(rows) == 2
    photo = save(picture(42), tmp_path / "query.png")
    code, rows = cli.json("search", "--image", str(photo), "--kind", "audio")
    assert code == 0 and {r["kind"] for r in rows} == {"audio"}
    code, rows = cli.json("search", "--like", str(low), "--kind", "audio")
    assert code == 0 and [r["path"] for r in rows] == [str(lib / "high.flac")]
    text = cli("search", "--audio", str(low))
    assert "[sound, 2.5 s]" in text.stdout
    shown = cli("show", str(lib / "high.flac")).stdout
    assert "(audio, FLAC, 3.00 s, 22050 Hz, 2 channels," in shown
    res = cli("search", "--audio", str(low), "--space", "clip")
    assert res.exit_code == 2 and "cannot embed sound" in res.stderr
    res = cli("search", "--audio", str(tmp_path / "query.png"))
    assert res.exit_code == 2 and "cannot use" in res.stderr


@pytest.fixture(scope="module")
def shared_audio() -> Path:
    folder = SHARED_MEDIA / "audio"
    if not folder.is_dir():
        pytest.skip(f"the shared media ({folder}) is not on this machine")
    return folder


def test_real_recordings_go_through_decode_clips_embedding_index_and_search(
    sound_env, shared_audio: Path, tmp_path: Path, cli
):
    sounds = (".ogg", ".flac", ".mp3", ".wav")
    clips = sorted(p for p in shared_audio.iterdir() if p.suffix in sounds)
    res = cli("index", str(shared_audio))
    assert res.exit_code == 0, res.stdout + res.stderr
    _, stats = cli.json("stats")
    assert stats["items"]["by_kind"] == {"audio": len(clips)} and stats["failures"] == []
    parts = _parts()
    ib = parts.spaces["imagebind"]
    assert ib.index.count() == len(clips)
    for clip in clips[:: max(1, len(clips) // 5)]:
        item = parts.catalog.item(parts.catalog.item_id_for_path(str(clip)))
        assert item["duration_s"] > 0.5 and item["sample_rate"] >= 8000
        code, rows = cli.json("search", "--audio", str(clip), "-k", "1")
        assert code == 0 and rows[0]["path"] == str(clip), clip.name
        assert rows[0]["score"] == pytest.approx(1.0, abs=1e-4)
