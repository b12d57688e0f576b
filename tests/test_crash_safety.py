"""Killing the indexer at any instant loses nothing and duplicates nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import make_library, sql, sql_count

pytestmark = [pytest.mark.slow, pytest.mark.both_catalogs]


def count_items(env: dict[str, str]) -> int:
    return sql_count(env, "select count(*) from items")  # 0: not created or migrated yet


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
    kills = 0
    for threshold in (10, 35, 60):
        proc = start(env, lib)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if count_items(env) >= threshold:
                proc.send_signal(signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.02)
        proc.wait(timeout=30)
    assert kills >= 2, "the runs finished before they could be killed: make the library bigger"
    assert count_items(env) < 90

    final = start(env, lib)
    assert final.wait(timeout=300) == 0

    paths = [os.fsdecode(bytes(r[0])) for r in sql(env, "select path from paths")]
    items = sql(env, "select count(*), count(distinct sha256) from items")[0]
    emb_ids = sorted(r[0] for r in sql(env, "select item_id from embeddings"))
    item_ids = sorted(r[0] for r in sql(env, "select id from items"))
    stage_done = sql_count(env, "select count(*) from stage_status where status='done'")
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
