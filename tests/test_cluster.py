"""Everlook spread over processes as over machines (issue [9] point 7), all servers real:
PostgreSQL (pgserver) holds the catalog, Milvus (`milvus-lite server`, spoken to over
gRPC as to a Milvus standalone) the vectors. One `everlook watch --enqueue-only` queues
the library; three `everlook worker` processes index and enrich it while workers are
killed with SIGKILL at random and started again; two `everlook serve` processes answer
queries. Every process has its own home folder, as on separate machines.

Afterwards: every file indexed exactly once, every stage's results stored once, the
catalog's vectors and Milvus's the same ids, and both API processes giving the same
answers to the same queries."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TINY, TINY_TAG, new_pg_database
from tests.helpers import make_library
from tests.serving import clean_env, serving

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")

FILES = int(os.environ.get("EVERLOOK_TEST_CLUSTER_FILES", "500"))
KILLS = int(os.environ.get("EVERLOOK_TEST_CLUSTER_KILLS", "20"))
STAGES = ["style", "labels"]


def _home(root: Path, name: str, onnx_cache: Path) -> Path:
    home = root / name
    (home / "models").mkdir(parents=True)
    (home / "models" / "onnx").symlink_to(onnx_cache, target_is_directory=True)
    return home


def _spawn(args: list[str], settings: dict[str, str], home: Path, log: Path) -> Any:
    env = clean_env({**settings, "EVERLOOK_HOME": str(home)})
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "everlook", *args], env=env, cwd=home,
                                stdout=out, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _counts(url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    q = {
        "jobs": "SELECT count(*) FROM jobs",
        "items": "SELECT count(*) FROM items",
        "paths": "SELECT count(*) FROM paths",
        "vectors": "SELECT count(*) FROM embeddings WHERE space = 'clip'",
        **{f"done {st}": f"SELECT count(*) FROM stage_status WHERE stage = '{st}' "
           "AND status = 'done'" for st in STAGES},
    }  # fmt: skip
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return {k: int(c.execute(text(v)).scalar() or 0) for k, v in q.items()}
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_workers_killed_at_random_index_and_enrich_a_library_exactly_once(
    tmp_path: Path, model_dir: Path, onnx_cache: Path, postgres: Any, milvus_uri: str
) -> None:
    from sqlalchemy import create_engine, text

    import migrations
    from catalog import make_engine

    url = new_pg_database(postgres)
    migrations.ensure_head(make_engine(url))  # polled from the start
    settings = {
        "EVERLOOK_DATABASE_URL": url, "EVERLOOK_VECTOR_BACKEND": "milvus",
        "EVERLOOK_MILVUS_URI": milvus_uri,
        "EVERLOOK_MILVUS_COLLECTION": f"c_{uuid.uuid4().hex[:8]}",
        "EVERLOOK_MODEL_DIR": str(model_dir), "EVERLOOK_CLIP_MODEL": TINY,
        "EVERLOOK_CLIP_PRETRAINED": TINY_TAG, "EVERLOOK_DEVICE": "cpu",
        "EVERLOOK_BATCH_SIZE": "8", "EVERLOOK_CPU_BF16": "false",
        "EVERLOOK_STAGES": json.dumps(STAGES), "EVERLOOK_STYLIZE_CONCURRENCY": "0",
        "EVERLOOK_WATCH_QUIET_SECONDS": "0.2", "EVERLOOK_JOB_LEASE_SECONDS": "20",
        "EVERLOOK_DECODE_WORKERS": "1",
    }  # fmt: skip
    lib = tmp_path / "lib"
    make_library(lib, FILES)
    logs = tmp_path / "logs"
    logs.mkdir()
    leader = _spawn(["watch", "--enqueue-only", str(lib)], settings,
                    _home(tmp_path, "leader", onnx_cache), logs / "leader.log")  # fmt: skip
    homes = [_home(tmp_path, f"worker{i}", onnx_cache) for i in range(3)]
    workers = [_spawn(["worker"], settings, h, logs / f"worker{i}.log")
               for i, h in enumerate(homes)]  # fmt: skip
    rng = random.Random(7)
    kills = 0
    try:
        deadline = time.monotonic() + 400
        while True:
            now = _counts(url)
            finished = (now["jobs"] == 0 and now["items"] == FILES
                        and all(now[f"done {st}"] == FILES for st in STAGES))  # fmt: skip
            if finished and kills >= KILLS:
                break
            assert time.monotonic() < deadline, f"not done in time: {now}"
            assert leader.poll() is None, (logs / "leader.log").read_text()[-3000:]
            time.sleep(rng.uniform(0.3, 2.5))
            if kills < KILLS:
                n = rng.randrange(3)
                workers[n].send_signal(signal.SIGKILL)
                workers[n].wait()
                kills += 1
                workers[n] = _spawn(["worker"], settings, homes[n], logs / f"worker{n}.log")
        # Every file indexed exactly once; every stage's results stored once.
        final = _counts(url)
        assert final["items"] == final["paths"] == final["vectors"] == FILES, final
        engine = create_engine(url)
        with engine.connect() as c:
            dup = c.execute(
                text(
                    "SELECT count(*) FROM (SELECT item_id, stage, kind, rank "
                    "FROM labels GROUP BY 1, 2, 3, 4 HAVING count(*) > 1) d"
                )
            )
            assert dup.scalar() == 0  # one set of labels per item and stage, never two
            per = c.execute(text("SELECT stage, count(DISTINCT item_id) FROM labels GROUP BY 1"))
            assert {st: n for st, n in per} == dict.fromkeys(STAGES, FILES)
            wanted = sorted(c.execute(text("SELECT item_id FROM embeddings WHERE space = "
                                           "'clip'")).scalars())  # fmt: skip
        engine.dispose()
        # The vector store holds exactly the catalog's vectors.
        from search.vectors.milvus_store import client

        cl = client(milvus_uri)
        alias = [a for c_ in cl.list_collections()
                 for a in cl.list_aliases(collection_name=c_).get("aliases") or []
                 if a.startswith(settings["EVERLOOK_MILVUS_COLLECTION"])]  # fmt: skip
        assert len(alias) == 1
        it = cl.query_iterator(alias[0], batch_size=1000, filter="id >= 0", output_fields=["id"])
        have: list[int] = []
        while page := it.next():
            have += [r["id"] for r in page]
        it.close()
        assert sorted(have) == wanted
        assert all(p.poll() is None for p in workers), "a worker died on its own"
    finally:
        for p in [leader, *workers]:
            p.send_signal(signal.SIGTERM)
        for p in [leader, *workers]:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    # Two API replicas, each with its own home, answer alike.
    api = [{**settings, "EVERLOOK_HOME": str(_home(tmp_path, f"api{i}", onnx_cache))}
           for i in range(2)]  # fmt: skip
    with (
        serving(api[0], cwd=tmp_path) as a, serving(api[1], cwd=tmp_path) as b,
        a.client() as ca, b.client() as cb,
    ):  # fmt: skip
        for q in ("a red square", "a photo of a dog", "blue"):
            ra = ca.get("/api/search", params={"q": q, "k": 10})
            rb = cb.get("/api/search", params={"q": q, "k": 10})
            assert ra.status_code == rb.status_code == 200, (ra.text, rb.text)
            hits_a = [(h["item_id"], round(h["score"], 5)) for h in ra.json()["results"]]
            hits_b = [(h["item_id"], round(h["score"], 5)) for h in rb.json()["results"]]
            assert hits_a == hits_b and len(hits_a) == 10
