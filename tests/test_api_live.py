"""`everlook serve` as users run it: a real uvicorn on 127.0.0.1, the watcher beside
the API, other processes on the same data dir, and the CLI finding the server."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import make_library
from tests.serving import DemoLibrary, Served, run_cli, serving

# Every test runs on both catalogs: those on a library of their own through the env
# fixture, those on the demo library's server through `served`.
pytestmark = [pytest.mark.slow, pytest.mark.both_catalogs]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest, demo_lib: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Served, DemoLibrary]]:
    """The demo library's real server with its watcher: the session's over SQLite, or
    one over a PostgreSQL copy of its catalog made for this module (watching the same
    folder: what one test adds there, both servers index)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("demo_server"), demo_lib
        return
    from tests.conftest import pg_copy

    copy = pg_copy(demo_lib, request.getfixturevalue("postgres"),
                   tmp_path_factory.mktemp("live-pg"))  # fmt: skip
    with serving(copy.settings, str(copy.library), cwd=copy.base) as server:
        yield server, copy


def raw_request(served: Served, head: bytes, body_parts: list[bytes]) -> tuple[bytes, int]:
    """Send a request by hand; stop sending body once the server answers. Returns the
    response head and how many body bytes went out."""
    host, port = served.url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        s.setblocking(False)
        answer = b""
        for part in body_parts:
            with contextlib.suppress(BlockingIOError):
                answer += s.recv(65536)
            if answer:
                break
            try:
                s.setblocking(True)
                s.sendall(part)
                sent += len(part)
                s.setblocking(False)
            except (BrokenPipeError, ConnectionResetError):
                break
        s.setblocking(True)
        s.settimeout(30)
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer, sent


def test_the_real_server_answers_searches_and_serves_thumbnails(
    served: tuple[Served, DemoLibrary],
) -> None:
    server, _ = served
    with server.client() as c:
        assert c.get("/api/health").json() == {"status": "ok"}
        page = c.get("/api/search", params={"q": "three yellow stars", "k": 3}).json()
        assert page["results"] and page["next_cursor"]
        thumb = c.get(page["results"][0]["thumbnail"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"


def test_a_30_mb_upload_gets_413_before_its_body_is_sent(
    served: tuple[Served, DemoLibrary],
) -> None:
    demo_server, _ = served
    size = 30 * 1024 * 1024
    head = (f"POST /api/search/image HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n\r\n").encode()  # fmt: skip
    # 64 KB of the 30 MB go out, then nothing more: the answer must come anyway, so the
    # server decided on the declared length without waiting for (or reading) the body.
    host, port = demo_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(head + b"\0" * 65536)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_chunked_upload_is_cut_off_at_the_limit(served: tuple[Served, DemoLibrary]) -> None:
    demo_server, _ = served
    head = (b"POST /api/search/image HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")  # fmt: skip
    mb = 1024 * 1024
    part = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff")  # fmt: skip
    first = f"{len(part):x}\r\n".encode() + part + b"\r\n"
    chunk = f"{mb:x}\r\n".encode() + b"\0" * mb + b"\r\n"
    answer, sent = raw_request(demo_server, head, [first] + [chunk] * 64)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 48 * mb, sent  # cut off at 25 MiB, plus what socket buffers held


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(
    served: tuple[Served, DemoLibrary], tmp_path: Path
) -> None:
    _, demo_lib = served
    done = run_cli(demo_lib.settings, "serve", "--host", "0.0.0.0", "--port", "0", cwd=tmp_path,
                   timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert "EVERLOOK_API_TOKEN" in done.stderr and "0.0.0.0" in done.stderr


def test_a_second_writer_is_told_who_holds_the_data_dir(
    served: tuple[Served, DemoLibrary], tmp_path: Path
) -> None:
    demo_server, demo_lib = served
    outside = make_library(tmp_path / "elsewhere", 2)[0].parent
    done = run_cli(demo_lib.settings, "index", str(outside), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"pid {demo_server.proc.pid}" in done.stderr and "everlook serve" in done.stderr


def test_index_under_a_served_library_is_handed_to_the_server(
    served: tuple[Served, DemoLibrary], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    demo_server, demo_lib = served
    backend = request.node.callspec.params["served"]
    extra = demo_lib.library / f"handed-{backend}"
    make_library(extra, 2, start=500 if backend == "sqlite" else 600)  # not the same items
    done = run_cli(demo_lib.settings, "index", str(extra), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "handed" in done.stdout
    with demo_server.client() as c:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = c.get("/api/search", params={"path_glob": f"{extra}/*"}).json()["results"]
            if len(found) == 2:
                break
            time.sleep(0.5)
    assert len(found) == 2


def test_the_cli_answers_from_the_running_server_with_the_same_output(
    served: tuple[Served, DemoLibrary], tmp_path: Path
) -> None:
    demo_server, demo_lib = served
    picture = str(next(demo_lib.library.glob("pictures/*.jpg")))
    queries = [["a red circle -red", "-k", "7"], ["--like", "3", "-k", "4", "--has", "star"],
               ["--has", "circle:2", "-k", "5"], ["a star", "--after", "2000-01-01T10:30"],
               ["--image", picture, "-k", "3"]]  # fmt: skip
    remote = [run_cli(demo_lib.settings, "search", *q, "--json", cwd=tmp_path) for q in queries]
    # Proof it was the server: with a model this process cannot load, it still answers.
    broken = {**demo_lib.settings, "EVERLOOK_CLIP_MODEL": "no-such-model"}
    via = run_cli(broken, "search", "a red circle", "--json", cwd=tmp_path)
    assert via.returncode == 0, via.stderr
    assert json.loads(via.stdout)
    demo_server.proc.terminate()  # (the session fixture's server: restarted below)
    demo_server.proc.wait(timeout=30)
    try:
        local = [run_cli(demo_lib.settings, "search", *q, "--json", cwd=tmp_path)
                 for q in queries]  # fmt: skip
        for q, r, x in zip(queries, remote, local, strict=True):
            assert r.returncode == x.returncode == 0, (q, r.stderr, x.stderr)
            assert json.loads(r.stdout) == json.loads(x.stdout), q
        text = run_cli(demo_lib.settings, "search", "a red circle", cwd=tmp_path)
        assert text.returncode == 0 and "red-circle" in text.stdout
    finally:
        _restart(demo_server, demo_lib)


def _restart(served: Served, demo_lib: DemoLibrary) -> None:
    import subprocess
    import sys

    from tests.serving import _wait_ready, clean_env

    port = served.url.rsplit(":", 1)[1]
    with open(served.log, "a") as out:
        served.proc = subprocess.Popen(
            [sys.executable, "-m", "everlook", "serve", str(demo_lib.library), "--port", port],
            env=clean_env(demo_lib.settings), cwd=demo_lib.base, stdout=out,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    _wait_ready(served, 120)


def test_a_read_only_server_picks_up_what_another_process_indexed(
    env: dict[str, str], tmp_path: Path
) -> None:
    settings = {**env, "EVERLOOK_INDEX_REFRESH_SECONDS": "0.5"}
    lib = tmp_path / "lib"
    make_library(lib, 4)
    assert run_cli(settings, "index", str(lib), cwd=tmp_path).returncode == 0
    with serving(settings, str(lib), "--no-watch", cwd=tmp_path) as served, served.client() as c:
        assert c.get("/api/ready").json()["vectors"] == 4
        first = c.get("/api/search", params={"k": 1}).json()["results"][0]
        assert c.get(first["thumbnail"]).status_code == 200  # serves files, writes nothing
        make_library(lib, 3, start=100)
        done = run_cli(settings, "index", str(lib), cwd=tmp_path)  # --no-watch holds no lock
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 20
        while c.get("/api/ready").json()["vectors"] != 7 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get("/api/ready").json()["vectors"] == 7
        shutil.rmtree(lib / "a")
        assert run_cli(settings, "index", str(lib), cwd=tmp_path).returncode == 0
        deadline = time.monotonic() + 20
        while c.get("/api/ready").json()["vectors"] == 7 and time.monotonic() < deadline:
            time.sleep(0.2)
        left = c.get("/api/search", params={"k": 50}).json()["results"]
        assert c.get("/api/ready").json()["vectors"] == len(left) < 7
        assert all("/a/" not in r["path"] for r in left)


def test_searches_run_while_the_watcher_indexes_and_find_the_new_files(
    env: dict[str, str], tmp_path: Path
) -> None:
    settings = {**env, "EVERLOOK_WATCH_QUIET_SECONDS": "0.2"}
    lib = tmp_path / "lib"
    make_library(lib, 6)
    problems: list[str] = []
    stop = threading.Event()
    with serving(settings, str(lib), cwd=tmp_path) as served:

        def hammer(n: int) -> None:
            with served.client() as c:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        r = (c.get("/api/search", params={"q": f"picture {n} {i}", "k": 5})
                             if i % 2 else c.get("/api/search", params={"k": 5}))  # fmt: skip
                        if r.status_code != 200:
                            problems.append(f"{r.status_code} {r.text[:200]}")
                    except httpx.HTTPError as exc:
                        problems.append(repr(exc))

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        try:
            added = make_library(lib / "new", 20, start=1000)
            deadline = time.monotonic() + 90
            with served.client() as c:
                while time.monotonic() < deadline:
                    glob = {"path_glob": f"{lib}/new/*", "k": 50}
                    found = {r["path"] for r in c.get("/api/search", params=glob).json()["results"]}
                    if len(found) == len(added):
                        break
                    time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
    assert problems == []
    assert found == {str(p) for p in added}


def test_a_sound_dropped_into_a_served_library_is_found_by_sound_through_the_server(
    env: dict[str, str], tmp_path: Path
) -> None:
    from tests.conftest import TINY_IMAGEBIND
    from tests.helpers import tone

    settings = {**env, "EVERLOOK_WATCH_QUIET_SECONDS": "0.2",
                "EVERLOOK_SPACES": '["clip", "imagebind"]',
                "EVERLOOK_IMAGEBIND_MODEL": TINY_IMAGEBIND}  # fmt: skip
    lib = tmp_path / "lib"
    make_library(lib, 3)
    with serving(settings, str(lib), cwd=tmp_path) as served:
        sound = tone(lib / "drop" / "bell.flac", 1200, seconds=3.0, rate=44100)
        deadline = time.monotonic() + 90
        rows: list[dict[str, Any]] = []
        with served.client() as c:
            while time.monotonic() < deadline:  # the watcher indexes, the stage embeds
                r = c.post("/api/search/audio", params={"k": 1},
                           files={"file": ("q.flac", sound.read_bytes())})  # fmt: skip
                assert r.status_code == 200, r.text
                rows = r.json()["results"]
                if rows and rows[0]["path"] == str(sound):
                    break
                time.sleep(0.3)
        assert rows and rows[0]["path"] == str(sound) and rows[0]["kind"] == "audio"
        # The CLI asks the server (proof: a model this process cannot load still answers).
        broken = {**settings, "EVERLOOK_IMAGEBIND_MODEL": "no-such-model"}
        via = run_cli(broken, "search", "--audio", str(sound), "--json", "-k", "1",
                      cwd=tmp_path)  # fmt: skip
        assert via.returncode == 0, via.stderr
        assert json.loads(via.stdout)[0]["path"] == str(sound)


def test_a_server_on_postgresql_answers_as_the_one_on_sqlite(
    demo_server: Served, demo_lib: Any, postgres: Any, tmp_path: Path
) -> None:
    """The same library, its catalog copied to PostgreSQL now (other tests of this module
    add files to the served library), served by a real process: the same results,
    scores, item details, facets and thumbnails as over SQLite."""
    from tests.conftest import pg_copy

    copy = pg_copy(demo_lib, postgres, tmp_path / "pg")
    with (
        serving(copy.settings, str(copy.library), "--no-watch", cwd=tmp_path) as pg,
        demo_server.client() as a, pg.client() as b,
    ):  # fmt: skip
        for q in ("a red circle", "a blue square", "stars in the style of van gogh"):
            ra = a.get("/api/search", params={"q": q, "k": 8})
            rb = b.get("/api/search", params={"q": q, "k": 8})
            assert ra.status_code == rb.status_code == 200, (ra.text, rb.text)
            hits = [(h["item_id"], round(h["score"], 5), h["path"]) for h in ra.json()["results"]]
            assert hits == [(h["item_id"], round(h["score"], 5), h["path"])
                            for h in rb.json()["results"]] and len(hits) == 8  # fmt: skip
        item = hits[0][0]
        assert a.get(f"/api/items/{item}").json() == b.get(f"/api/items/{item}").json()
        assert a.get("/api/facets").json() == b.get("/api/facets").json()
        thumb = b.get(f"/api/items/{item}/thumbnail")
        assert thumb.status_code == 200 and thumb.headers["content-type"].startswith("image/")
