"""Style transfer as jobs, through the API and the worker: a randomly initialised VGG-19
on small pictures and few steps (the real architecture; nothing downloaded)."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.helpers import jpeg_bytes, make_library, picture

pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL


SMALL = {"EVERLOOK_STYLIZE_WEIGHTS": "random", "EVERLOOK_STYLIZE_SIDE": "48",
         "EVERLOOK_STYLIZE_STEPS": "6", "EVERLOOK_STYLIZE_PREVIEW_EVERY": "2"}  # fmt: skip


@dataclass
class Lib:
    client: TestClient
    svc: Any
    parts: Any
    root: Path
    photos: list[Path]
    watcher: Any

    def item(self, photo: Path) -> int:
        got = self.parts.catalog.item_id_for_path(str(photo))
        assert got is not None
        return int(got)

    def start(self, **form: Any) -> Any:
        files = form.pop("files", None)
        return self.client.post("/api/stylize", data=form, files=files)

    def job(self, job_id: int) -> dict[str, Any]:
        r = self.client.get(f"/api/stylize/{job_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    def work(self) -> bool:
        return bool(self.svc.worker.run_one())


@pytest.fixture
def lib(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Lib]:
    from api import create_app
    from everlook.settings import Settings
    from everlook.wiring import Parts

    for k, v in SMALL.items():
        monkeypatch.setenv(k, v)
    parts = Parts(Settings())
    root = tmp_path / "library"
    photos = make_library(root, 4)
    parts.pipeline().run([str(root)])
    watcher = parts.watcher([str(root)], parts.scan_rules())
    svc = parts.api_services([str(root)], watcher)
    with TestClient(create_app(svc, background=False), raise_server_exceptions=False) as client:
        yield Lib(client, svc, parts, root, photos, watcher)


def test_a_job_runs_to_done_with_live_events_a_preview_and_its_provenance(
    lib: Lib, monkeypatch: pytest.MonkeyPatch
):
    import api.routes_stylize

    monkeypatch.setattr(api.routes_stylize, "EVENT_POLL_S", 0.01)  # see every few steps
    content, style = lib.item(lib.photos[0]), lib.item(lib.photos[1])
    r = lib.start(item_id=content, style_item_id=style, steps=60)
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/api/stylize/{job['id']}"
    assert (job["state"], job["total"], job["style"]["kind"]) == ("queued", 60, "item")

    events: list[dict[str, Any]] = []
    previews: list[bytes] = []
    runner = threading.Thread(target=lib.work)
    with lib.client.stream("GET", f"/api/stylize/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        runner.start()
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if events[-1]["preview"] and not previews:
                    got = lib.client.get(events[-1]["preview"])
                    if got.status_code == 200:  # the job may have ended meanwhile
                        previews.append(got.content)
    runner.join()
    states = [e["state"] for e in events]
    assert states[0] == "queued" and states[-1] == "done" and "running" in states
    steps = [e["step"] for e in events if e["state"] == "running"]
    assert steps == sorted(steps) and len(set(steps)) >= 3 and events[-1]["step"] == 60
    assert previews and Image.open(io.BytesIO(previews[0])).format == "JPEG"

    done = lib.job(job["id"])
    assert done["result"] == f"/api/stylize/{job['id']}/result" and done["seconds"] > 0
    assert done["model_id"] == "torchvision/vgg19:random-seed0"
    res = lib.client.get(done["result"])
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(res.content))
    assert max(img.size) == 48
    # Provenance inside the file and beside it: content, style, settings, model.
    prov = json.loads(img.info["everlook:provenance"])
    detail = lib.client.get(f"/api/items/{content}").json()
    assert prov["content"]["sha256"] == detail["sha256"]
    assert prov["content"]["paths"] == [str(lib.photos[0])]
    assert prov["style"]["item_id"] == style
    assert prov["settings"]["side"] == 48 and prov["settings"]["steps"] == 60
    assert prov["model_id"] == done["model_id"]
    assert prov["style_loss"][1] < prov["style_loss"][0]
    home = lib.parts.settings.home
    assert json.loads((home / "stylize" / "results" / f"{job['id']}.json").read_text()) == prov
    dl = lib.client.get(done["result"], params={"download": 1})
    assert dl.headers["content-disposition"].startswith("attachment")
    assert lib.client.get(f"/api/stylize/{job['id']}/preview").status_code == 404  # cleaned


def test_cancel_stops_a_running_job_within_one_step(lib: Lib):
    content, style = lib.item(lib.photos[0]), lib.item(lib.photos[2])
    job = lib.start(item_id=content, style_item_id=style, steps=500).json()
    runner = threading.Thread(target=lib.work)
    runner.start()
    wait_step(lib, job["id"], 3)
    r = lib.client.post(f"/api/stylize/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["cancel_requested"]
    asked_at = lib.job(job["id"])["step"]
    runner.join(timeout=60)
    assert not runner.is_alive()
    end = lib.job(job["id"])
    assert end["state"] == "cancelled" and end["result"] is None
    # The worker looks after every step: it stops at the step it was on, or the next.
    assert end["step"] <= asked_at + 1 < 500
    assert lib.client.post(f"/api/stylize/{job['id']}/cancel").status_code == 409
    assert lib.client.get(f"/api/stylize/{job['id']}/result").status_code == 409


def test_a_queued_job_is_cancelled_at_once_and_never_runs(lib: Lib):
    a = lib.item(lib.photos[0])
    job = lib.start(item_id=a, style_item_id=a).json()
    assert lib.client.post(f"/api/stylize/{job['id']}/cancel").json()["state"] == "cancelled"
    assert lib.work() is False  # nothing left to claim


def test_a_job_whose_item_was_deleted_fails_cleanly_and_the_next_job_runs(lib: Lib):
    gone, kept = lib.item(lib.photos[0]), lib.item(lib.photos[1])
    first = lib.start(item_id=gone, style_item_id=kept).json()
    second = lib.start(item_id=kept, style_item_id=kept).json()
    lib.parts.catalog.remove_paths([str(lib.photos[0])])  # the file's item is deleted
    assert lib.work() and lib.work()
    failed, done = lib.job(first["id"]), lib.job(second["id"])
    assert failed["state"] == "failed" and "no longer in the library" in failed["error"]
    assert failed["item_id"] is None and failed["attempts"] == 1
    assert done["state"] == "done"


def test_adding_a_result_to_the_library_makes_a_derived_item_that_search_finds(lib: Lib):
    content, style = lib.item(lib.photos[0]), lib.item(lib.photos[3])
    job = lib.start(item_id=content, style_item_id=style, add_to_library="true").json()
    assert job["add_to_library"] is True
    assert lib.work()
    assert lib.job(job["id"])["derived_item_id"] is None  # handed to the watcher's queue
    while lib.watcher.step():  # the writer indexes it
        pass
    derived = lib.job(job["id"])["derived_item_id"]
    assert derived is not None and derived not in (content, style)
    detail = lib.client.get(f"/api/items/{derived}").json()
    assert detail["derived_from"] == {"job_id": job["id"], "item_id": content,
                                      "style": {"kind": "item", "item_id": style,
                                                "artist": None}}  # fmt: skip
    assert lib.client.get(f"/api/items/{content}").json()["derived_from"] is None
    assert detail["paths"][0].startswith(str(lib.parts.settings.home))
    # Searchable like any picture: its own file finds it first.
    result_png = lib.client.get(f"/api/stylize/{job['id']}/result").content
    hits = lib.client.post("/api/search/image", files={"file": result_png}).json()["results"]
    assert hits[0]["item_id"] == derived
    # A full rescan of the library keeps it, and never walks Everlook's own folders.
    report = lib.parts.pipeline().run([str(lib.root)])
    assert report.removed == 0 and lib.parts.catalog.item_exists(derived)


def test_add_to_library_asked_while_the_job_runs_is_done_when_it_ends(lib: Lib):
    a, b = lib.item(lib.photos[1]), lib.item(lib.photos[3])
    job = lib.start(item_id=a, style_item_id=b, steps=400).json()
    runner = threading.Thread(target=lib.work)
    runner.start()
    wait_step(lib, job["id"], 2)
    assert lib.client.post(f"/api/stylize/{job['id']}/library").status_code == 200
    lib.client.post(f"/api/stylize/{job['id']}/cancel")  # ends it early: no result
    runner.join()
    assert lib.job(job["id"])["state"] == "cancelled"
    job = lib.start(item_id=a, style_item_id=b, steps=40).json()
    runner = threading.Thread(target=lib.work)
    runner.start()
    wait_step(lib, job["id"], 1)
    lib.client.post(f"/api/stylize/{job['id']}/library")
    runner.join()
    while lib.watcher.step():
        pass
    assert lib.job(job["id"])["derived_item_id"] is not None


def wait_step(lib: Lib, job_id: int, step: int) -> None:
    deadline = time.monotonic() + 60
    while (seen := lib.job(job_id))["step"] < step:
        assert time.monotonic() < deadline, seen
        time.sleep(0.02)


def test_the_lease_is_kept_while_a_slow_first_step_or_model_load_runs(lib: Lib):
    from catalog.stylejobs import new_owner

    worker = lib.svc.worker
    worker.opts = dataclasses.replace(worker.opts, lease_seconds=0.3)
    real_run = worker.transfer.run

    def slow_start(*args: Any, **kw: Any) -> Any:
        time.sleep(1.5)  # as a first job's model load or download would: no step yet
        return real_run(*args, **kw)

    worker.transfer.run = slow_start
    a = lib.item(lib.photos[0])
    job = lib.start(item_id=a, style_item_id=a).json()
    runner = threading.Thread(target=lib.work)
    runner.start()
    time.sleep(0.9)  # three leases long
    assert worker.queue.claim(new_owner(), 0.3) is None  # still held
    runner.join()
    done = lib.job(job["id"])
    assert done["state"] == "done" and done["attempts"] == 1


def test_two_threads_of_one_worker_run_two_jobs_as_two_owners(lib: Lib):
    worker = lib.parts.style_worker(concurrency=2)
    a, b = lib.item(lib.photos[0]), lib.item(lib.photos[1])
    jobs = [lib.start(item_id=a, style_item_id=b, steps=1000).json() for _ in range(2)]
    t = threading.Thread(target=worker.run_forever)
    t.start()
    try:
        for j in jobs:
            wait_step(lib, j["id"], 1)
        owners = {worker.queue.get(j["id"])["owner"] for j in jobs}
        assert len(owners) == 2
    finally:
        worker.stop()
        t.join(timeout=60)
    assert {lib.job(j["id"])["state"] for j in jobs} == {"queued"}  # given back on stop


def test_a_finished_result_can_be_added_afterwards_and_only_once(lib: Lib):
    a, b = lib.item(lib.photos[1]), lib.item(lib.photos[2])
    job = lib.start(item_id=a, style_item_id=b).json()
    lib.work()
    r = lib.client.post(f"/api/stylize/{job['id']}/library")
    assert r.status_code == 200 and r.json()["add_to_library"]
    while lib.watcher.step():
        pass
    derived = lib.job(job["id"])["derived_item_id"]
    assert derived is not None
    items_before = lib.parts.catalog.stats()["items"]
    lib.client.post(f"/api/stylize/{job['id']}/library")  # again: nothing new
    while lib.watcher.step():
        pass
    assert lib.parts.catalog.stats()["items"] == items_before


def test_an_artist_style_uses_the_strongest_artwork_of_that_artist(lib: Lib):
    from catalog.models import LabelRow

    ids = [lib.item(p) for p in lib.photos]
    with lib.parts.catalog.Session.begin() as s:
        for item, score in ((ids[1], 0.5), (ids[2], 0.9)):
            s.add(LabelRow(item_id=item, stage="style", model_id="m", kind="style",
                           label="Claude Monet", score=score, rank=1))  # fmt: skip
            s.add(LabelRow(item_id=item, stage="style", model_id="m", kind="artwork",
                           label="artwork", score=0.95, rank=1))  # fmt: skip
    job = lib.start(item_id=ids[0], artist="Claude Monet").json()
    assert job["style"] == {"kind": "artist", "item_id": ids[2], "artist": "Claude Monet"}
    r = lib.start(item_id=ids[0], artist="Nobody Atall")
    assert r.status_code == 422 and "Nobody Atall" in r.json()["error"]["message"]
    r = lib.start(item_id=ids[0], artist="Claude\x00Monet")  # no stored text holds one
    assert r.status_code == 422 and "NUL" in r.text


def test_an_uploaded_style_picture_is_checked_and_kept_as_pixels_only(lib: Lib):
    a = lib.item(lib.photos[0])
    style = jpeg_bytes(picture(99, (80, 60)))
    r = lib.start(item_id=a, files={"style": ("s.jpg", style, "image/jpeg")})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["style"]["kind"] == "upload" and job["style"]["item_id"] is None
    lib.work()
    assert lib.job(job["id"])["state"] == "done"
    kept = list((lib.parts.settings.home / "stylize" / "uploads").glob("*.png"))
    assert len(kept) == 1 and Image.open(kept[0]).size == (80, 60)

    bad = lib.start(item_id=a, files={"style": ("s.jpg", b"not a picture at all", "image/jpeg")})
    assert bad.status_code == 415
    cut = lib.start(item_id=a, files={"style": ("s.jpg", style[: len(style) // 3], "image/jpeg")})
    assert cut.status_code == 422


@pytest.mark.parametrize(
    ("form", "status", "says"),
    [
        ({}, 422, "exactly one style"),
        ({"style_item_id": "S", "artist": "Claude Monet"}, 422, "exactly one style"),
        ({"style_item_id": "S", "side": "4000"}, 422, "side"),
        ({"style_item_id": "S", "steps": "999999"}, 422, "steps"),
        ({"style_item_id": "S", "optimizer": "sgd"}, 422, "optimizer"),
        ({"style_item_id": "S", "style_weight": "-1"}, 422, "style_weight"),
        ({"style_item_id": "999999"}, 422, "no item with id 999999"),
    ],
)
def test_a_bad_request_is_refused_with_a_reason(lib: Lib, form: dict[str, str], status: int,
                                               says: str):  # fmt: skip
    a, s = lib.item(lib.photos[0]), lib.item(lib.photos[1])
    form = {k: (str(s) if v == "S" else v) for k, v in form.items()}
    r = lib.start(item_id=a, **form)
    assert r.status_code == status, r.text
    assert says in json.dumps(r.json())
    assert lib.client.get("/api/stylize").json()["jobs"] == []  # nothing was queued


def test_an_unknown_item_is_404_and_an_unknown_job_too(lib: Lib):
    s = lib.item(lib.photos[1])
    assert lib.start(item_id=424242, style_item_id=s).status_code == 404
    for url in ("/api/stylize/77", "/api/stylize/77/events", "/api/stylize/77/result",
                "/api/stylize/77/preview"):  # fmt: skip
        assert lib.client.get(url).status_code == 404, url
    assert lib.client.post("/api/stylize/77/cancel").status_code == 404
    # A method the path does not answer: 405 naming every one it does (GET and POST).
    wrong = lib.client.put("/api/stylize")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "GET, POST"


def test_a_full_queue_answers_429_with_retry_after(lib: Lib):
    from api import create_app

    svc = dataclasses.replace(lib.svc, stylize=dataclasses.replace(lib.svc.stylize,
                                                                   queue_max=2))  # fmt: skip
    client = TestClient(create_app(svc, background=False), raise_server_exceptions=False)
    a = lib.item(lib.photos[0])
    assert [client.post("/api/stylize", data={"item_id": a, "style_item_id": a}).status_code
            for _ in range(2)] == [202, 202]  # fmt: skip
    r = client.post("/api/stylize", data={"item_id": a, "style_item_id": a})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "waiting" in r.json()["error"]["message"]


def test_jobs_are_listed_newest_first_and_by_state(lib: Lib):
    a, b = lib.item(lib.photos[0]), lib.item(lib.photos[1])
    first = lib.start(item_id=a, style_item_id=b).json()
    second = lib.start(item_id=b, style_item_id=a).json()
    lib.client.post(f"/api/stylize/{first['id']}/cancel")
    stats = lib.client.get("/api/stats").json()["stylize"]
    assert stats["jobs"] == {"cancelled": 1, "queued": 1} and stats["adds_to_library"]
    assert (stats["defaults"]["side"], stats["max_steps"]) == (48, 1000)
    listed = lib.client.get("/api/stylize").json()["jobs"]
    assert [j["id"] for j in listed] == [second["id"], first["id"]]
    queued = lib.client.get("/api/stylize", params={"state": "queued"}).json()["jobs"]
    assert [j["id"] for j in queued] == [second["id"]]
    by_item = lib.client.get("/api/stylize", params={"item_id": b}).json()["jobs"]
    assert [j["id"] for j in by_item] == [second["id"]]
    assert lib.client.get("/api/stylize", params={"state": "lost"}).status_code == 422
    assert "owner" not in listed[0] and "result_file" not in listed[0]  # no internals


@pytest.mark.parametrize("through_a_link", [False, True])
def test_the_data_dir_inside_a_library_folder_is_never_indexed(
    tmp_path: Path, env: dict[str, str], through_a_link: bool
):
    from everlook.settings import Settings
    from everlook.wiring import Parts

    root = Path(env["EVERLOOK_HOME"]).parent  # the library holds the data dir
    make_library(root / "photos", 2)
    stray = root / "home" / "stylize" / "previews" / "7.jpg"
    stray.parent.mkdir(parents=True)
    picture(5).save(stray)
    parts = Parts(Settings(include_hidden=True))
    walked = root
    if through_a_link:  # the library folder is reached by a symlink: paths differ
        walked = tmp_path.parent / f"{tmp_path.name}-link"
        walked.symlink_to(root)
    report = parts.pipeline().run([str(walked)])
    assert report.new == 2
    assert parts.catalog.stats()["items"]["total"] == 2
