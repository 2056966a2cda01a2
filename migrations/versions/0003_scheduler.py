"""Cluster scheduler: model needs per prompt, operator states and counters per worker.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "model_needs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
        sa.Column("files", JSON, nullable=False),
    )
    with op.batch_alter_table("prompts") as batch:
        batch.add_column(sa.Column("needs_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("lost_on", JSON, nullable=True))
        batch.add_column(sa.Column("passed_at", TIMESTAMP, nullable=True))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("tags", JSON, nullable=False, server_default="[]"))
        batch.add_column(sa.Column("draining", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("locked", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("lock_reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("failures_in_row", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("prompts_done", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("prompts_failed", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        for column in ("prompts_failed", "prompts_done", "failures_in_row", "lock_reason", "locked", "draining",
                       "tags"):
            batch.drop_column(column)
    with op.batch_alter_table("prompts") as batch:
        for column in ("passed_at", "lost_on", "needs_id"):
            batch.drop_column(column)
    op.drop_table("model_needs")
