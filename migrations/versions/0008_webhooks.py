"""Webhooks: team webhook URLs and signing secrets, batch completion notices, the delivery outbox.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import base64
import secrets

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations import online

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("teams") as batch:
        batch.add_column(sa.Column("webhook", sa.Text(), nullable=True))
        batch.add_column(sa.Column("webhook_secret", sa.String(64), nullable=False, server_default=""))
    connection = op.get_bind()
    for (name,) in connection.execute(sa.text("SELECT name FROM teams")).all():
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        connection.execute(sa.text("UPDATE teams SET webhook_secret = :s WHERE name = :n"), {"s": secret, "n": name})
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("notified_at", TIMESTAMP, nullable=True))
    online.create_index("ix_prompts_batch_state", "prompts", ["batch_id", "state"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("team", sa.String(64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_at", TIMESTAMP, nullable=False),
        sa.Column("last_status", sa.Text(), nullable=True),
        sa.Column("last_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("batch_id", sa.String(36), nullable=True),
        sa.Column("prompt_id", sa.String(255), nullable=True),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_at"])
    op.create_index("ix_webhook_deliveries_batch", "webhook_deliveries", ["batch_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_batch", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    online.drop_index("ix_prompts_batch_state", "prompts")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("notified_at")
    with op.batch_alter_table("teams") as batch:
        batch.drop_column("webhook_secret")
        batch.drop_column("webhook")
