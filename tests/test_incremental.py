"""Re-indexing only does the work that changed (unchanged / changed / moved / deleted / dup)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import make_library, picture, save

pytestmark = [pytest.mark.both_catalogs, pytest.mark.both_vector_stores]


class CountingEmbedder:
    """Wraps the real embedder and counts the images it embeds."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.embedded = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def embed_preprocessed(self, batch: Any) -> np.ndarray:
        self.embedded += len(batch)
        return self.inner.embed_preprocessed(batch)


def index(parts: Any, root: Path) -> tuple[Any, int]:
    counting = CountingEmbedder(parts.embedder)
    pipeline = parts.pipeline()
    pipeline.embedder = counting
    report = pipeline.run([str(root)])
    return report, counting.embedded


def consistent(parts: Any) -> None:
    """Catalog and vector index hold exactly the same item ids."""
    ids = sorted(parts.catalog.embedding_ids("clip", parts.embedder.model_id))
    assert sorted(parts.index.store.ids().tolist()) == ids


def test_unchanged_files_are_not_read_again(parts, tmp_path: Path, monkeypatch):
    lib = tmp_path / "lib"
    make_library(lib, 6)
    report, n = index(parts, lib)
    assert (report.new, n) == (6, 6)
    import indexer.pipeline as pl

    def no_reads(*a: Any, **k: Any) -> None:
        raise AssertionError("an unchanged file was read")

    monkeypatch.setattr(pl, "read_file", no_reads)
    report, n = index(parts, lib)
    assert (report.unchanged, report.new, n, report.failed) == (6, 0, 0, [])


def test_changed_content_is_re_embedded(parts, tmp_path: Path):
    lib = tmp_path / "lib"
    files = make_library(lib, 4)
    index(parts, lib)
    old_id = parts.catalog.item_id_for_path(str(files[0]))
    save(picture(1000), files[0], "JPEG")
    os.utime(files[0], ns=(1, 2_000_000_000_000_000_000))
    report, n = index(parts, lib)
    assert (report.changed, report.new, n) == (1, 0, 1)
    new_id = parts.catalog.item_id_for_path(str(files[0]))
    assert new_id != old_id
    assert not parts.catalog.item_exists(old_id), "the old content has no path left"
    assert old_id not in parts.index.store.ids().tolist()
    consistent(parts)


def test_touched_but_identical_file_is_not_re_embedded(parts, tmp_path: Path):
    lib = tmp_path / "lib"
    files = make_library(lib, 3)
    index(parts, lib)
    os.utime(files[1], ns=(1, 2_000_000_000_000_000_000))
    report, n = index(parts, lib)
    assert n == 0 and report.changed == 1  # re-read and re-hashed, same content
    consistent(parts)


def test_moved_file_keeps_its_embedding_and_is_not_re_embedded(parts, tmp_path: Path):
    lib = tmp_path / "lib"
    files = make_library(lib, 4)
    index(parts, lib)
    item = parts.catalog.item_id_for_path(str(files[0]))
    vector = parts.catalog.embedding(item, "clip")
    dest = lib / "elsewhere" / "renamed.jpg"
    dest.parent.mkdir()
    shutil.move(files[0], dest)
    report, n = index(parts, lib)
    assert (report.moved, report.removed, report.new, n) == (1, 1, 0, 0)
    assert parts.catalog.item_id_for_path(str(dest)) == item
    assert parts.catalog.item_id_for_path(str(files[0])) is None
    assert parts.catalog.embedding(item, "clip") == vector
    consistent(parts)


def test_deleted_file_is_removed_from_catalog_and_index(parts, tmp_path: Path):
    lib = tmp_path / "lib"
    files = make_library(lib, 4)
    index(parts, lib)
    gone = parts.catalog.item_id_for_path(str(files[2]))
    files[2].unlink()
    report, n = index(parts, lib)
    assert (report.removed, n) == (1, 0)
    assert not parts.catalog.item_exists(gone)
    assert gone not in parts.index.store.ids().tolist()
    assert parts.catalog.stats()["items"]["total"] == 3
    consistent(parts)


def test_identical_files_are_stored_once_with_all_their_paths(parts, tmp_path: Path):
    lib = tmp_path / "lib"
    files = make_library(lib, 2)
    copy1, copy2 = lib / "copy1.jpg", lib / "x" / "copy2.jpg"
    copy2.parent.mkdir()
    shutil.copy(files[0], copy1)
    shutil.copy(files[0], copy2)
    report, n = index(parts, lib)
    assert n == 2, "each distinct content is embedded once"
    assert report.new == 2 and report.duplicates == 2
    item = parts.catalog.item_id_for_path(str(files[0]))
    assert parts.catalog.paths_for([item])[item] == sorted(map(str, [files[0], copy1, copy2]))
    hits = parts.engine().by_item(parts.catalog.item_id_for_path(str(files[1])), k=5)
    assert [h.item_id for h in hits] == [item]
    consistent(parts)


def test_deleting_one_copy_keeps_the_item_for_the_other(parts, tmp_path: Path):
    lib = tmp_path / "lib"
    files = make_library(lib, 2)
    shutil.copy(files[0], lib / "copy.jpg")
    index(parts, lib)
    item = parts.catalog.item_id_for_path(str(files[0]))
    files[0].unlink()
    report, _ = index(parts, lib)
    assert report.removed == 1
    assert parts.catalog.item_exists(item)
    assert parts.catalog.paths_for([item])[item] == [str(lib / "copy.jpg")]
    consistent(parts)


def test_content_deleted_then_added_back_is_indexed_again_by_the_same_pipeline(parts, tmp_path):
    """A long-lived pipeline (the watcher's) must not remember content across runs."""
    lib = tmp_path / "lib"
    files = make_library(lib, 2)
    pipeline = parts.pipeline()
    pipeline.run([str(lib)])
    data = files[0].read_bytes()
    files[0].unlink()
    assert pipeline.run_files([str(files[0])]).removed == 1
    files[0].write_bytes(data)
    report = pipeline.run_files([str(files[0])])
    assert (report.new, report.failed) == (1, [])
    assert parts.catalog.item_id_for_path(str(files[0])) is not None
    consistent(parts)


def test_a_batch_of_files_never_reads_the_whole_catalog(parts, tmp_path: Path, monkeypatch):
    """The watcher's batches (run_files) cost O(batch): no load of every embedding id,
    no anti-join over every item; a changed file's old content is still pruned, and a
    copy of known content is attached without embedding it again."""
    lib = tmp_path / "lib"
    photos = make_library(lib, 6)
    report, _ = index(parts, lib)
    old_item = parts.catalog.item_id_for_path(str(photos[0]))
    shutil.copyfile(photos[1], lib / "copy-of-1.jpg")  # known content, new path
    save(picture(500), photos[0], quality=90)  # new content under a known path
    save(picture(501), lib / "new.jpg", quality=90)

    def whole_catalog(*a: Any, **k: Any) -> None:
        raise AssertionError("a batch read the whole catalog")

    cat = parts.catalog
    monkeypatch.setattr(cat, "embedding_ids", whole_catalog)
    monkeypatch.setattr(cat, "item_ids_of_kind", whole_catalog)
    sweeps: list[bool] = []
    prune = cat.prune_orphans
    monkeypatch.setattr(cat, "prune_orphans", lambda everywhere=False: sweeps.append(everywhere)
                        or prune(everywhere))  # fmt: skip
    counting = CountingEmbedder(parts.embedder)
    pipeline = parts.pipeline()
    pipeline.embedder = counting
    batch = [str(photos[0]), str(lib / "copy-of-1.jpg"), str(lib / "new.jpg")]
    report = pipeline.run_files(batch)
    pipeline.save_indexes()
    counts = (report.changed, report.new, report.duplicates, counting.embedded)
    assert counts == (1, 1, 1, 2)  # the copy is attached, not embedded
    assert sweeps == [False]
    assert not cat.item_exists(old_item)  # its only path now shows other content
    assert cat.item_id_for_path(str(lib / "copy-of-1.jpg")) == cat.item_id_for_path(
        str(photos[1]))  # fmt: skip
    monkeypatch.undo()
    consistent(parts)


def test_an_unchanged_re_index_loads_no_model_and_no_vector_index(parts, env, tmp_path: Path,
                                                                  monkeypatch):  # fmt: skip
    """What is unchanged costs a stat and a look-up: a new process (fresh parts) that
    finds nothing new never reads a file, loads the CLIP model or opens the index."""
    from everlook.settings import Settings
    from everlook.wiring import Parts

    lib = tmp_path / "lib"
    make_library(lib, 5)
    index(parts, lib)
    import indexer.pipeline as pl

    def no_reads(*a: Any, **k: Any) -> None:
        raise AssertionError("an unchanged file was read")

    monkeypatch.setattr(pl, "read_file", no_reads)
    fresh = Parts(Settings())
    saved: list[bool] = []
    pipeline = fresh.pipeline()
    monkeypatch.setattr(pipeline, "save_indexes", lambda: saved.append(True))
    report = pipeline.run([str(lib)])
    assert (report.unchanged, report.new, report.failed) == (5, 0, [])
    assert not fresh.embedder.loaded and not fresh.index.loaded
    assert saved == [], "nothing changed: the index file is not rewritten"
