"""style jobs: style transfer as tracked background jobs

One row per job (queued / running / done / failed / cancelled), with its progress, the
worker holding it and until when (a lease renewed every step), its provenance, and the
item it became when added back to the library.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


STATE = sa.Enum(
    "queued", "running", "done", "failed", "cancelled",
    name="job_state", native_enum=False, length=16,
)  # fmt: skip


def upgrade() -> None:
    def items() -> sa.ForeignKey:
        return sa.ForeignKey("items.id", ondelete="SET NULL")

    op.create_table(
        "style_jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("state", STATE, nullable=False),
        sa.Column("item_id", sa.Integer(), items(), nullable=True),
        sa.Column("item_sha256", sa.String(length=64), nullable=False),
        sa.Column("style_kind", sa.String(length=16), nullable=False),
        sa.Column("style_item_id", sa.Integer(), items(), nullable=True),
        sa.Column("style_sha256", sa.String(length=64), nullable=True),
        sa.Column("style_artist", sa.String(length=200), nullable=True),
        sa.Column("style_file", sa.Text(), nullable=True),
        sa.Column("settings", sa.Text(), nullable=False),
        sa.Column("model_id", sa.String(length=200), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("preview_step", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("add_to_library", sa.Boolean(), nullable=False),
        sa.Column("result_file", sa.Text(), nullable=True),
        sa.Column("result_sha256", sa.String(length=64), nullable=True),
        sa.Column("owner", sa.String(length=200), nullable=True),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
    )
    op.create_index("ix_style_jobs_state_created", "style_jobs", ["state", "created_at"])
    op.create_index("ix_style_jobs_result_sha256", "style_jobs", ["result_sha256"])


def downgrade() -> None:
    op.drop_table("style_jobs")
