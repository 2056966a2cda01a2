"""Partial indexes for the prompt columns that are NULL at submission.

A submission wrote all eleven of the prompts table's indexes, one page each per commit; six of
them index a column that a new prompt leaves NULL (batch_id, worker, finished_at, coalesce_key).
They now hold only the rows where that column is set, so accepting a prompt writes five B-trees.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

import sqlalchemy as sa

from migrations import online

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# name -> (columns, the column that must be set)
_PARTIAL = {
    "ix_prompts_batch": (["batch_id", "cell_index"], "batch_id"),
    "ix_prompts_batch_state": (["batch_id", "state"], "batch_id"),
    "ix_prompts_history": (["finished_at", "prompt_id"], "finished_at"),
    "ix_prompts_worker": (["worker", "state"], "worker"),
    "ix_prompts_coalesce": (["coalesce_key", "state", "queue_rank", "number", "prompt_id"], "coalesce_key"),
    "ix_prompts_team_history": (["team", "finished_at", "prompt_id"], "finished_at"),
}


def upgrade() -> None:
    for name, (columns, column) in _PARTIAL.items():
        condition = sa.text(f"{column} IS NOT NULL")
        online.drop_index(name, "prompts")
        online.create_index(name, "prompts", columns, postgresql_where=condition, sqlite_where=condition)


def downgrade() -> None:
    for name, (columns, _column) in _PARTIAL.items():
        online.drop_index(name, "prompts")
        online.create_index(name, "prompts", columns)
