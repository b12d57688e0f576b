"""Killing the indexer at any instant loses nothing and duplicates nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import make_library

pytestmark = pytest.mark.slow


def count_items(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return int(con.execute("select count(*) from items").fetchone()[0])
    except sqlite3.Error:
        return 0  # not created or not migrated yet


def start(env: dict[str, str], lib: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "everlook", "index", str(lib)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_sigkill_mid_run_then_rerun_indexes_every_file_exactly_once(env, tmp_path: Path):
    lib = tmp_path / "lib"
    files = make_library(lib, 90)
    # two copies of one photo: must end as one item with two paths, even across kills
    (lib / "dup.jpg").write_bytes(files[5].read_bytes())
    env = {**env, "EVERLOOK_BATCH_SIZE": "4", "EVERLOOK_INDEX_SAVE_EVERY": "8"}
    db = Path(env["EVERLOOK_HOME"]) / "catalog.db"
    kills = 0
    for threshold in (10, 35, 60):
        proc = start(env, lib)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if count_items(db) >= threshold:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.02)
        proc.wait(timeout=30)
    assert kills >= 2, "the runs finished before they could be killed: make the library bigger"
    assert count_items(db) < 90

    final = start(env, lib)
    assert final.wait(timeout=300) == 0

    with sqlite3.connect(db) as con:
        paths = [os.fsdecode(r[0]) for r in con.execute("select path from paths")]
        items = con.execute("select count(*), count(distinct sha256) from items").fetchone()
        emb_ids = sorted(r[0] for r in con.execute("select item_id from embeddings"))
        item_ids = sorted(r[0] for r in con.execute("select id from items"))
        stage_done = con.execute(
            "select count(*) from stage_status where status='done'"
        ).fetchone()[0]
    assert sorted(paths) == sorted(str(p) for p in [*files, lib / "dup.jpg"])
    assert items == (90, 90)
    assert emb_ids == item_ids and stage_done == 90

    # The index file as saved (no reconciliation on load) agrees with the catalog.
    from search import vectors
    from search.vectors import IndexInfo

    info = IndexInfo("open_clip/everlook-tiny/seed0", 32)
    store = vectors.load("faiss", Path(env["EVERLOOK_HOME"]) / "index" / "clip.faiss", info)
    assert sorted(store.ids().tolist()) == emb_ids
    assert len(np.unique(store.ids())) == store.count()
