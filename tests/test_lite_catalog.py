"""The stdlib-sqlite3 reader a cold query uses gives the same answers as the catalog."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from catalog import Catalog, make_engine
from catalog.lite import LiteCatalog
from search.present import Hit, result_rows


def test_the_lite_reader_answers_as_the_catalog_does_on_an_enriched_library(demo_lib):
    db = Path(demo_lib.settings["EVERLOOK_HOME"]) / "catalog.db"
    full = Catalog(make_engine(f"sqlite:///{db}"))
    with LiteCatalog(db) as lite:
        active = full.spaces.active("clip")
        assert active is not None
        assert lite.active_model("clip") == (active.model_id, active.args)
        assert lite.embeddings_table_mark() == full.embeddings_table_mark()
        ids = sorted(full.embedding_ids("clip", active.model_id))
        assert len(ids) > 20
        enriched = full.stages.enrichment(ids)
        assert any(d["detections"] for d in enriched.values())  # the test means something
        assert any("style" in d["labels"] for d in enriched.values())
        assert lite.enrichment(ids) == enriched
        assert lite.summaries(ids) == full.browse.summaries(ids)
        assert lite.paths_for(ids) == full.paths_for(ids)
        styles = {x["label"] for d in enriched.values() for x in d["labels"].get("style", [])}
        for name in sorted(styles)[:3]:
            text = f"an old {name.upper()} picture"
            got = lite.items_labelled_in(text, "style")
            assert got and got == full.items_labelled_in(text, "style")
        assert lite.items_labelled_in("nothing named", "style") == {}
        hits = [Hit(i, 1.0 - n / 100, p) for n, (i, p) in enumerate(full.paths_for(ids).items())]
        assert result_rows(lite, hits, 0.5) == result_rows(full, hits, 0.5)


def test_the_lite_reader_returns_paths_that_are_not_utf8_byte_for_byte(tmp_path: Path):
    import migrations

    db = tmp_path / "catalog.db"
    engine = make_engine(f"sqlite:///{db}")
    migrations.ensure_head(engine)
    cat = Catalog(engine)
    name = os.fsdecode(b"/lib/caf\xe9-\xff.jpg")  # Latin-1 bytes: not UTF-8
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO items (id, sha256, kind, size_bytes, created_at) "
            "VALUES (1, 'ab', 'image', 3, '2026-01-01 00:00:00')"
        )
        conn.exec_driver_sql(
            "INSERT INTO paths (item_id, path, size, mtime_ns, updated_at) "
            "VALUES (1, ?, 3, 1, '2026-01-01 00:00:00')",
            (os.fsencode(name),),
        )
    item = 1
    with LiteCatalog(db) as lite:
        assert lite.paths_for([item]) == cat.paths_for([item]) == {item: [name]}
        assert os.fsencode(lite.paths_for([item])[item][0]) == b"/lib/caf\xe9-\xff.jpg"
        assert lite.revision() == migrations.head()


def test_the_lite_reader_cannot_write_to_the_catalog(tmp_path: Path):
    import migrations

    db = tmp_path / "catalog.db"
    migrations.ensure_head(make_engine(f"sqlite:///{db}"))
    with LiteCatalog(db) as lite, pytest.raises(sqlite3.OperationalError):
        lite.conn.execute("DELETE FROM items")
    with pytest.raises(sqlite3.OperationalError):  # and never creates a missing file
        LiteCatalog(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()


def test_the_label_vocabulary_is_read_by_index_seeks_not_by_reading_every_label(tmp_path: Path):
    import random

    import migrations
    from catalog.words import VOCABULARY

    db = tmp_path / "catalog.db"
    migrations.ensure_head(make_engine(f"sqlite:///{db}"))
    rng = random.Random(0)
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO items (id, sha256, kind, size_bytes, created_at) "
            "VALUES (?, ?, 'image', 1, '2026-01-01 00:00:00')",
            [(i, f"{i:064x}") for i in range(1, 401)],
        )
        conn.executemany(
            "INSERT INTO labels (item_id, stage, model_id, kind, label, score, rank) "
            "VALUES (?, 'labels', 'm', ?, ?, ?, ?)",
            [(i, kind, f"{kind} label {rng.randrange(37)}", rng.random(), r)
             for i in range(1, 401) for kind in ("imagenet", "style") for r in range(5)],
        )  # fmt: skip
        plan = " ".join(
            str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + VOCABULARY, {"kind": "x"})
        )
        for kind in ("imagenet", "style", "none"):
            seeks = [r[0] for r in conn.execute(VOCABULARY, {"kind": kind})]
            distinct = "SELECT DISTINCT label FROM labels WHERE kind = ? ORDER BY label"
            every = [r[0] for r in conn.execute(distinct, (kind,))]
            assert seeks == every
    assert "SCAN labels" not in plan and "USING COVERING INDEX ix_labels_kind_label" in plan
    with LiteCatalog(db) as lite:
        full = Catalog(make_engine(f"sqlite:///{db}"))
        text = "a photo of imagenet label 3 and style label 12"
        assert lite.items_labelled_in(text) == full.items_labelled_in(text) != {}


def test_a_catalog_in_a_folder_named_with_uri_characters_opens_read_only(tmp_path: Path):
    import migrations

    folder = tmp_path / "a#b c"
    folder.mkdir()
    migrations.ensure_head(make_engine(f"sqlite:///{folder / 'catalog.db'}"))
    before = sorted(p.name for p in tmp_path.iterdir())
    with LiteCatalog(folder / "catalog.db") as lite:
        assert lite.revision() == migrations.head()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing made elsewhere
