"""Cell retries and per-batch worker blocklists.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prompts") as batch:
        batch.add_column(sa.Column("retries", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "batch_blocks",
        sa.Column("batch_id", sa.String(36), primary_key=True),
        sa.Column("worker", sa.String(255), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("blocked", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_table("batch_blocks")
    with op.batch_alter_table("prompts") as batch:
        batch.drop_column("retries")
