"""`everlook watch` with the real watchdog observer on real folders."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from catalog.jobs import JobQueue
from indexer.scan import ScanRules
from indexer.watch import Watcher, WatchOptions
from tests.helpers import jpeg_bytes, make_library, picture, save, sql, sql_count, wait_for
from tests.test_incremental import CountingEmbedder

pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL

QUIET = 0.3


@dataclass
class Watching:
    lib: Path
    watcher: Watcher
    counter: CountingEmbedder
    parts: Any

    def item(self, path: Path) -> int | None:
        return self.parts.catalog.item_id_for_path(str(path))

    def settle(self) -> None:
        """Wait until the queue is empty and stays empty for a moment."""

        def idle() -> bool:
            return self.watcher.queue.pending() == 0

        wait_for(idle, what="an empty queue")
        time.sleep(QUIET * 2)
        wait_for(idle, what="an empty queue")

    def consistent(self) -> None:
        ids = sorted(self.parts.catalog.embedding_ids("clip", self.parts.embedder.model_id))
        assert sorted(self.parts.index.store.ids().tolist()) == ids


@pytest.fixture
def watching(parts, tmp_path: Path) -> Iterator[Watching]:
    lib = tmp_path / "lib"
    lib.mkdir()
    counter = CountingEmbedder(parts.embedder)
    pipeline = parts.pipeline()
    pipeline.embedder = counter
    rules = ScanRules(parts.settings.include, [], False)
    opts = WatchOptions(quiet_seconds=QUIET, batch_size=8, save_idle_seconds=0.2)
    watcher = Watcher(
        pipeline, parts.catalog, JobQueue(parts.catalog.engine), [str(lib)], rules, opts
    )
    watcher.start()
    thread = threading.Thread(target=watcher.run_forever, daemon=True)
    thread.start()
    yield Watching(lib, watcher, counter, parts)
    watcher.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_new_file_is_indexed(watching):
    path = save(picture(1), watching.lib / "new.jpg")
    wait_for(lambda: watching.item(path), what="the new file in the catalog")
    assert watching.counter.embedded == 1
    watching.settle()  # the catalog commits before the index hears of the vector
    watching.consistent()


def test_a_modified_file_is_re_embedded_and_its_old_content_dropped(watching):
    path = save(picture(1), watching.lib / "a.jpg")
    old = wait_for(lambda: watching.item(path))
    save(picture(2), path)
    wait_for(lambda: watching.item(path) not in (None, old), what="the new content")
    # The old item goes when its batch prunes what it left without a path: just after
    # the new content is stored (its own transaction), so waited for, not assumed.
    wait_for(lambda: not watching.parts.catalog.item_exists(old), what="the old content gone")
    watching.settle()
    watching.consistent()


def test_a_renamed_file_keeps_its_item_and_is_not_re_embedded(watching):
    path = save(picture(3), watching.lib / "before.jpg")
    item = wait_for(lambda: watching.item(path))
    watching.settle()
    n = watching.counter.embedded
    path.rename(watching.lib / "after.jpg")
    wait_for(lambda: watching.item(watching.lib / "after.jpg") == item)
    watching.settle()
    assert watching.item(path) is None
    assert watching.counter.embedded == n


def test_a_file_moved_across_folders_keeps_its_item(watching):
    (watching.lib / "x").mkdir()
    (watching.lib / "y").mkdir()
    path = save(picture(4), watching.lib / "x" / "p.jpg")
    item = wait_for(lambda: watching.item(path))
    watching.settle()
    n = watching.counter.embedded
    shutil.move(path, watching.lib / "y" / "p.jpg")
    wait_for(lambda: watching.item(watching.lib / "y" / "p.jpg") == item)
    watching.settle()
    assert watching.counter.embedded == n and watching.item(path) is None


def test_a_folder_renamed_inside_the_tree_moves_all_its_paths(watching):
    folder = watching.lib / "trip"
    files = make_library(folder, 4)
    wait_for(lambda: all(watching.item(f) for f in files), what="the folder indexed")
    watching.settle()
    items = [watching.item(f) for f in files]
    n = watching.counter.embedded
    folder.rename(watching.lib / "trip-2026")
    moved = [watching.lib / "trip-2026" / f.relative_to(folder) for f in files]
    wait_for(lambda: [watching.item(f) for f in moved] == items, what="paths to follow")
    watching.settle()
    assert watching.counter.embedded == n
    assert all(watching.item(f) is None for f in files)


def test_a_folder_moved_out_is_removed_and_one_moved_in_is_indexed(watching, tmp_path):
    inside = watching.lib / "inside"
    files = make_library(inside, 3)
    wait_for(lambda: all(watching.item(f) for f in files))
    items = [watching.item(f) for f in files]
    shutil.move(inside, tmp_path / "outside")
    wait_for(lambda: all(watching.item(f) is None for f in files), what="moved-out paths gone")
    assert not any(watching.parts.catalog.item_exists(i) for i in items)

    elsewhere = make_library(tmp_path / "elsewhere", 3, start=50)
    shutil.move(tmp_path / "elsewhere", watching.lib / "arrived")
    arrived = [watching.lib / "arrived" / f.relative_to(tmp_path / "elsewhere") for f in elsewhere]
    wait_for(lambda: all(watching.item(f) for f in arrived), what="moved-in folder indexed")
    watching.settle()
    watching.consistent()


def test_a_deleted_file_leaves_catalog_and_index(watching):
    path = save(picture(5), watching.lib / "gone.jpg")
    item = wait_for(lambda: watching.item(path))
    path.unlink()
    wait_for(lambda: not watching.parts.catalog.item_exists(item), what="the item removed")
    watching.settle()
    assert item not in watching.parts.index.store.ids().tolist()


def test_a_burst_of_saves_becomes_one_job_and_one_embedding(watching):
    path = watching.lib / "burst.jpg"
    for i in range(10):
        path.write_bytes(jpeg_bytes(picture(100 + i)))
    final = hashlib.sha256(path.read_bytes()).hexdigest()
    item = wait_for(lambda: watching.item(path))
    watching.settle()
    assert watching.counter.embedded == 1
    assert watching.parts.catalog.item_ids_by_sha([final]) == {final: item}


def test_a_slow_copy_is_indexed_once_after_it_completes(watching):
    data = jpeg_bytes(picture(7, (1600, 1200)), quality=95)
    path = watching.lib / "slow.jpg"
    chunks = 8
    step = len(data) // chunks + 1
    with open(path, "wb") as fh:
        for i in range(chunks):  # pauses longer than the quiet period, file kept open
            fh.write(data[i * step : (i + 1) * step])
            fh.flush()
            time.sleep(QUIET * 1.7)
    item = wait_for(lambda: watching.item(path), what="the completed file")
    watching.settle()
    assert watching.counter.embedded == 1
    sha = hashlib.sha256(data).hexdigest()
    assert watching.parts.catalog.item_ids_by_sha([sha]) == {sha: item}
    assert watching.parts.catalog.stats()["failures"] == []


def test_temporary_names_are_ignored_until_renamed(watching):
    part = watching.lib / "download.jpg.part"
    part.write_bytes(jpeg_bytes(picture(8)))
    (watching.lib / "~$draft.jpg").write_bytes(jpeg_bytes(picture(9)))
    (watching.lib / ".hidden.jpg").write_bytes(jpeg_bytes(picture(10)))
    time.sleep(QUIET * 4)
    watching.settle()
    assert watching.counter.embedded == 0
    part.rename(watching.lib / "download.jpg")
    wait_for(lambda: watching.item(watching.lib / "download.jpg"))
    watching.settle()
    assert watching.counter.embedded == 1
    assert watching.parts.catalog.stats()["items"]["total"] == 1


def test_changes_made_while_not_watching_are_reconciled_on_start(parts, tmp_path):
    lib = tmp_path / "lib"
    files = make_library(lib, 4)
    parts.pipeline().run([str(lib)])
    files[0].unlink()
    shutil.move(files[1], lib / "renamed.jpg")
    save(picture(77), lib / "added.jpg")
    watcher = Watcher(
        parts.pipeline(),
        parts.catalog,
        JobQueue(parts.catalog.engine),
        [str(lib)],
        ScanRules(parts.settings.include),
        WatchOptions(quiet_seconds=QUIET),
    )
    report = watcher.start()
    watcher.close()
    assert (report.new, report.moved, report.removed) == (1, 1, 2)


def test_inotify_refusal_falls_back_to_polling_with_a_log_line(
    parts, tmp_path, monkeypatch, caplog
):
    import errno

    import indexer.watch as w

    class Refusing(w.Observer):  # type: ignore[misc,valid-type]
        def schedule(self, *a: Any, **k: Any) -> Any:
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(w, "Observer", Refusing)
    lib = tmp_path / "lib"
    lib.mkdir()
    watcher = Watcher(
        parts.pipeline(),
        parts.catalog,
        JobQueue(parts.catalog.engine),
        [str(lib)],
        ScanRules(parts.settings.include),
        WatchOptions(quiet_seconds=0.1, poll_interval=0.2),
    )
    with caplog.at_level("INFO", logger="everlook.watch"):
        watcher.start()
    assert watcher.mode == "polling"
    assert "falling back to polling" in caplog.text
    thread = threading.Thread(target=watcher.run_forever, daemon=True)
    thread.start()
    try:
        path = save(picture(11), lib / "polled.jpg")
        wait_for(lambda: parts.catalog.item_id_for_path(str(path)), what="polled file")
    finally:
        watcher.stop()
        thread.join(10)


def _watch_proc(env: dict[str, str], lib: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "everlook", "watch", str(lib), "--quiet", "0.2", *extra],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_says_what_was_left(env, tmp_path):
    lib = tmp_path / "lib"
    make_library(lib, 2)
    proc = _watch_proc(env, lib)
    wait_for(lambda: sql_count(env, "select count(*) from items") == 2, timeout=60)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert "finishing the current batch" in out and "jobs left queued" in out


@pytest.mark.slow
def test_sigkill_mid_batch_then_restart_indexes_every_file_exactly_once(env, tmp_path):
    env = {**env, "EVERLOOK_BATCH_SIZE": "2"}
    lib = tmp_path / "lib"
    lib.mkdir()
    proc = _watch_proc(env, lib)
    wait_for(lambda: sql_count(env, "select count(*) from alembic_version") == 1, timeout=60)
    time.sleep(3)  # reconciled, observer running
    files = make_library(lib / "drop", 40)
    wait_for(
        lambda: sql_count(env, "select count(*) from items") >= 6,
        timeout=60,
        what="some files indexed",
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert sql_count(env, "select count(*) from items") < 40, "killed too late to test anything"

    proc = _watch_proc(env, lib)
    wait_for(
        lambda: sql_count(env, "select count(*) from items") == 40,
        timeout=120,
        what="all files after restart",
    )
    wait_for(lambda: sql_count(env, "select count(*) from jobs") == 0, timeout=30)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=15)
    paths = sorted(os.fsdecode(bytes(r[0])) for r in sql(env, "select path from paths"))
    dup = sql_count(env, "select count(*) - count(distinct sha256) from items")
    emb = sql_count(env, "select count(*) from embeddings")
    assert paths == sorted(map(str, files)) and dup == 0 and emb == 40


def test_a_complete_file_whose_writer_never_closes_it_is_taken_after_a_longer_wait(watching):
    from indexer.watch import UNCLOSED_FACTOR

    path = watching.lib / "held-open.jpg"
    with open(path, "wb") as fh:
        fh.write(jpeg_bytes(picture(12)))
        fh.flush()
        start = time.monotonic()
        item = wait_for(
            lambda: watching.item(path),
            timeout=QUIET * UNCLOSED_FACTOR * 4,
            what="the never-closed file",
        )
        waited = time.monotonic() - start
    assert item and waited >= QUIET * UNCLOSED_FACTOR * 0.9


def test_the_index_is_saved_after_a_lull_or_at_stop_never_right_after_a_batch(parts, tmp_path):
    """Saving rewrites the whole index file (2 GB at a million vectors): a file landing
    must never wait for it. Until the save, nothing is lost: a fresh open of the index
    (another process's) holds every vector the catalog committed."""
    from everlook.settings import Settings
    from everlook.wiring import Parts

    lib = tmp_path / "lib"
    lib.mkdir()
    rules = ScanRules(parts.settings.include, [], False)
    pipeline = parts.pipeline(rules, inline_stages=False)
    opts = WatchOptions(quiet_seconds=0.0, save_idle_seconds=0.5, save_max_seconds=3600)
    queue = JobQueue(parts.catalog.engine)
    watcher = Watcher(pipeline, parts.catalog, queue, [str(lib)], rules, opts)
    saves: list[float] = []
    real_save = pipeline.save_indexes
    pipeline.save_indexes = lambda: saves.append(time.monotonic()) or real_save()  # type: ignore[method-assign]
    try:  # the jobs are queued here, as the observer would (not started: no stray events)
        for i in range(3):
            path = save(picture(40 + i), lib / f"p{i}.jpg")
            st = path.stat()
            queue.put(str(path), "index", time.time(), st.st_size, st.st_mtime_ns, closed=True)
            assert watcher.step()  # one batch
            assert not watcher.step()  # idle right after it: no lull yet
        assert saves == []
        assert Parts(Settings()).index.count() == 3  # nothing lost: rebuilt from the catalog
        time.sleep(0.6)
        assert not watcher.step()
        assert len(saves) == 1, "saved once the lull came"
        path = save(picture(50), lib / "late.jpg")
        st = path.stat()
        queue.put(str(path), "index", time.time(), st.st_size, st.st_mtime_ns, closed=True)
        assert watcher.step()
    finally:
        watcher.close()
    assert len(saves) == 2, "saved at stop"
    reopened = Parts(Settings()).index
    assert reopened.count() == 4 and not reopened.report.changed
