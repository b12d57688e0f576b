"""Alembic migrations for the catalog, applied automatically when Everlook opens it."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Engine

HERE = Path(__file__).resolve().parent
_REVISION = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)


def alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    # Built in code rather than from an alembic.ini so the installed package works from
    # any directory, and the URL always comes from Everlook's settings.
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    # Alembic's config is a ConfigParser: a "%" in the URL (a folder named "50%", an
    # escaped character in a password) must be doubled or it is read as interpolation.
    url = engine.url.render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["engine"] = engine
    return cfg


# pg_advisory_lock's key for "migrating this database": any constant; this one spells
# "EVLKMIGR" in ASCII, so it is recognisable in pg_locks.
PG_LOCK_KEY = 0x45564C4B4D494752


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to revision, one process at a time (see migration_lock)."""
    from alembic import command

    if revision == "head" and stored_revision(engine) == head():
        return  # nothing to do: no lock (a catalog in a read-only folder opens as before)
    with migration_lock(engine):
        command.upgrade(alembic_config(engine), revision)


def ensure_head(engine: Engine) -> bool:
    """Bring the catalog to the newest revision; True when this call ran migrations.

    Every command opens the catalog, and importing and running Alembic costs ~0.3 s of
    a command's start-up (more than a whole warm query): when the stored revision is
    already the head, one SELECT answers and Alembic is never imported. Processes that
    find it behind queue on the migration lock; the first migrates, the others find the
    head when their turn comes."""
    if stored_revision(engine) == head():
        return False
    from alembic import command

    with migration_lock(engine):
        if stored_revision(engine) == head():
            return False  # another process migrated while this one waited
        command.upgrade(alembic_config(engine), "head")
    return True


@contextlib.contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Held while migrating, across processes and machines: on PostgreSQL a session
    advisory lock (released by the server if the process dies), on a SQLite file an
    OS lock on a file beside it (released by the OS likewise). Without it, processes
    that open a new catalog together each create the tables, and all but one fail."""
    name = engine.dialect.name
    if name == "postgresql":
        from sqlalchemy import text

        # Autocommit: the lock is the session's, and no transaction stays open while it
        # waits (one would block a later CREATE INDEX CONCURRENTLY of another process).
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
        return
    from catalog.db import sqlite_file  # here: the cold query path imports this module

    path = sqlite_file(engine) if name == "sqlite" else None
    if path is None:
        yield  # in memory: nothing another process could open at the same time
        return
    from filelock import FileLock

    # Writable by whoever may write the catalog itself (the umask still applies).
    with FileLock(f"{path}.migrate.lock", mode=0o666):
        yield


def stored_revision(engine: Engine) -> str | None:
    """The catalog's revision as Alembic records it (None: no schema yet)."""
    from sqlalchemy import exc, text

    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
    except exc.DBAPIError:  # no alembic_version table: a new catalog
        return None
    return str(rows[0][0]) if len(rows) == 1 else None  # several heads: let Alembic say


@functools.cache
def head() -> str:
    """The newest revision, read from the version files' `revision`/`down_revision`
    lines (the one no other file revises); a test checks it against Alembic's own."""
    revised: set[str] = set()
    revisions: set[str] = set()
    for path in (HERE / "versions").glob("*.py"):
        for key, value in _REVISION.findall(path.read_text(encoding="utf-8")):
            names = re.findall(r"['\"]([^'\"]+)['\"]", value)
            (revisions if key == "revision" else revised).update(names)
    heads = revisions - revised
    if len(heads) != 1:
        raise RuntimeError(f"migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
