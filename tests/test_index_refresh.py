"""A reader's index following what a writer process does to the catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.helpers import make_library


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
