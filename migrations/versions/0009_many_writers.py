"""many writers: 64-bit keys on PostgreSQL, job claims with an owner and a lease

Several indexing processes, on several machines, share one catalog (issue [9]). Two
things the schema must then carry:

- Row ids past 2^31. SQLite's INTEGER PRIMARY KEY is already a 64-bit rowid (and must
  stay INTEGER to be one); on PostgreSQL the id columns, the references to items.id and
  the sequences behind the serial ids become bigint.
- Who holds a job of the watcher's queue, and until when (`owner`, `lease_until`): a
  starting process used to release every claimed job, including those a live process
  on another machine was working on.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 11:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, serial: its sequence too)
KEYS = [
    ("items", "id", True), ("paths", "id", True), ("paths", "item_id", False),
    ("embeddings", "id", True), ("embeddings", "item_id", False),
    ("stage_status", "item_id", False), ("file_failures", "id", True), ("jobs", "id", True),
    ("detections", "id", True), ("detections", "item_id", False),
    ("segments", "id", True), ("segments", "item_id", False),
    ("labels", "id", True), ("labels", "item_id", False),
    ("style_jobs", "item_id", False), ("style_jobs", "style_item_id", False),
]  # fmt: skip


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("owner", sa.String(120), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.Float(), nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column, serial in KEYS:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer())
        if serial:
            op.execute(f"ALTER SEQUENCE IF EXISTS {table}_{column}_seq AS bigint")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column, serial in KEYS:
            if serial:
                op.execute(f"ALTER SEQUENCE IF EXISTS {table}_{column}_seq AS integer")
            op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger())
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("owner")
