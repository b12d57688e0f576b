"""The style-job queue in the catalog: states, leases, claims that race, crash recovery,
cancel, the queue cap, and which items are results added back to the library."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from catalog import Catalog, NewItem, make_engine
from catalog.stylejobs import JobStateError, QueueFull, StyleQueue, new_owner

pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL


SETTINGS = {"side": 64, "steps": 10}


@pytest.fixture
def cat(tmp_path: Path, catalog_backend: str, request: pytest.FixtureRequest) -> Catalog:
    import migrations
    from tests.conftest import catalog_url

    engine = make_engine(catalog_url(catalog_backend, tmp_path / "c.db", request))
    migrations.upgrade(engine)
    return Catalog(engine)


def add_item(cat: Catalog, sha: str, kind: str = "image") -> int:
    new = NewItem(sha256=sha, kind=kind, size_bytes=1, path=f"/lib/{sha[:8]}.png", mtime_ns=1)
    ids = cat.add_items([new], stage="t")
    return ids[sha]


def new_job(q: StyleQueue, item: int, style: int, **kw: Any) -> dict[str, Any]:
    return q.create(item_id=item, style_kind="item", style_item_id=style, settings=SETTINGS,
                    total=10, **kw)  # fmt: skip


def test_a_job_moves_from_queued_to_running_to_done_with_its_progress_and_provenance(cat):
    q = StyleQueue(cat.engine)
    a, b = add_item(cat, "a" * 64), add_item(cat, "b" * 64)
    job = new_job(q, a, b)
    assert (job["state"], job["step"], job["attempts"]) == ("queued", 0, 0)
    assert job["item_sha256"] == "a" * 64 and job["style"]["sha256"] == "b" * 64

    me = new_owner()
    claimed = q.claim(me, lease_s=30)
    assert claimed is not None and claimed["id"] == job["id"]
    assert (claimed["state"], claimed["attempts"], claimed["owner"]) == ("running", 1, me)
    assert q.claim(new_owner(), lease_s=30) is None  # held: nobody else gets it

    assert q.progress(job["id"], me, 4, lease_s=30, preview_step=3) is True
    got = q.get(job["id"])
    assert got is not None and (got["step"], got["preview_step"]) == (4, 3)

    assert q.finish(job["id"], me, result_file="stylize/results/1.png", result_sha256="c" * 64,
                    model_id="torchvision/vgg19:random-seed0", seconds=1.5)  # fmt: skip
    done = q.get(job["id"])
    assert done is not None and done["state"] == "done" and done["model_id"].endswith("seed0")
    assert done["finished_at"] is not None and done["owner"] == me
    with pytest.raises(JobStateError):
        q.cancel(job["id"])


def test_two_workers_racing_for_one_job_never_both_get_it(cat):
    q = StyleQueue(cat.engine)
    a = add_item(cat, "a" * 64)
    ids = {new_job(q, a, a)["id"] for _ in range(6)}
    got: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        me = new_owner()
        while (job := q.claim(me, lease_s=30)) is not None:
            with lock:
                got.append(job["id"])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)  # each job exactly once


def test_a_job_whose_worker_stopped_reporting_is_taken_over_after_its_lease(cat):
    q = StyleQueue(cat.engine)
    a = add_item(cat, "a" * 64)
    job = new_job(q, a, a)
    dead = "otherhost:123:abcd"
    now = time.time()
    assert q.claim(dead, lease_s=10, now=now) is not None
    assert q.claim(new_owner(), lease_s=10, now=now + 5) is None  # lease still running
    me = new_owner()
    taken = q.claim(me, lease_s=10, now=now + 11)
    assert taken is not None and taken["attempts"] == 2 and taken["owner"] == me
    # The old owner, should it wake up, can no longer write progress or finish it.
    assert q.progress(job["id"], dead, 5, lease_s=10) is False
    assert not q.finish(job["id"], dead, result_file="x", result_sha256="d" * 64,
                        model_id="m", seconds=1)  # fmt: skip


def test_a_job_whose_worker_died_on_every_attempt_fails_with_a_reason(cat):
    q = StyleQueue(cat.engine)
    a = add_item(cat, "a" * 64)
    job = new_job(q, a, a, max_attempts=2)
    t = time.time()
    assert q.claim("h:1:a", 1, now=t) is not None
    assert q.claim("h:2:b", 1, now=t + 2) is not None  # attempt 2
    assert q.claim("h:3:c", 1, now=t + 4) is None  # no third attempt
    failed = q.get(job["id"])
    assert failed is not None and failed["state"] == "failed"
    assert "every attempt" in failed["error"] and failed["attempts"] == 2


def test_a_dead_process_on_this_host_has_its_job_released_at_once(cat):
    q = StyleQueue(cat.engine)
    a = add_item(cat, "a" * 64)
    job = new_job(q, a, a)
    import socket

    ghost = f"{socket.gethostname()}:999999:dead"
    assert q.claim(ghost, lease_s=3600) is not None
    assert q.claim(new_owner(), lease_s=30) is None
    assert q.release_dead(alive=lambda pid: pid != 999999) == 1
    taken = q.claim(new_owner(), lease_s=30)
    assert taken is not None and taken["id"] == job["id"] and taken["attempts"] == 2


def test_a_live_process_keeps_its_job(cat):
    q = StyleQueue(cat.engine)
    a = add_item(cat, "a" * 64)
    new_job(q, a, a)
    assert q.claim(new_owner(), lease_s=3600) is not None  # owned by this very process
    assert q.release_dead() == 0
    assert q.claim(new_owner(), lease_s=30) is None


def test_cancel_stops_a_queued_job_at_once_and_a_running_one_at_its_next_step(cat):
    q = StyleQueue(cat.engine)
    a = add_item(cat, "a" * 64)
    first, second = new_job(q, a, a), new_job(q, a, a)
    me = new_owner()
    assert q.claim(me, 30)["id"] == first["id"]  # type: ignore[index]
    assert q.cancel(second["id"])["state"] == "cancelled"
    running = q.cancel(first["id"])
    assert running["state"] == "running" and running["cancel_requested"]
    assert q.progress(first["id"], me, 3, 30) is False  # the worker is told to stop
    assert q.cancelled(first["id"], me)
    assert q.get(first["id"])["state"] == "cancelled"  # type: ignore[index]
    with pytest.raises(KeyError):
        q.cancel(12345)


def test_a_failed_attempt_is_retried_until_its_attempts_are_used(cat):
    q = StyleQueue(cat.engine)
    a = add_item(cat, "a" * 64)
    job = new_job(q, a, a, max_attempts=2)
    me = new_owner()
    q.claim(me, 30)
    assert q.fail(job["id"], me, "CUDA out of memory", retry=True)
    again = q.get(job["id"])
    assert again is not None and again["state"] == "queued" and again["error"]
    q.claim(me, 30)
    q.fail(job["id"], me, "CUDA out of memory", retry=True)
    final = q.get(job["id"])
    assert final is not None and final["state"] == "failed" and final["attempts"] == 2


def test_a_worker_shutting_down_gives_its_job_back_without_using_an_attempt(cat):
    q = StyleQueue(cat.engine)
    a = add_item(cat, "a" * 64)
    job = new_job(q, a, a)
    me = new_owner()
    q.claim(me, 30)
    assert q.release(job["id"], me)
    back = q.get(job["id"])
    assert back is not None and (back["state"], back["attempts"], back["owner"]) == (
        "queued", 0, None)  # fmt: skip


def test_a_job_given_back_after_a_cancel_was_asked_ends_cancelled(cat):
    q = StyleQueue(cat.engine)
    a = add_item(cat, "a" * 64)
    job = new_job(q, a, a)
    me = new_owner()
    q.claim(me, 30)
    q.cancel(job["id"])
    assert q.release(job["id"], me)
    assert q.get(job["id"])["state"] == "cancelled"  # type: ignore[index]
    assert q.claim(new_owner(), 30) is None


def test_the_queue_cap_refuses_new_jobs_with_a_time_to_come_back(cat):
    q = StyleQueue(cat.engine)
    a = add_item(cat, "a" * 64)
    new_job(q, a, a, queue_max=2)
    new_job(q, a, a, queue_max=2)
    with pytest.raises(QueueFull) as full:
        new_job(q, a, a, queue_max=2, retry_after=42)
    assert full.value.retry_after == 42
    q.claim(new_owner(), 30)  # one starts running: a queue slot frees
    assert new_job(q, a, a, queue_max=2)["state"] == "queued"


def test_a_job_of_an_item_not_in_the_library_is_refused(cat):
    q = StyleQueue(cat.engine)
    a = add_item(cat, "a" * 64)
    with pytest.raises(LookupError, match="item 999"):
        new_job(q, 999, a)
    with pytest.raises(LookupError, match="style item 998"):
        new_job(q, a, 998)


def test_deleting_an_item_keeps_the_history_of_its_jobs(cat):
    from sqlalchemy import text

    q = StyleQueue(cat.engine)
    a, b = add_item(cat, "a" * 64), add_item(cat, "b" * 64)
    job = new_job(q, a, b)
    with cat.Session.begin() as s:
        s.execute(text("DELETE FROM items WHERE id = :i"), {"i": a})
    kept = q.get(job["id"])
    assert kept is not None and kept["item_id"] is None and kept["item_sha256"] == "a" * 64


def test_a_result_added_to_the_library_marks_its_item_as_derived(cat):
    q = StyleQueue(cat.engine)
    a = add_item(cat, "a" * 64)
    job = new_job(q, a, a, add_to_library=True)
    me = new_owner()
    q.claim(me, 30)
    q.finish(job["id"], me, result_file="r.png", result_sha256="e" * 64, model_id="m",
             seconds=1)  # fmt: skip
    assert q.get(job["id"])["derived_item_id"] is None  # type: ignore[index]  # not indexed yet
    d = add_item(cat, "e" * 64)  # the indexer took the file in
    assert q.get(job["id"])["derived_item_id"] == d  # type: ignore[index]
    assert q.derived_items([a, d]) == {d: job["id"]}


def test_an_artists_exemplar_is_the_strongest_artwork_and_never_a_derived_result(cat):
    from catalog.models import LabelRow

    q = StyleQueue(cat.engine)
    weak, strong, photo, result = (add_item(cat, c * 64) for c in "abcd")
    rows = [(weak, "style", 0.6), (weak, "artwork", 0.9), (strong, "style", 0.8),
            (strong, "artwork", 0.9), (photo, "style", 0.99), (photo, "artwork", 0.1),
            (result, "style", 0.95), (result, "artwork", 0.95)]  # fmt: skip
    with cat.Session.begin() as s:
        for item, kind, score in rows:
            s.add(LabelRow(item_id=item, stage="style", model_id="m", kind=kind,
                           label="mosaic" if kind == "style" else "artwork", score=score,
                           rank=1))  # fmt: skip
    assert q.exemplar("mosaic", min_artwork=0.5) == result  # not yet known as a result
    job = new_job(q, weak, strong, add_to_library=True)
    me = new_owner()
    q.claim(me, 30)
    q.finish(job["id"], me, result_file="r.png", result_sha256="d" * 64, model_id="m",
             seconds=1)  # fmt: skip
    assert q.exemplar("mosaic", min_artwork=0.5) == strong
    assert q.exemplar("cubism", min_artwork=0.5) is None
