"""counts from indexes: a stage's progress and the date range without reading every row

A stage's done / failed / retrying counts (``everlook stats``, the API's stats, each
``everlook index`` with stages) are read from one covering index over (stage, model,
status, attempts) instead of every row of stage_status; the library's first and last
capture dates (the browse page's date facet) are two seeks in an index over taken_at
instead of a scan of every item. Measured on a million synthetic items (bench/_synthetic
.cached_catalog, warm cache): a stage's counts 1.07 s -> 0.14 s, the dates 0.38 s -> 0.01 ms.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 00:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_stage_status_progress", "stage_status", ["stage", "model_id", "status", "attempts"]
    )
    op.create_index("ix_items_taken_at", "items", ["taken_at"])


def downgrade() -> None:
    op.drop_index("ix_items_taken_at", table_name="items")
    op.drop_index("ix_stage_status_progress", table_name="stage_status")
