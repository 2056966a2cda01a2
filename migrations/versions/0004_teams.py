"""Teams, API keys and the audit log; every prompt belongs to a team.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    teams = op.create_table(
        "teams",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("share", sa.Float(), nullable=False, server_default="1"),
        sa.Column("burst", sa.Integer(), nullable=True),
        sa.Column("max_queued", sa.Integer(), nullable=True),
        sa.Column("max_running", sa.Integer(), nullable=True),
        sa.Column("max_priority", sa.Integer(), nullable=False, server_default="50"),
        sa.Column("created_at", TIMESTAMP, nullable=False, server_default=sa.func.current_timestamp()),
    )
    # The team every prompt belongs to when no key names another (every prompt so far).
    op.bulk_insert(teams, [{"name": "default", "share": 1.0, "max_priority": 100}])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("team", sa.String(64), sa.ForeignKey("teams.name"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("label", sa.Text(), nullable=False, server_default=""),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("revoked_at", TIMESTAMP, nullable=True),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", TIMESTAMP, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("actor_team", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("detail", JSON, nullable=False),
    )
    with op.batch_alter_table("prompts") as batch:
        batch.add_column(sa.Column("team", sa.String(64), nullable=False, server_default="default"))
    op.create_index("ix_prompts_team", "prompts", ["team", "state", "number"])


def downgrade() -> None:
    op.drop_index("ix_prompts_team", table_name="prompts")
    with op.batch_alter_table("prompts") as batch:
        batch.drop_column("team")
    op.drop_table("audit")
    op.drop_table("api_keys")
    op.drop_table("teams")
