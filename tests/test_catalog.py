"""The catalog database: migrations on start, SQLite pragmas, schema rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from catalog import Catalog, FilePath, Item, make_engine
from everlook.settings import Settings
from everlook.wiring import open_catalog


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
        "alembic_version",
    } <= tables
    assert migrations.current(catalog.engine) == "0002"


def test_sqlite_runs_in_wal_mode_with_foreign_keys(catalog: Catalog):
    with catalog.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


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
    assert migrations.current(engine) == "0002"
