"""enrichment: detections, panoptic segments, scored labels

Each row carries the stage and model id that made it (provenance), so a stage's
results can be replaced exactly when its model changes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 12:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _common() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "item_id", sa.Integer(), sa.ForeignKey("items.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("stage", sa.String(length=32), nullable=False),
        sa.Column("model_id", sa.String(length=200), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "detections",
        *_common(),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("x0", sa.Float(), nullable=False),
        sa.Column("y0", sa.Float(), nullable=False),
        sa.Column("x1", sa.Float(), nullable=False),
        sa.Column("y1", sa.Float(), nullable=False),
    )
    op.create_index("ix_detections_item_id", "detections", ["item_id"])
    op.create_index("ix_detections_label_item", "detections", ["label", "item_id"])
    op.create_table(
        "segments",
        *_common(),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("is_thing", sa.Boolean(), nullable=False),
        sa.Column("area", sa.Float(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
    )
    op.create_index("ix_segments_item_id", "segments", ["item_id"])
    op.create_index("ix_segments_label_item", "segments", ["label", "item_id"])
    op.create_table(
        "labels",
        *_common(),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
    )
    op.create_index("ix_labels_item_id", "labels", ["item_id"])
    op.create_index("ix_labels_kind_label", "labels", ["kind", "label", "score"])


def downgrade() -> None:
    for table in ("labels", "segments", "detections"):
        op.drop_table(table)
