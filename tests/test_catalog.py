"""The catalog database: migrations on start, SQLite pragmas, schema rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from catalog import Catalog, FilePath, Item, make_engine
from everlook.settings import Settings
from everlook.wiring import open_catalog

pytestmark = pytest.mark.both_catalogs  # SQLite and PostgreSQL


@pytest.fixture
def catalog(env) -> Catalog:
    return open_catalog(Settings())


def test_migrations_create_every_table_on_first_open(catalog: Catalog):
    import migrations

    tables = set(inspect(catalog.engine).get_table_names())
    assert {
        "items",
        "paths",
        "embeddings",
        "stage_status",
        "file_failures",
        "detections",
        "segments",
        "labels",
        "alembic_version",
    } <= tables
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(migrations.alembic_config(catalog.engine)).get_current_head()
    assert migrations.current(catalog.engine) == head == "0010"


def test_paths_stored_as_text_by_an_older_catalog_still_match_after_upgrade(tmp_path):
    import migrations
    from catalog import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrations.upgrade(engine, "0002")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO items (id, sha256, kind, size_bytes, created_at) "
                "VALUES (1, 'ab', 'image', 3, '2026-01-01')"
            )
        )
        for n, p in enumerate(("/lib/Photos/a.jpg", "/lib/photos/b.jpg"), 1):
            conn.execute(text(
                "INSERT INTO paths (id, item_id, path, size, mtime_ns, updated_at) "
                f"VALUES ({n}, 1, '{p}', 3, 1, '2026-01-01')"
            ))  # fmt: skip
    migrations.upgrade(engine)
    cat = Catalog(engine)
    assert list(cat.known_paths(["/lib/Photos"])) == ["/lib/Photos/a.jpg"]
    assert cat.item_id_for_path("/lib/photos/b.jpg") == 1


@pytest.mark.sqlite_only(reason="SQLite's journal mode and pragmas")
def test_sqlite_runs_in_wal_mode_with_foreign_keys(catalog: Catalog):
    with catalog.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


@pytest.mark.sqlite_only(reason="sets a SQLite URL of its own")
def test_database_url_setting_is_used(env, tmp_path: Path, monkeypatch):
    db = tmp_path / "elsewhere" / "cat.sqlite"
    monkeypatch.setenv("EVERLOOK_DATABASE_URL", f"sqlite:///{db}")
    open_catalog(Settings())
    assert db.exists()


def test_content_hash_is_unique(catalog: Catalog):
    with pytest.raises(IntegrityError), catalog.Session.begin() as s:
        s.add_all(
            [
                Item(sha256="a" * 64, kind="image", size_bytes=1),
                Item(sha256="a" * 64, kind="image", size_bytes=1),
            ]
        )


def test_a_path_belongs_to_one_item_and_dies_with_it(catalog: Catalog):
    with catalog.Session.begin() as s:
        item = Item(sha256="b" * 64, kind="image", size_bytes=1)
        s.add(item)
        s.flush()
        s.add(FilePath(item_id=item.id, path="/x.jpg", size=1, mtime_ns=1))
    with pytest.raises(IntegrityError), catalog.Session.begin() as s:
        s.add(FilePath(item_id=item.id, path="/x.jpg", size=1, mtime_ns=1))
    with catalog.Session.begin() as s:  # ON DELETE CASCADE, enforced by foreign_keys=ON
        s.execute(text("DELETE FROM items WHERE id = :i"), {"i": item.id})
    assert catalog.item_id_for_path("/x.jpg") is None


def test_upgrade_is_idempotent(tmp_path: Path):
    import migrations

    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrations.upgrade(engine)
    migrations.upgrade(engine)
    assert migrations.current(engine) == "0010"


def test_upgrading_to_0010_marks_the_paths_of_items_without_a_capture_time(
    env: dict[str, str],
):
    """A catalog written before 0010 is dated by the same rule after it: capture time,
    else any of the item's files' times (now read from the paths' own flag)."""
    from datetime import datetime

    import migrations
    from catalog.filters import Filters

    settings = Settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.catalog_url)
    migrations.upgrade(engine, "0009")
    day = datetime(2021, 6, 1, 12)
    ns = int(day.timestamp() * 1e9)
    with engine.begin() as c:
        for i, taken in ((1, day), (2, None), (3, None)):
            c.execute(text("INSERT INTO items (id, sha256, kind, size_bytes, taken_at, "
                           "created_at) VALUES (:i, :h, 'image', 1, :t, :now)"),
                      {"i": i, "h": f"{i:064d}", "t": taken, "now": day})  # fmt: skip
            mtime = ns if i != 3 else ns - 400 * 86400 * 10**9  # item 3: a year before
            c.execute(text("INSERT INTO paths (item_id, path, size, mtime_ns, updated_at) "
                           "VALUES (:i, :p, 1, :m, :now)"),
                      {"i": i, "p": f"/p/{i}.jpg", "m": mtime, "now": day})  # fmt: skip
    migrations.upgrade(engine)
    with engine.connect() as c:
        flags = dict(c.execute(text("SELECT item_id, undated FROM paths ORDER BY item_id")).all())
    assert {k: bool(v) for k, v in flags.items()} == {1: False, 2: True, 3: True}
    cat = Catalog(engine)
    window = Filters(after=datetime(2021, 5, 1), before=datetime(2021, 7, 1))
    assert cat.filter_ids(window) == [1, 2]
    engine.dispose()
