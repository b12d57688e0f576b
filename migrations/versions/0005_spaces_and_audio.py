"""spaces and audio: one embedding per (item, space, model); the active model per space;
what an audio item is (duration, sample rate, channels)

A space (clip, imagebind) may hold the embeddings of two models at once while a newly
configured model backfills: the one answering queries (the space's active model, kept in
``spaces``) and the one being built. Switching from one to the other is explicit.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 17:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs: items is never rebuilt (a rebuild with foreign keys on would
    # cascade-delete every path and embedding).
    op.add_column("items", sa.Column("duration_s", sa.Float(), nullable=True))
    op.add_column("items", sa.Column("sample_rate", sa.Integer(), nullable=True))
    op.add_column("items", sa.Column("channels", sa.Integer(), nullable=True))
    # embeddings is a leaf table (nothing refers to it): rebuilding it on SQLite to swap
    # its unique constraint is safe.
    with op.batch_alter_table("embeddings", schema=None) as batch_op:
        batch_op.drop_constraint("uq_embedding_item_space", type_="unique")
        batch_op.create_unique_constraint(
            "uq_embedding_item_space_model", ["item_id", "space", "model_id"]
        )
        batch_op.create_index("ix_embeddings_space_model_item", ["space", "model_id", "item_id"])
    op.create_table(
        "spaces",
        sa.Column("name", sa.String(length=32), primary_key=True),
        sa.Column("active_model_id", sa.String(length=200), nullable=False),
        sa.Column("active_args", sa.Text(), nullable=False),  # JSON: how to build it
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("spaces")
    with op.batch_alter_table("embeddings", schema=None) as batch_op:
        batch_op.drop_index("ix_embeddings_space_model_item")
        batch_op.drop_constraint("uq_embedding_item_space_model", type_="unique")
        batch_op.create_unique_constraint("uq_embedding_item_space", ["item_id", "space"])
    for col in ("channels", "sample_rate", "duration_s"):
        op.drop_column("items", col)
