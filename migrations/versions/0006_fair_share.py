"""Fair share: each team's queue in order in one index (its first eligible prompt in one probe).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from migrations import online

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    online.drop_index("ix_prompts_team", "prompts")
    online.create_index("ix_prompts_team", "prompts", ["team", "state", "queue_rank", "number", "prompt_id"])


def downgrade() -> None:
    online.drop_index("ix_prompts_team", "prompts")
    online.create_index("ix_prompts_team", "prompts", ["team", "state", "number"])
