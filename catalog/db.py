"""Engine and session set-up. SQLite gets WAL, foreign keys and a busy timeout."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer, and a killed writer leaves a consistent file.
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL is durable against process crashes in WAL mode (only power loss may
    # drop the last transactions), and much faster than FULL.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            from pathlib import Path

            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def insert_for(s: Session, table: Any) -> Any:
    """The dialect's INSERT, which has ``on_conflict_do_nothing/do_update``: writes that
    many processes make at once are one statement, never a check then an insert."""
    name = s.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.insert(table)
    if name == "sqlite":
        from sqlalchemy.dialects import sqlite

        return sqlite.insert(table)
    raise NotImplementedError(f"no INSERT ... ON CONFLICT for {name}")


def sqlite_file(engine: Engine) -> str | None:
    """The file a SQLite engine opens: a path, or a ``file:`` URI's path; None in memory."""
    db = engine.url.database
    if not db or db == ":memory:":
        return None
    if db.startswith("file:"):  # SQLAlchemy keeps the URI's query apart from the path
        path = db[len("file:") :].partition("?")[0]
        memory = engine.url.query.get("mode") == "memory" or path in ("", ":memory:")
        return None if memory else path
    return db


@contextmanager
def try_exclusive(engine: Engine, name: str) -> Iterator[bool]:
    """Whether this process may do a once-at-a-time job named ``name`` for the catalog
    (rebuilding a shared vector index), held for the block: a PostgreSQL advisory lock
    on a connection of its own, or for a SQLite file an OS file lock beside it. Never
    waits: False means another process is doing it."""
    if engine.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big", signed=True)
        with engine.connect() as raw:
            conn = raw.execution_options(isolation_level="AUTOCOMMIT")
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        return
    db = sqlite_file(engine)
    if db is None:
        yield True  # in memory: one process has it
        return
    from filelock import FileLock, Timeout

    safe = "".join(c if c.isalnum() else "_" for c in name)
    lock = FileLock(f"{db}.{safe}.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
