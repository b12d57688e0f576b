"""The watcher's job queue shared by many processes (issue [9] point 5): claims carry an
owner and a lease; a job is taken over when its owner's lease runs out or its process is
gone, never while it lives; concurrent claimers never get the same job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def url(env: dict[str, str]) -> str:
    from everlook.settings import Settings

    return Settings().catalog_url


def queue(url: str, owner: str, lease_s: float = 10.0) -> Any:
    import migrations
    from catalog import make_engine
    from catalog.jobs import JobQueue

    engine = make_engine(url)
    migrations.ensure_head(engine)
    return JobQueue(engine, owner=owner, lease_s=lease_s)


def test_a_held_job_is_taken_over_only_when_its_lease_runs_out(url: str) -> None:
    host = socket.gethostname()
    a, b = queue(url, f"{host}:1:a"), queue(url, f"{host}:2:b")
    t = time.time()
    a.put("/lib/x.jpg", "index", t - 1)
    (job,) = a.claim(t, 10)
    assert b.claim(t + 5, 10) == []  # held
    assert a.renew([job.id], now=t + 9) == 1  # still working: lease to t + 19
    assert b.claim(t + 15, 10) == []
    (taken,) = b.claim(t + 20, 10)  # a went quiet: b takes it over
    assert taken.id == job.id
    a.finish([job.id])  # a late finish of the old owner does not drop b's job
    assert a.pending() == 1 and a.renew([job.id]) == 0
    b.finish([job.id])
    assert b.pending() == 0


def test_a_start_releases_the_jobs_of_its_hosts_dead_processes_only(url: str) -> None:
    host = socket.gethostname()
    t = time.time()
    owners = {"dead": f"{host}:999999:x", "alive": f"{host}:{os.getpid()}:y",
              "other host": "elsewhere:1:z"}  # fmt: skip
    for name, owner in owners.items():
        q = queue(url, owner)
        q.put(f"/lib/{name}.jpg", "index", t - 1)
        assert len(q.claim(t, 1)) == 1
    me = queue(url, f"{host}:{os.getpid()}:me")
    assert me.release_dead(alive=lambda pid: pid != 999999) == 1
    (got,) = me.claim(t, 10)
    assert got.path == "/lib/dead.jpg"  # the live one and the other host's stay theirs


def test_new_events_on_a_held_job_requeue_it_and_its_holder_leaves_it(url: str) -> None:
    a = queue(url, "h:1:a")
    t = time.time()
    a.put("/lib/x.jpg", "index", t - 1)
    (job,) = a.claim(t, 10)
    a.put("/lib/x.jpg", "index", t)  # the file changed while a worked on it
    a.finish([job.id])
    assert a.pending() == 1  # the new version is still to be indexed


CLAIMER = """
import json, sys, time
sys.path.insert(0, {repo!r})
import migrations
from catalog import make_engine
from catalog.jobs import JobQueue
engine = make_engine({url!r})
migrations.ensure_head(engine)
q = JobQueue(engine, owner="h:%d:c" % {n}, lease_s=60)
got = []
while True:
    jobs = q.claim(time.time(), 7)
    if not jobs:
        break
    got += [j.id for j in jobs]
    q.finish([j.id for j in jobs])
print(json.dumps(got))
"""


@pytest.mark.slow
def test_four_processes_working_one_queue_each_take_every_job_exactly_once(url: str) -> None:
    q = queue(url, "h:0:setup")
    t = time.time() - 1
    for i in range(300):
        q.put(f"/lib/{i:04d}.jpg", "index", t)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVERLOOK_")}
    procs = []
    for n in range(4):
        code = CLAIMER.format(repo=str(REPO), url=url, n=n)
        procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env))  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-800:] for _, e in outs]
    taken = [json.loads(o) for o, _ in outs]
    flat = [i for t_ in taken for i in t_]
    assert len(flat) == len(set(flat)) == 300  # every job once, none twice
    assert q.pending() == 0


def test_row_ids_go_past_two_to_the_31(url: str) -> None:
    """64-bit keys: an item, its path and its vector under ids past 2^31 (PostgreSQL's
    integer would overflow; SQLite's rowid is 64-bit already)."""
    from sqlalchemy import insert, select, text

    from catalog.db import make_sessionmaker
    from catalog.models import Embedding, FilePath, Item, utcnow

    q = queue(url, "h:0:keys")
    big = 2**31 + 7
    engine = q.Session.kw["bind"]
    with make_sessionmaker(engine).begin() as s:
        if engine.dialect.name == "postgresql":
            s.execute(text("SELECT setval('items_id_seq', :v)"), {"v": big})
            s.execute(text("SELECT setval('paths_id_seq', :v)"), {"v": big})
            s.execute(text("SELECT setval('embeddings_id_seq', :v)"), {"v": big})
            now = None
        else:
            s.execute(insert(Item).values(id=big, sha256="0" * 64, kind="image", size_bytes=1))
            now = big
        item = s.scalar(insert(Item).values(sha256="1" * 64, kind="image", size_bytes=1)
                        .returning(Item.id))  # fmt: skip
        assert item is not None and item > 2**31 and (now is None or item == big + 1)
        path = s.scalar(insert(FilePath).values(item_id=item, path="/lib/big.jpg", size=1,
                                                mtime_ns=1).returning(FilePath.id))  # fmt: skip
        s.execute(insert(Embedding).values(item_id=item, space="clip", model_id="m", dim=1,
                                           vector=b"\0\0\0\0", created_at=utcnow()))  # fmt: skip
    with make_sessionmaker(engine)() as s:
        assert s.scalar(select(FilePath.item_id).where(FilePath.id == path)) == item
        row = s.scalar(select(Embedding.id).where(Embedding.item_id == item))
        assert row is not None
        if engine.dialect.name == "postgresql":
            assert row > 2**31  # from its bigint sequence


def test_a_job_that_takes_its_workers_down_every_time_is_given_up_and_recorded(url: str):
    from catalog import Catalog, make_engine
    from catalog.jobs import MAX_ATTEMPTS

    t = time.time()
    queue(url, "h:0:setup").put("/lib/poison.jpg", "index", t - 1)
    for n in range(MAX_ATTEMPTS):  # each claimer dies holding it; its lease runs out
        (got,) = queue(url, f"h:{n + 1}:w", lease_s=1).claim(t + 2 * n, 1)
        assert got.path == "/lib/poison.jpg"
    assert queue(url, "h:99:z").claim(t + 2 * MAX_ATTEMPTS + 5, 10) == []
    failures = Catalog(make_engine(url)).stats()["failures"]
    assert [f["path"] for f in failures] == ["/lib/poison.jpg"]
    assert "crashed or was killed" in failures[0]["reason"]


def test_a_job_whose_worker_died_is_claimed_again_in_a_smaller_batch(url: str) -> None:
    q = queue(url, "h:1:w", lease_s=1)
    t = time.time()
    q.put_many([(f"/lib/{i:02d}.jpg", "index", t - 1, None, None) for i in range(40)])
    first = q.claim(t, 32)
    assert len(first) == 32  # the worker holding them dies
    again = queue(url, "h:2:w", lease_s=1).claim(t + 5, 32)
    assert len(again) == 16  # tried once: half the batch
    third = queue(url, "h:3:w", lease_s=1).claim(t + 10, 32)
    assert len(third) == 8  # tried twice (those 16) or the fresh ones after them


def test_a_job_looked_at_and_put_back_unsettled_is_never_given_up(url: str) -> None:
    from catalog.jobs import MAX_ATTEMPTS

    q = queue(url, "h:1:w", lease_s=1)
    t = time.time()
    q.put("/lib/slow-copy.jpg", "index", t - 1)
    for n in range(MAX_ATTEMPTS * 2):  # a file still being written: looked at, put back
        (got,) = q.claim(t + n, 1)
        q.reschedule(got.id, t + n, 10 + n, 1000 + n)
    assert len(q.claim(t + 100, 1)) == 1


def test_workers_share_a_stages_pending_items_without_doing_one_twice(url: str) -> None:
    """Two catalogs (two workers): on PostgreSQL an item one holds for a stage is not
    handed to the other until it lets go (or dies: the lock goes with its connection);
    on SQLite every claim is granted (one machine; results are stored once anyway)."""
    from catalog import Catalog, make_engine

    a, b = Catalog(make_engine(url)), Catalog(make_engine(url))
    assert a.stages.claim("detect/yolo", [1, 2, 3]) == [1, 2, 3]
    got = b.stages.claim("detect/yolo", [2, 3, 4])
    assert b.stages.claim("style", [2]) == [2]  # another stage: another claim
    if a.engine.dialect.name == "postgresql":
        assert got == [4]
        a.stages.unclaim("detect/yolo", [1, 2, 3])
        assert b.stages.claim("detect/yolo", [2, 3]) == [2, 3]
        # A worker that dies lets go with its connection.
        b.stages._claims.close()
        b.engine.dispose()  # the pooled connection itself closed, as at a process's end
        b.stages._claims = None
        assert a.stages.claim("detect/yolo", [2, 3, 4]) == [2, 3, 4]
    else:
        assert got == [2, 3, 4]
