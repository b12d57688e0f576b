"""date filter without probing items: paths say whether their item is dated

A date filter takes an item's capture time when it has one, else the time of its files.
The file-time half walked the (mtime_ns, item_id) range of paths and probed each hit's
item for a missing capture time: ~10k primary-key probes for a window matching 1 % of a
million items, most of the filter's cost. An item's capture time comes from its content
and never changes, so the path rows can carry it: `undated` (the item has no capture
time), written with the path, and a partial index over the undated paths' (mtime_ns,
item_id) makes the second half one index range too. It replaces ix_paths_mtime_item,
which only this filter read.

Measured on a million synthetic items, 40 % without a capture time (the 1 % window of
bench/query_latency.py, Catalog.filter_ids, warm, this machine): 48.5 ms -> 9.9 ms,
with the look-up of each id in items that the filter query also made dropped
(catalog.filters.matching_ids).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 14:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A literal default ('0': false to both databases), not an expression: SQLite then
    # adds the column in place instead of copying the whole table.
    with op.batch_alter_table("paths") as batch:
        batch.add_column(sa.Column("undated", sa.Boolean(), nullable=False,
                                   server_default="0"))  # fmt: skip
    op.execute(
        "UPDATE paths SET undated = EXISTS (SELECT 1 FROM items WHERE items.id = paths.item_id"
        " AND items.taken_at IS NULL)"
    )
    op.drop_index("ix_paths_mtime_item", table_name="paths")
    where = (
        sa.text("undated = true")
        if op.get_bind().dialect.name != "sqlite"
        else sa.text("undated = 1")
    )
    op.create_index("ix_paths_undated_mtime", "paths", ["mtime_ns", "item_id"],
                    sqlite_where=where, postgresql_where=where)  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_paths_undated_mtime", table_name="paths")
    op.create_index("ix_paths_mtime_item", "paths", ["mtime_ns", "item_id"])
    with op.batch_alter_table("paths") as batch:
        batch.drop_column("undated")
