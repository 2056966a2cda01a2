"""Studio batches: a batch of cells (prompts) with a sweep, priority, caps and tags.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations import online

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("team", sa.String(64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False, server_default=""),
        sa.Column("priority", sa.Integer(), nullable=False, server_default="50"),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("cancelled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("max_workers", sa.Integer(), nullable=True),
        sa.Column("tags", JSON, nullable=False, server_default="[]"),
        sa.Column("webhook", sa.Text(), nullable=True),
        sa.Column("sweep", JSON, nullable=False),
        sa.Column("cells", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False, server_default=""),
    )
    op.create_index("ix_batches_team_created", "batches", ["team", "created_at", "id"])
    op.create_index("ix_batches_created", "batches", ["created_at", "id"])
    with op.batch_alter_table("prompts") as batch:
        batch.add_column(sa.Column("batch_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("cell_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("cell_values", JSON, nullable=True))
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="50"))
        batch.add_column(sa.Column("tags", JSON, nullable=True))
        batch.add_column(sa.Column("queue_rank", sa.Integer(), nullable=False, server_default="51"))
    op.execute("UPDATE prompts SET queue_rank = 0 WHERE front")
    online.create_index("ix_prompts_batch", "prompts", ["batch_id", "cell_index"])
    online.drop_index("ix_prompts_queue", "prompts")
    online.create_index("ix_prompts_queue", "prompts", ["state", "queue_rank", "number", "prompt_id"])


def downgrade() -> None:
    online.drop_index("ix_prompts_queue", "prompts")
    online.create_index("ix_prompts_queue", "prompts", ["state", "number", "prompt_id"])
    online.drop_index("ix_prompts_batch", "prompts")
    with op.batch_alter_table("prompts") as batch:
        for column in ("queue_rank", "tags", "priority", "cell_values", "cell_index", "batch_id"):
            batch.drop_column(column)
    op.drop_index("ix_batches_created", table_name="batches")
    op.drop_index("ix_batches_team_created", table_name="batches")
    op.drop_table("batches")
