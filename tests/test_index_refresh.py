"""A reader's index following what a writer process does to the catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import make_library

pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL


@pytest.mark.sqlite_only(reason="SQLite gives a deleted newest row's id again")
def test_a_reader_follows_adds_removes_and_a_reused_item_id(env, tmp_path: Path) -> None:
    from everlook.settings import Settings
    from everlook.wiring import Parts

    writer, reader = Parts(Settings()), Parts(Settings())
    lib = tmp_path / "lib"
    files = make_library(lib, 4)
    writer.pipeline().run([str(lib)])
    reader.index.open()
    assert reader.index.count() == 4
    assert not reader.index.refresh().changed  # nothing moved: one aggregate query

    newest = max(writer.catalog.embedding_ids("clip", writer.embedder.model_id))
    newest_path = writer.catalog.paths_for([newest])[newest][0]
    Path(newest_path).unlink()
    writer.pipeline().run([str(lib)])  # the newest item leaves the catalog
    fresh = make_library(lib / "new", 1, start=900)[0]
    writer.pipeline().run([str(lib)])
    reused = writer.catalog.item_id_for_path(str(fresh))
    assert reused == newest  # SQLite gave the new picture the deleted one's id

    report = reader.index.refresh()
    assert report.changed and reader.index.count() == 4
    stored = writer.catalog.embedding(reused, "clip")
    assert stored is not None
    vec = np.frombuffer(stored[1], dtype=np.float32)
    top_id, top_score = reader.index.search(vec[None, :], 1)[0][0]
    assert top_id == reused and top_score > 0.999  # the new vector, not the deleted one's
    assert len(files) == 4


def no_whole_catalog(monkeypatch: pytest.MonkeyPatch, catalog: Any) -> None:
    def whole_catalog(*a: object, **k: object) -> None:
        raise AssertionError("a refresh read the whole catalog")

    for name in ("embedding_ids", "iter_embeddings", "embedding_count"):
        monkeypatch.setattr(catalog, name, whole_catalog)


def test_a_reader_takes_in_what_a_writer_indexed_but_has_not_saved_reading_only_that(
    env, tmp_path: Path, monkeypatch
) -> None:
    from everlook.settings import Settings
    from everlook.wiring import Parts

    writer, reader = Parts(Settings()), Parts(Settings())
    lib = tmp_path / "lib"
    make_library(lib, 4)
    writer.pipeline().run([str(lib)])  # saved at the end of the run
    reader.index.open()
    reader.index.read_only = True
    saved = reader.index.path.stat().st_mtime_ns
    fresh = make_library(lib / "new", 2, start=500)
    writer.pipeline().run_files([str(p) for p in fresh])  # the watcher's way: no save
    assert reader.index.path.stat().st_mtime_ns == saved
    new_ids = {writer.catalog.item_id_for_path(str(p)) for p in fresh}
    real_iter = reader.catalog.iter_embeddings
    no_whole_catalog(monkeypatch, reader.catalog)

    def only_the_new(*a: Any, only: Any = None, **k: Any) -> Any:
        assert only is not None and set(only) <= new_ids, f"read {only}"
        return real_iter(*a, only=only, **k)

    monkeypatch.setattr(reader.catalog, "iter_embeddings", only_the_new)
    report = reader.index.refresh()
    assert (report.added, report.removed, report.checked_all) == (2, 0, False)
    assert reader.index.count() == 6
    assert not reader.index.refresh().changed  # and nothing more until the catalog moves


def test_a_reader_switches_to_the_file_the_owner_saved(env, tmp_path: Path) -> None:
    from everlook.settings import Settings
    from everlook.wiring import Parts

    writer, reader = Parts(Settings()), Parts(Settings())
    lib = tmp_path / "lib"
    make_library(lib, 3)
    writer.pipeline().run([str(lib)])
    reader.index.open()
    reader.index.read_only = True
    make_library(lib / "more", 2, start=300)
    writer.pipeline().run([str(lib)])  # indexes and saves the file
    report = reader.index.refresh()
    assert report.switched and reader.index.count() == 5
    assert reader.index.describe()["serving"]["unsaved"] == 0  # all of it from the file
    ids = sorted(writer.catalog.embedding_ids("clip", writer.embedder.model_id))
    assert sorted(reader.index.store.ids().tolist()) == ids
