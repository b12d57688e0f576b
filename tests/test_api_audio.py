"""The API with sound: searching by a recording, sounds by text or picture, playing
them, their waveform thumbnails; and every way an audio upload can be wrong."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from tests.api_support import Api, error_of
from tests.conftest import TINY_IMAGEBIND, only_these_settings
from tests.helpers import jpeg_bytes, make_library, picture, tone


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def sound_api(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Api]:
    """A library of pictures and sounds served in-process, its catalog on SQLite, then
    on PostgreSQL."""
    from api import create_app
    from everlook.settings import Settings
    from everlook.wiring import Parts
    from tests.conftest import catalog_url

    base = tmp_path_factory.mktemp("sound-api")
    lib = base / "lib"
    make_library(lib, 3)
    tone(lib / "sounds" / "low.wav", 220)
    tone(lib / "sounds" / "high.flac", 3000, seconds=4.0, rate=44100, channels=2)
    tone(lib / "sounds" / "mid.ogg", 880, seconds=1.5, fmt="OGG")
    with pytest.MonkeyPatch.context() as mp:
        only_these_settings(mp, {
            "EVERLOOK_HOME": str(base / "home"), "EVERLOOK_MODEL_DIR": str(model_dir),
            "EVERLOOK_CLIP_MODEL": "everlook-tiny", "EVERLOOK_CLIP_PRETRAINED": "seed0",
            "EVERLOOK_DEVICE": "cpu", "EVERLOOK_STAGES": "[]",
            "EVERLOOK_SPACES": '["clip", "imagebind"]',
            "EVERLOOK_IMAGEBIND_MODEL": TINY_IMAGEBIND,
            "EVERLOOK_UPLOAD_MAX_BYTES": str(400_000),
            "EVERLOOK_DATABASE_URL": catalog_url(request.param, base / "catalog.db", request),
        })  # fmt: skip
        mp.chdir(base)
        parts = Parts(Settings())
        report = parts.pipeline().run([str(lib)])
        assert report.failed == [] and report.new == 6
        svc = parts.api_services([str(lib)])
        with TestClient(create_app(svc, background=False),
                        raise_server_exceptions=False) as client:  # fmt: skip
            yield Api(client, svc, parts, lib)


def wav_bytes(freq: float, seconds: float = 2.0, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(seconds * rate)) / rate
    sf.write(buf, (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate, format="WAV")
    return buf.getvalue()


def post_audio(api: Api, data: bytes, name: str = "q.wav", **params: Any) -> Any:
    return api.client.post("/api/search/audio", params=params, files={"file": (name, data)})


def test_a_recording_finds_its_own_sound_first_with_pictures_and_sounds_after(sound_api: Api):
    data = (sound_api.library / "sounds" / "low.wav").read_bytes()
    r = post_audio(sound_api, data, k=10)
    assert r.status_code == 200, r.text
    rows = r.json()["results"]
    assert rows[0]["path"].endswith("low.wav") and rows[0]["score"] == pytest.approx(1, abs=1e-4)
    assert rows[0]["kind"] == "audio" and rows[0]["duration_s"] == pytest.approx(2.5, abs=0.01)
    assert {x["kind"] for x in rows} == {"image", "audio"} and len(rows) == 6
    only_pictures = post_audio(sound_api, data, kind="image").json()["results"]
    assert {x["kind"] for x in only_pictures} == {"image"} and len(only_pictures) == 3


def test_sounds_are_found_by_text_and_by_a_picture_through_imagebind(sound_api: Api):
    by_text = sound_api.ok("/api/search", params={"q": "rain on a window", "kind": "audio"})
    assert {x["kind"] for x in by_text["results"]} == {"audio"}
    assert len(by_text["results"]) == 3
    r = sound_api.client.post("/api/search/image", params={"kind": "audio"},
                              files={"file": ("p.jpg", jpeg_bytes(picture(9)))})  # fmt: skip
    assert r.status_code == 200, r.text
    assert {x["kind"] for x in r.json()["results"]} == {"audio"}
    # Text alone still finds pictures through CLIP; asking for ImageBind is honoured.
    clip = sound_api.ok("/api/search", params={"q": "a red square"})["results"]
    assert {x["kind"] for x in clip} == {"image"}
    ib = sound_api.ok("/api/search", params={"q": "a red square", "space": "imagebind"})
    assert {x["kind"] for x in ib["results"]} == {"image", "audio"}


def test_more_like_a_sound_item_goes_through_imagebind(sound_api: Api):
    sound = sound_api.item_id("mid.ogg")
    rows = sound_api.ok(f"/api/items/{sound}/similar", params={"kind": "audio"})["results"]
    assert sound not in [x["item_id"] for x in rows] and len(rows) == 2
    err = error_of(sound_api.get(f"/api/items/{sound}/similar", params={"space": "clip"}), 422)
    assert "cannot embed sound" in err["message"]


def test_a_sound_is_played_and_drawn(sound_api: Api):
    sound = sound_api.item_id("high.flac")
    item = sound_api.ok(f"/api/items/{sound}")
    assert (item["kind"], item["sample_rate"], item["channels"]) == ("audio", 44100, 2)
    r = sound_api.get(item["file"])
    assert r.status_code == 200 and r.headers["content-type"] == "audio/flac"
    assert r.content == (sound_api.library / "sounds" / "high.flac").read_bytes()
    thumb = sound_api.get(f"/api/items/{sound}/thumbnail", params={"size": 256})
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
    from PIL import Image

    img = Image.open(io.BytesIO(thumb.content))
    assert img.size == (256, 64)  # a waveform strip
    assert len(set(img.convert("L").getdata())) > 2  # drawn, not blank


def test_an_audio_upload_that_is_not_a_sound_is_415(sound_api: Api):
    assert "sound" in error_of(post_audio(sound_api, jpeg_bytes(picture(1)), "x.wav"),
                               415)["message"]  # fmt: skip
    error_of(post_audio(sound_api, b"plain text, not audio at all", "x.mp3"), 415)
    webm = b"\x1a\x45\xdf\xa3" + bytes(200)  # what browsers record: told to send WAV
    assert "WAV" in error_of(post_audio(sound_api, webm, "rec.webm"), 415)["message"]


def test_a_damaged_or_empty_recording_is_422_and_a_huge_one_413(sound_api: Api):
    whole = wav_bytes(440)
    assert "truncated" in error_of(post_audio(sound_api, whole[: len(whole) // 2]),
                                   422)["message"]  # fmt: skip
    error_of(post_audio(sound_api, b""), 422)
    silent_header = wav_bytes(440, seconds=0.0)
    assert "no audio" in error_of(post_audio(sound_api, silent_header), 422)["message"]
    error_of(post_audio(sound_api, wav_bytes(440, seconds=20.0)), 413)  # 640 kB > 400 kB


def test_sound_search_without_the_imagebind_space_says_how_to_enable_it(
    demo_lib: Any,
) -> None:
    from tests.api_support import demo_api

    with demo_api(demo_lib) as api:
        err = error_of(post_audio(api, wav_bytes(440)), 409)
        assert "imagebind" in err["message"] and "EVERLOOK_SPACES" in err["message"]
        err = error_of(api.get("/api/search", params={"q": "rain", "kind": "audio"}), 409)
        assert "imagebind" in err["message"]


def test_a_cursor_of_one_space_is_refused_by_another(sound_api: Api):
    page = sound_api.ok("/api/search", params={"q": "a tone", "kind": "audio", "k": 1})
    assert page["next_cursor"]
    r = sound_api.get("/api/search", params={"q": "a tone", "cursor": page["next_cursor"]})
    assert "cursor" in error_of(r, 400)["message"]
    sound = sound_api.item_id("low.wav")
    r = sound_api.client.post(f"/api/items/{sound}/classify", json={"labels": ["a", "b"]})
    assert "sound" in error_of(r, 422)["message"]
