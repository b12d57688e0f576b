"""Style jobs across processes: `everlook worker` killed mid-job and restarted, stopped
gracefully, `everlook stylize` on the command line, and a real `everlook serve` styling a
real photo with a real painting end to end through its API."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.helpers import make_library, picture, wait_for
from tests.serving import clean_env, serving, stop

pytestmark = [pytest.mark.slow, pytest.mark.both_catalogs]

SMALL = {"EVERLOOK_STYLIZE_WEIGHTS": "random", "EVERLOOK_STYLIZE_SIDE": "48",
         "EVERLOOK_STYLIZE_STEPS": "6", "EVERLOOK_STYLIZE_PREVIEW_EVERY": "2"}  # fmt: skip


@pytest.fixture
def small(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for k, v in SMALL.items():
        monkeypatch.setenv(k, v)
    return {**env, **SMALL}


@pytest.fixture
def indexed(small: dict[str, str], tmp_path: Path) -> tuple[Any, list[Path]]:
    from everlook.settings import Settings
    from everlook.wiring import Parts

    parts = Parts(Settings())
    photos = make_library(tmp_path / "library", 3)
    parts.pipeline().run([str(tmp_path / "library")])
    return parts, photos


@pytest.fixture
def workers(small: dict[str, str], tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    small = {**small, "EVERLOOK_JOB_LEASE_SECONDS": "3600"}

    def start() -> subprocess.Popen[str]:
        log = open(tmp_path / f"worker-{len(procs)}.log", "w")  # noqa: SIM115
        cmd = [sys.executable, "-m", "everlook", "worker"]
        p = subprocess.Popen(cmd, env=clean_env(small), cwd=tmp_path, stdout=log,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
        procs.append(p)
        return p

    yield start
    for p in procs:
        stop(p)


def test_a_worker_killed_mid_job_has_its_job_taken_over_by_the_next_one(indexed, workers):
    from catalog.stylejobs import StyleQueue

    parts, photos = indexed
    q = StyleQueue(parts.catalog.engine)
    ids = [parts.catalog.item_id_for_path(str(p)) for p in photos]
    job = q.create(item_id=ids[0], style_kind="item", style_item_id=ids[1],
                   settings={**parts.style_defaults(), "steps": 300}, total=300)  # fmt: skip
    first = workers()
    wait_for(lambda: (q.get(job["id"]) or {}).get("step", 0) >= 3, 120, "the job to run")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    orphan = q.get(job["id"])
    assert orphan is not None and orphan["state"] == "running"  # nobody said otherwise
    assert orphan["owner"].split(":")[1] == str(first.pid)

    # The lease is an hour (see the fixture): only seeing that the owner's process is
    # gone lets the next worker on this host take the job.
    second = workers()
    done = wait_for(lambda: (j := q.get(job["id"])) and j["state"] == "done" and j, 240,
                    "the second worker to finish the job")  # fmt: skip
    assert done["attempts"] == 2 and done["step"] == 300
    assert done["owner"].split(":")[1] == str(second.pid)
    assert (parts.settings.home / done["result_file"]).is_file()

    # Stopped gracefully mid-job, a worker puts the job back, its attempt not counted.
    again = q.create(item_id=ids[2], style_kind="item", style_item_id=ids[0],
                     settings={**parts.style_defaults(), "steps": 1000}, total=1000)  # fmt: skip
    wait_for(lambda: (q.get(again["id"]) or {}).get("step", 0) >= 2, 120, "the second job")
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 0
    back = q.get(again["id"])
    assert back is not None and (back["state"], back["attempts"], back["owner"]) == (
        "queued", 0, None)  # fmt: skip


def test_stylize_on_the_command_line_waits_runs_and_adds_the_result(indexed, cli, tmp_path):
    parts, photos = indexed
    out = tmp_path / "out.png"
    res = cli("stylize", str(photos[0]), "--style", str(photos[1]), "--wait", "--add",
              "--out", str(out), "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    job = json.loads(res.stdout)
    assert job["state"] == "done" and job["style"]["kind"] == "item"
    assert max(Image.open(out).size) == 48
    # No writer was running, so this process indexed the result itself.
    derived = job["derived_item_id"]
    assert derived is not None
    detail = parts.catalog.item(derived)
    assert detail is not None and detail["paths"] == [str(parts.settings.home / job["result_file"])]

    # A picture file that is not in the library is an uploaded style.
    loose = tmp_path / "loose.png"
    picture(77, (50, 40)).save(loose)
    code, queued = cli.json("stylize", str(photos[2]), "--style", str(loose))
    assert code == 0 and queued["state"] == "queued" and queued["style"]["kind"] == "upload"
    code, listed = cli.json("jobs")
    assert [j["id"] for j in listed] == [queued["id"], job["id"]]
    assert cli("jobs", "--cancel", str(queued["id"])).exit_code == 0
    assert cli("stylize", str(photos[0]), "--artist", "Nobody Atall").exit_code == 2
    assert cli("stylize", str(photos[0])).exit_code == 2  # no style given
    assert cli("stylize", "424242", "--style", str(photos[1])).exit_code == 2


def test_a_real_photo_in_the_style_of_a_real_painting_through_the_servers_api(
    small: dict[str, str], shared_images: Path, tmp_path: Path
):
    photo = shared_images / "dog_with-bicycle-and-truck_darknet.jpg"
    painting = shared_images / "painting_van-gogh-the-starry-night_neuralstyle.jpg"
    lib = tmp_path / "library"
    lib.mkdir()
    for f in (photo, painting):
        shutil.copyfile(f, lib / f.name)
    settings = {**small, "EVERLOOK_STYLIZE_SIDE": "96", "EVERLOOK_STYLIZE_STEPS": "40",
                "EVERLOOK_STYLIZE_PREVIEW_EVERY": "5"}  # fmt: skip
    with serving(settings, str(lib), cwd=tmp_path) as served, served.client() as c:
        ids = {}
        for f in (photo, painting):  # the watcher indexes the folder as the server starts
            hits = wait_for(lambda f=f: c.get("/api/search", params={
                "path_glob": f"*{f.name}", "k": 1}).json()["results"], 120, "indexing")  # fmt: skip
            ids[f.name] = hits[0]["item_id"]
        r = c.post("/api/stylize", data={"item_id": ids[photo.name], "add_to_library": "true",
                                         "style_item_id": ids[painting.name]})  # fmt: skip
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        states, steps = [], []
        with c.stream("GET", f"/api/stylize/{job_id}/events", timeout=300) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    ev = json.loads(line[6:])
                    states.append(ev["state"])
                    steps.append(ev["step"])
        assert states[-1] == "done", states
        assert max(steps) == 40 and len(set(steps)) > 3  # progress was seen live
        result = Image.open(io.BytesIO(c.get(f"/api/stylize/{job_id}/result").content))
        content = Image.open(io.BytesIO(c.get(f"/api/items/{ids[photo.name]}/file").content))
        w, h = content.size  # the photo's shape is kept, at the asked long side
        assert max(result.size) == 96 and abs(result.size[0] / result.size[1] - w / h) < 0.05
        moved = _colour_distance(result, painting) < _colour_distance(content, painting)
        assert moved, "the result's colours did not move toward the painting's"
        derived = wait_for(lambda: c.get(f"/api/stylize/{job_id}").json()["derived_item_id"],
                           60, "the watcher to index the result")  # fmt: skip
        detail = c.get(f"/api/items/{derived}").json()
        assert detail["derived_from"]["item_id"] == ids[photo.name]
        assert detail["derived_from"]["style"]["item_id"] == ids[painting.name]
        # Served like the library's files (its thumbnail too), by catalog id.
        assert c.get(f"/api/items/{derived}/file").content == c.get(
            f"/api/stylize/{job_id}/result").content  # fmt: skip
        assert c.get(f"/api/items/{derived}/thumbnail").status_code == 200
    assert "Traceback" not in served.output()


def _colour_distance(img: Image.Image, painting: Path) -> float:
    """Distance between mean colours (RGB, 0..255): a crude, robust pixel statistic."""
    import numpy as np

    a = np.asarray(img.convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
    b = np.asarray(Image.open(painting).convert("RGB"), dtype=np.float64).reshape(-1, 3).mean(0)
    return float(np.linalg.norm(a - b))
