"""Copy a whole catalog into another database (`everlook migrate-store`): an embedded
SQLite library moving onto a PostgreSQL server shared by many machines.

Every table of the schema, in foreign-key order, a page at a time (keyset on the primary
key: memory stays flat at any size), ids kept as they are, so the vector store's ids,
style jobs and everything that names an item stay valid. The target must be empty and,
like the source, at the schema's head; PostgreSQL's id sequences are moved past the
copied ids afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, insert, select, text, tuple_

from catalog.models import Base

PAGE = 5000


class TargetNotEmpty(Exception):
    """The target catalog already holds items: copying into it would mix libraries."""


@dataclass
class CopyReport:
    rows: dict[str, int] = field(default_factory=dict)


def copy_catalog(
    source: Engine, target: Engine, progress: Callable[[str, int], None] | None = None
) -> CopyReport:
    """Both catalogs must be at the schema's head (the caller migrates them: catalog/
    knows nothing of migrations)."""
    with target.connect() as c:
        for table in Base.metadata.sorted_tables:
            if c.execute(select(func.count()).select_from(table)).scalar():
                raise TargetNotEmpty(f"the target catalog's {table.name} table is not empty")
    report = CopyReport()
    for table in Base.metadata.sorted_tables:
        keys = list(table.primary_key.columns)
        done = 0
        last: tuple[object, ...] | None = None
        with source.connect() as src, target.begin() as dst:
            while True:
                q = select(table).order_by(*keys).limit(PAGE)
                if last is not None:  # keyset: after the last row copied
                    q = q.where(tuple_(*keys) > tuple_(*last))
                rows = [_utc(table, dict(r._mapping)) for r in src.execute(q)]
                if not rows:
                    break
                dst.execute(insert(table), rows)
                done += len(rows)
                last = tuple(rows[-1][k.name] for k in keys)
                if progress is not None:
                    progress(table.name, done)
        report.rows[table.name] = done
    if target.dialect.name == "postgresql":
        move_sequences(target)
    return report


def _utc(table: Any, row: dict[str, Any]) -> dict[str, Any]:
    """Times the catalog writes in UTC come back naive from SQLite; PostgreSQL would read
    a naive value in its session's time zone. Said to be UTC (columns declared with a
    time zone only: an item's capture time is the camera's local time, naive on purpose)."""
    for col in table.columns:
        v = row.get(col.name)
        if isinstance(v, datetime) and v.tzinfo is None and getattr(col.type, "timezone", False):
            row[col.name] = v.replace(tzinfo=UTC)
    return row


def move_sequences(engine: Engine) -> None:
    """On PostgreSQL, serial ids continue after rows inserted with their ids (copied, or
    written by a bench): an insert would otherwise start again at 1."""
    with engine.begin() as c:
        for table in Base.metadata.sorted_tables:
            for col in table.primary_key.columns:
                if not col.autoincrement or len(table.primary_key.columns) != 1:
                    continue
                seq = c.execute(text("SELECT pg_get_serial_sequence(:t, :c)"),
                                {"t": table.name, "c": col.name}).scalar()  # fmt: skip
                if seq:
                    c.execute(text(f"SELECT setval('{seq}', GREATEST((SELECT max({col.name}) "
                                   f"FROM {table.name}), 1))"))  # fmt: skip
