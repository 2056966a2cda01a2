"""Prompts (queue and history), workers and counters.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    counters = op.create_table(
        "counters",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Integer(), nullable=False),
    )
    op.bulk_insert(counters, [{"name": "prompt_number", "value": 0}])

    op.create_table(
        "prompts",
        sa.Column("prompt_id", sa.String(255), primary_key=True),
        sa.Column("number", sa.Float(), nullable=False),
        sa.Column("front", sa.Boolean(), nullable=False),
        sa.Column("client_id", sa.String(255), nullable=True),
        sa.Column("prompt", JSON, nullable=False),
        sa.Column("extra_data", JSON, nullable=False),
        sa.Column("outputs_to_execute", JSON, nullable=False),
        sa.Column("partial_execution_targets", JSON, nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("node_errors", JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("dispatched_at", TIME, nullable=True),
        sa.Column("started_at", TIME, nullable=True),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("outputs", JSON, nullable=True),
        sa.Column("messages", JSON, nullable=True),
        sa.Column("execution_error", JSON, nullable=True),
    )
    op.create_index("ix_prompts_queue", "prompts", ["state", "number", "prompt_id"])
    op.create_index("ix_prompts_history", "prompts", ["finished_at", "prompt_id"])
    op.create_index("ix_prompts_worker", "prompts", ["worker", "state"])

    op.create_table(
        "workers",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("session", sa.String(64), nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("gpu_index", sa.Integer(), nullable=True),
        sa.Column("device_name", sa.String(255), nullable=False),
        sa.Column("device_type", sa.String(32), nullable=False),
        sa.Column("vram_total", sa.BigInteger(), nullable=False),
        sa.Column("vram_free", sa.BigInteger(), nullable=False),
        sa.Column("ram_total", sa.BigInteger(), nullable=False),
        sa.Column("ram_free", sa.BigInteger(), nullable=False),
        sa.Column("loaded_models", JSON, nullable=False),
        sa.Column("current_prompt", sa.String(255), nullable=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("python_version", sa.Text(), nullable=False),
        sa.Column("torch_version", sa.String(64), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("last_seen", TIME, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_index("ix_prompts_worker", "prompts")
    op.drop_index("ix_prompts_history", "prompts")
    op.drop_index("ix_prompts_queue", "prompts")
    op.drop_table("prompts")
    op.drop_table("counters")
