"""Sound on the web page, in a real browser (headless Debian chromium through Playwright)
against a real `everlook serve` with the ImageBind space on: searching with a WAV, the
sound cards (waveform, duration, play/pause), the kind selector, the item view of a
sound, and the microphone and a WebM file turned into WAV in the browser."""

from __future__ import annotations

import base64
import math
import struct
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TINY, TINY_IMAGEBIND, TINY_TAG
from tests.helpers import make_library, tone
from tests.test_browser import (
    CHROMIUM,
    TIMEOUT_MS,
    Api,
    expect,
    is_search,
    open_page,
    sync_api,
    wait_grid,
)

pytestmark = pytest.mark.slow

SOUNDS = {"low.wav": 2.5, "high.flac": 4.0, "mid.ogg": 1.5}  # name: seconds


@pytest.fixture(scope="module")
def sound_server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`everlook serve` over three pictures and three sounds (WAV, stereo 44.1 kHz FLAC,
    Ogg Vorbis), indexed first, with the tiny CLIP and the tiny ImageBind."""
    from tests.serving import run_cli, serving

    base = tmp_path_factory.mktemp("sound-page")
    lib = base / "lib"
    make_library(lib, 3)
    tone(lib / "sounds" / "low.wav", 220, seconds=SOUNDS["low.wav"])
    tone(lib / "sounds" / "high.flac", 3000, seconds=SOUNDS["high.flac"], rate=44100, channels=2)
    tone(lib / "sounds" / "mid.ogg", 880, seconds=SOUNDS["mid.ogg"], fmt="OGG")
    settings = {
        "EVERLOOK_HOME": str(base / "home"), "EVERLOOK_MODEL_DIR": str(model_dir),
        "EVERLOOK_CLIP_MODEL": TINY, "EVERLOOK_CLIP_PRETRAINED": TINY_TAG,
        "EVERLOOK_DEVICE": "cpu", "EVERLOOK_STAGES": "[]",
        "EVERLOOK_SPACES": '["clip", "imagebind"]', "EVERLOOK_IMAGEBIND_MODEL": TINY_IMAGEBIND,
    }  # fmt: skip
    done = run_cli(settings, "index", str(lib), cwd=base)
    assert done.returncode == 0, done.stdout + done.stderr
    with serving(settings, str(lib), cwd=base) as served:
        yield Api(served)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium with a fake microphone (a beep, allowed without asking) and sound that may
    start from a script (the WebM test records an oscillator)."""
    args = [
        "--no-sandbox",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
    ]
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, sound_server: Api) -> Iterator[Any]:
    """A fresh page that fails the test on an uncaught error, a console error or a
    Content-Security-Policy violation."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(TIMEOUT_MS)
    ctx.grant_permissions(["microphone"], origin=sound_server.url)
    ctx.add_init_script(
        "window.__csp = []; document.addEventListener('securitypolicyviolation',"
        " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    ctx.add_init_script(KEEP_UPLOADS)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: m.type == "error" and errors.append(m.text))
    yield pg
    csp = pg.evaluate("window.__csp")
    ctx.close()
    assert not errors, errors
    assert not csp, csp


def is_audio_search(res: Any) -> bool:
    return urllib.parse.urlsplit(res.url).path == "/api/search/audio"


def m_ss(seconds: float) -> str:
    total = max(1, math.floor(seconds))  # as the browser's player shows it
    return f"{total // 60}:{total % 60:02d}"


def cards(page: Any) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(
        ".result",
        "els => els.map(e => ({id: +e.dataset.itemId, kind: e.dataset.kind,"
        " path: e.dataset.path, duration: e.querySelector('.duration')?.textContent,"
        " badge: e.querySelector('.kind-badge')?.textContent}))",
    )


def checked_kind(page: Any) -> str:
    return page.eval_on_selector("#kind-picker input:checked", "e => e.value")


# Playwright does not see a request body built from a Blob, so the page's fetch is wrapped
# (before the page's own scripts run) to keep each uploaded file: name, type, base64 bytes.
KEEP_UPLOADS = """
window.__uploads = [];
const realFetch = window.fetch;
window.fetch = function (input, init) {
    const file = init && init.body instanceof FormData ? init.body.get("file") : null;
    if (file instanceof Blob) {
        const entry = {name: file.name, type: file.type, data: null};
        window.__uploads.push(entry);
        file.arrayBuffer().then((buf) => {
            let s = "";
            for (const b of new Uint8Array(buf)) s += String.fromCharCode(b);
            entry.data = btoa(s);
        });
    }
    return realFetch.apply(this, arguments);
};
"""


def last_upload(page: Any) -> tuple[str, str, bytes]:
    """(name, type, bytes) of the last file the page uploaded."""
    page.wait_for_function("() => window.__uploads.length && window.__uploads.at(-1).data")
    up = page.evaluate("window.__uploads.at(-1)")
    return up["name"], up["type"], base64.b64decode(up["data"])


def wav_format(data: bytes) -> tuple[int, int, int, float]:
    """(channels, rate, bits, seconds) of a plain PCM WAV."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", data[:16]
    assert data[12:16] == b"fmt " and data[36:40] == b"data"
    fmt, channels, rate, _, frame, bits = struct.unpack("<HHIIHH", data[20:36])
    assert fmt == 1  # PCM
    (size,) = struct.unpack("<I", data[40:44])
    assert size == len(data) - 44
    return channels, rate, bits, size / frame / rate


def test_a_wav_upload_shows_sound_cards_with_waveform_duration_and_a_player(
    page: Any, sound_server: Api
):
    open_page(page, sound_server)
    query = sound_server.served.log.parent / "lib" / "sounds" / "low.wav"
    with page.expect_response(is_audio_search) as r:
        page.set_input_files("#file-input", str(query))
    res = r.value
    assert res.ok, res.text()
    assert last_upload(page) == ("low.wav", "audio/wav", query.read_bytes())  # sent as it is
    assert "kind" not in urllib.parse.parse_qs(urllib.parse.urlsplit(res.url).query)
    rows = res.json()["results"]
    wait_grid(page, [x["item_id"] for x in rows])
    assert checked_kind(page) == "both"  # a sound looks for pictures and sounds
    shown = cards(page)
    assert {c["kind"] for c in shown} == {"image", "audio"}
    assert shown[0]["path"].endswith("low.wav")  # its own sound first
    for c in shown:
        if c["kind"] == "audio":
            assert c["duration"] == m_ss(SOUNDS[Path(c["path"]).name])
            assert c["badge"] == "♪"
        else:
            assert c["duration"] is None and c["badge"] is None
    # Every waveform loads and is a wide strip in a card as wide as a picture's.
    page.wait_for_function(
        "() => [...document.querySelectorAll('.result[data-kind=audio] img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    strips = page.eval_on_selector_all(
        ".result[data-kind=audio] img",
        "els => els.map(i => ({w: i.naturalWidth, h: i.naturalHeight,"
        " box: i.getBoundingClientRect().width / i.getBoundingClientRect().height}))",
    )
    assert all(s["w"] == 4 * s["h"] and abs(s["box"] - 4) < 0.2 for s in strips), strips
    widths = page.eval_on_selector_all(".result", "els => els.map(e => e.offsetWidth)")
    assert len(set(widths)) == 1

    # Play: the card's <audio> plays the row's file, in place (the item does not open).
    sounds = [x for x in rows if x["kind"] == "audio"]
    first, second = (f'.result[data-item-id="{x["item_id"]}"]' for x in sounds[:2])
    audio = page.locator(f"{first} audio")
    assert audio.get_attribute("preload") == "none"
    assert audio.get_attribute("src") == sounds[0]["file"]
    page.click(f"{first} .play")
    page.wait_for_function(
        "sel => { const a = document.querySelector(sel + ' audio');"
        " return !a.paused && a.currentTime > 0.2; }",
        arg=first,
    )
    assert page.locator(f"{first} .play").get_attribute("aria-pressed") == "true"
    expect(page.locator("#item-view")).to_be_hidden()
    assert "#item=" not in page.url
    # One sound at a time: playing the second pauses the first.
    page.click(f"{second} .play")
    page.wait_for_function(
        "([a, b]) => document.querySelector(a + ' audio').paused"
        " && !document.querySelector(b + ' audio').paused",
        arg=[first, second],
    )
    page.click(f"{second} .play")
    page.wait_for_function("sel => document.querySelector(sel + ' audio').paused", arg=second)
    # The button follows the element's "pause" event, which comes just after .paused.
    page.wait_for_function(
        "sel => document.querySelector(sel + ' .play').getAttribute('aria-pressed') === 'false'",
        arg=second,
    )
    # From the keyboard: Space on a focused sound card plays it (Enter still opens it).
    page.focus(first)
    page.keyboard.press(" ")
    page.wait_for_function("sel => !document.querySelector(sel + ' audio').paused", arg=first)
    page.keyboard.press("Enter")
    page.locator("#item-view").wait_for()
    page.wait_for_function("sel => document.querySelector(sel + ' audio').paused", arg=first)


def test_a_sound_opens_with_its_big_waveform_a_player_and_its_format(page: Any, sound_server: Api):
    sound = next(
        x for x in sound_server.get("/api/search", kind="audio")["results"]
        if x["path"].endswith("high.flac")
    )  # fmt: skip
    detail = sound_server.get(f"/api/items/{sound['item_id']}")
    page.goto(f"{sound_server.url}/#item={detail['id']}")
    view = page.locator("#item-view")
    view.wait_for()
    page.wait_for_function("() => document.getElementById('item-img').naturalWidth > 0")
    assert page.evaluate(
        "[document.getElementById('item-img').naturalWidth,"
        " document.getElementById('item-img').naturalHeight]"
    ) == [1024, 256]
    expect(page.locator("#item-img")).to_be_visible()
    player = page.locator("#item-audio")
    expect(player).to_be_visible()
    assert player.get_attribute("controls") is not None
    assert player.get_attribute("src") == detail["file"]
    meta = dict(
        zip(
            view.locator(".meta dt").all_inner_texts(),
            view.locator(".meta dd").all_inner_texts(),
            strict=True,
        )
    )
    assert meta["Kind"] == "audio"
    assert meta["Duration"] == "0:04"
    assert meta["Sample rate"] == "44,100 Hz"
    assert meta["Channels"] == "2 (stereo)"
    assert view.get_by_text("Try your own labels").count() == 0  # CLIP holds no sounds
    page.evaluate("document.getElementById('item-audio').play()")
    page.wait_for_function("() => document.getElementById('item-audio').currentTime > 0.2")


def test_the_kind_selector_with_words_shows_pictures_then_only_sounds_then_both(
    page: Any, sound_server: Api
):
    open_page(page, sound_server)
    assert checked_kind(page) == "image"
    with page.expect_response(is_search("/api/search", q="a low hum", kind="image")) as r:
        page.fill("#q", "a low hum")
    wait_grid(page, [x["item_id"] for x in r.value.json()["results"]])
    assert {c["kind"] for c in cards(page)} == {"image"}

    with page.expect_response(is_search("/api/search", q="a low hum", kind="audio")) as r:
        page.get_by_text("Sounds", exact=True).click()
    assert r.value.ok
    wait_grid(page, [x["item_id"] for x in r.value.json()["results"]])
    shown = cards(page)
    assert {c["kind"] for c in shown} == {"audio"} and len(shown) == len(SOUNDS)
    assert "kind=audio" in page.url  # the choice is in the address
    count = page.locator("#kind-picker label", has_text="Sounds").locator(".count")
    assert count.inner_text() == "3"  # the library's sounds, from /api/facets

    # Both: words through ImageBind, which holds pictures and sounds.
    with page.expect_response(is_search("/api/search", q="a low hum", space="imagebind")) as r:
        page.get_by_text("Both", exact=True).click()
    assert "kind" not in urllib.parse.parse_qs(urllib.parse.urlsplit(r.value.url).query)
    wait_grid(page, [x["item_id"] for x in r.value.json()["results"]])
    assert {c["kind"] for c in cards(page)} == {"image", "audio"}


def test_a_recording_from_the_microphone_is_sent_as_16_khz_mono_wav(page: Any, sound_server: Api):
    open_page(page, sound_server)
    mic = page.locator("#mic")
    expect(mic).to_be_visible()
    mic.click()
    page.wait_for_function("() => document.getElementById('mic').classList.contains('recording')")
    page.wait_for_timeout(2000)
    with page.expect_response(is_audio_search) as r:
        mic.click()  # Stop
    res = r.value
    name, mime, data = last_upload(page)
    assert (name, mime) == ("recording.wav", "audio/wav")
    channels, rate, bits, seconds = wav_format(data)
    assert (channels, rate, bits) == (1, 16000, 16)
    assert 1.0 < seconds < 4.0, seconds
    samples = struct.unpack(f"<{(len(data) - 44) // 2}h", data[44:])
    assert max(abs(s) for s in samples) > 1000  # the fake microphone's beep, not silence
    assert res.ok, res.text()
    rows = res.json()["results"]
    wait_grid(page, [x["item_id"] for x in rows])
    assert page.locator("#query-pill-text").inner_text() == "Sound: recording.wav"


def test_a_dropped_webm_is_converted_to_wav_before_it_is_sent(page: Any, sound_server: Api):
    open_page(page, sound_server)
    # A WebM/Opus file made the way browsers record: an oscillator through MediaRecorder.
    with page.expect_response(is_audio_search) as r:
        page.evaluate(
            """async () => {
                const ctx = new AudioContext();
                const osc = ctx.createOscillator();
                const dest = ctx.createMediaStreamDestination();
                osc.frequency.value = 440;
                osc.connect(dest);
                osc.start();
                const rec = new MediaRecorder(dest.stream, {mimeType: "audio/webm"});
                const chunks = [];
                rec.ondataavailable = (e) => chunks.push(e.data);
                const stopped = new Promise((ok) => { rec.onstop = ok; });
                rec.start();
                await new Promise((ok) => setTimeout(ok, 1200));
                rec.stop();
                await stopped;
                osc.stop();
                await ctx.close();
                const file = new File(chunks, "hum.webm", {type: "audio/webm"});
                const head = new Uint8Array(await file.slice(0, 4).arrayBuffer());
                if (head[0] !== 0x1a || head[1] !== 0x45) throw new Error("not WebM");
                const dt = new DataTransfer();
                dt.items.add(file);
                for (const type of ["dragenter", "dragover", "drop"]) {
                    const init = {dataTransfer: dt, bubbles: true, cancelable: true};
                    document.body.dispatchEvent(new DragEvent(type, init));
                }
            }"""
        )
    name, mime, data = last_upload(page)
    assert (name, mime) == ("hum.wav", "audio/wav")
    channels, rate, _, seconds = wav_format(data)
    assert (channels, rate) == (1, 16000) and 0.5 < seconds < 3.0, seconds
    res = r.value
    assert res.ok, res.text()
    wait_grid(page, [x["item_id"] for x in res.json()["results"]])
