"""The API's guards: token, CORS, upload limit and sniffing, one error shape, no
stack traces."""

from __future__ import annotations

import io
import struct
import time
import wave
from collections.abc import Iterator
from typing import Any

import pytest

from tests.api_support import Api, demo_api, error_of
from tests.helpers import jpeg_bytes, picture

pytestmark = pytest.mark.slow
TOKEN = "correct horse battery staple"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(demo_lib: Any, request: pytest.FixtureRequest) -> Iterator[Api]:
    """The app over the demo library, its catalog on SQLite, then on PostgreSQL."""
    lib = demo_lib if request.param == "sqlite" else request.getfixturevalue("demo_lib_pg")
    with demo_api(lib) as a:
        yield a


def wav_bytes(seconds: float = 0.2) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(struct.pack("<h", 0) * int(16000 * seconds))
    return buf.getvalue()


def test_with_a_token_every_endpoint_but_liveness_needs_it(api: Api) -> None:
    locked = api.with_config(token=TOKEN)
    assert locked.get("/api/health").status_code == 200
    for url in ("/api/search?q=x", "/api/stats", "/api/facets", "/api/ready",
                "/api/items/1", "/api/items/1/thumbnail", "/api/items/1/file",
                "/openapi.json/../api/stats", "/openapi.json"):  # fmt: skip
        err = error_of(locked.get(url), 401)
        assert "token" in err["message"]
    err = error_of(locked.get("/api/stats", headers={"Authorization": "Bearer nope"}), 401)
    assert "not this server's" in err["message"]
    error_of(locked.get("/api/stats", headers={"Authorization": TOKEN}), 401)  # no scheme
    ok = locked.get("/api/stats", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    posted = locked.post("/api/search/image", files={"file": ("a.jpg", b"x")})
    error_of(posted, 401)
    assert locked.get("/api/stats", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200


def test_without_a_token_the_api_is_open_on_loopback(api: Api) -> None:
    assert api.get("/api/stats").status_code == 200


def test_cors_is_closed_by_default_and_open_to_configured_origins(api: Api) -> None:
    hdr = {"Origin": "https://evil.example"}
    assert "access-control-allow-origin" not in api.get("/api/stats", headers=hdr).headers
    friendly = api.with_config(cors_origins=("https://newsroom.example",))
    r = friendly.get("/api/stats", headers={"Origin": "https://newsroom.example"})
    assert r.headers["access-control-allow-origin"] == "https://newsroom.example"
    r = friendly.get("/api/stats", headers=hdr)
    assert "access-control-allow-origin" not in r.headers
    locked = api.with_config(cors_origins=("https://newsroom.example",), token=TOKEN)
    r = locked.get("/api/stats", headers={"Origin": "https://newsroom.example"})
    assert r.status_code == 401  # and the browser may read why:
    assert r.headers["access-control-allow-origin"] == "https://newsroom.example"
    pre = locked.options("/api/stats", headers={
        "Origin": "https://newsroom.example", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})  # fmt: skip
    assert (
        pre.status_code == 200
        and "authorization" in pre.headers["access-control-allow-headers"].lower()
    )


def test_an_upload_over_the_limit_is_413_in_the_error_shape(api: Api) -> None:
    small = api.with_config(upload_max_bytes=100_000)
    body = jpeg_bytes(picture(1, (1600, 1200)), quality=98) + b"\0" * 200_000
    r = small.post("/api/search/image", files={"file": ("big.jpg", body, "image/jpeg")})
    err = error_of(r, 413)
    assert "100000" in err["message"]


def test_a_30_mb_upload_is_refused_at_once(api: Api) -> None:
    body = b"\xff\xd8\xff" + b"\0" * (30 * 1024 * 1024)
    started = time.monotonic()
    r = api.client.post("/api/search/image", files={"file": ("big.jpg", body, "image/jpeg")})
    error_of(r, 413)
    assert time.monotonic() - started < 30  # generous: the point is no decode, no 500


def test_a_body_without_length_is_cut_off_at_the_limit(api: Api) -> None:
    small = api.with_config(upload_max_bytes=50_000)
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 10_000
            yield b"\0" * 10_000

    r = small.post("/api/search/image", content=chunks(),
                   headers={"Content-Type": "multipart/form-data; boundary=x"})  # fmt: skip
    error_of(r, 413)


@pytest.mark.parametrize(
    ("name", "data", "status"),
    [
        ("notes.jpg", b"just some text, not an image", 415),
        ("empty.jpg", b"", 422),
        ("cut.jpg", jpeg_bytes(picture(2, (640, 480)))[:600], 422),
        ("header.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 100, 422),
        ("sound.jpg", wav_bytes(), 415),
        ("page.html", b"<html><body>hi</body></html>", 415),
    ],
)  # fmt: skip
def test_uploads_are_judged_by_content(api: Api, name: str, data: bytes, status: int) -> None:
    r = api.client.post("/api/search/image", files={"file": (name, data, "image/jpeg")})
    err = error_of(r, status)
    assert "Traceback" not in err["message"]
    r = api.client.post("/api/classify", data={"labels": "a,b"},
                        files={"file": (name, data, "image/jpeg")})  # fmt: skip
    error_of(r, status)


def test_a_missing_upload_field_is_422(api: Api) -> None:
    error_of(api.client.post("/api/search/image", data={"q": "x"}), 422)
    error_of(api.client.post("/api/search/image", content=b"garbage",
                             headers={"Content-Type": "application/json"}), 422)  # fmt: skip


def test_sound_search_on_a_server_without_imagebind_says_how_to_enable_it(api: Api) -> None:
    r = api.client.post("/api/search/audio", files={"file": ("rain.wav", wav_bytes())})
    assert "EVERLOOK_SPACES" in error_of(r, 409)["message"]
    webm = b"\x1a\x45\xdf\xa3" + b"\x9f\x42\x86\x81\x01" + b"\0" * 200  # Chrome's recorder
    mp4 = b"\0\0\0\x1cftypiso5" + b"\0" * 200  # Safari's
    for name, data in (("mic.webm", webm), ("mic.mp4", mp4)):
        r = api.client.post("/api/search/audio", files={"file": (name, data)})
        error_of(r, 409)  # the space is checked before the upload is decoded
    image = jpeg_bytes(picture(3))  # (415 on a server with ImageBind: test_api_audio.py)
    error_of(api.client.post("/api/search/audio", files={"file": ("x.wav", image)}), 409)


def test_an_unexpected_error_is_500_without_its_details(api: Api, monkeypatch: Any) -> None:
    def explode(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("secret internals at /home/someone/db")

    monkeypatch.setattr(api.svc.engine, "newest", explode)
    r = api.get("/api/search")
    err = error_of(r, 500)
    assert "secret" not in r.text and "Traceback" not in r.text
    assert err["code"] == "internal"


def test_unknown_routes_and_methods_answer_in_the_error_shape(api: Api) -> None:
    error_of(api.get("/api/nothing-here"), 404)
    error_of(api.client.delete("/api/search"), 405)
    error_of(api.client.post("/api/items/1/classify", content=b"{not json",
                             headers={"Content-Type": "application/json"}), 422)  # fmt: skip


def test_the_page_runs_only_its_own_code(api: Api) -> None:
    r = api.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
