"""file paths stored as bytes

Paths were TEXT: a name that is not valid UTF-8 could not be stored at all, and prefix
matching used LIKE, which SQLite compares case-insensitively (``/x/Photos`` matched
``/x/photos``) and where ``_``/``%`` in names are wildcards. As bytes they round-trip
exactly and compare byte-wise on every backend.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("paths", "file_failures", "jobs")


def upgrade() -> None:
    bind = op.get_bind()
    for table in TABLES:
        if bind.dialect.name == "postgresql":
            op.execute(
                f"ALTER TABLE {table} ALTER COLUMN path TYPE bytea USING convert_to(path, 'UTF8')"
            )
            continue
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "path", existing_type=sa.Text(), type_=sa.LargeBinary(), existing_nullable=False
            )
        # SQLite keeps the old values as TEXT in a BLOB column (no type affinity), and
        # TEXT never compares equal to a BLOB parameter: convert the stored values too.
        op.execute(f"UPDATE {table} SET path = CAST(path AS BLOB)")


def downgrade() -> None:
    bind = op.get_bind()
    for table in TABLES:
        if bind.dialect.name == "postgresql":
            op.execute(
                f"ALTER TABLE {table} ALTER COLUMN path TYPE text USING convert_from(path, 'UTF8')"
            )
            continue
        op.execute(f"UPDATE {table} SET path = CAST(path AS TEXT)")
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "path", existing_type=sa.LargeBinary(), type_=sa.Text(), existing_nullable=False
            )
