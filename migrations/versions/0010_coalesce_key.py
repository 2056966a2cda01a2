"""Prompt coalescing: each prompt's coalescing key, and the index that finds a group's companions.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from migrations import online

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("prompts", sa.Column("coalesce_key", sa.String(48), nullable=True))
    online.create_index("ix_prompts_coalesce", "prompts", ["coalesce_key", "state", "queue_rank", "number", "prompt_id"])


def downgrade() -> None:
    online.drop_index("ix_prompts_coalesce", "prompts")
    op.drop_column("prompts", "coalesce_key")
