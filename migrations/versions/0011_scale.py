"""Scale: prompt numbers from a sequence, the workflow id as a column, indexes for history and jobs.

- PostgreSQL gives prompt numbers from `prompt_number_seq` (nextval takes no row lock, so
  submissions from every web process no longer queue on the counters row). It starts where the
  counter stood. Web processes of the previous release still take numbers from the counter until
  they are replaced: numbers may then repeat, which only makes the queue order of those prompts
  fall back to their prompt_id (numbers order the queue; they are not keys). SQLite keeps the
  counter (one writer at a time anyway).
- `workflow_id` (the editor's `extra_pnginfo.workflow.id`) becomes a column, filled for existing
  prompts in batches, with an index: GET /api/jobs?workflow_id= no longer reads every row's JSON.
- `prompt_counts` holds how many prompts each team has in each state, kept by triggers on every
  insert, update and delete of prompts, so queue lengths (every status broadcast), team quotas
  and job totals are read in O(1) rather than counted over 100,000 queued rows. On PostgreSQL
  the triggers only append to `prompt_count_deltas` (no row is locked, so no two transactions
  ever wait for each other or deadlock over a count) and `farm.db.prompt_counts.compact` folds
  the deltas in; SQLite (one writer) updates the counts in place.
- Jobs are listed newest first per state (`ix_prompts_state_created`, and per team
  `ix_prompts_team_created`); a team's history in completion order (`ix_prompts_team_history`).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from migrations import online

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BACKFILL_BATCH = 5000


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _backfill_workflow_ids() -> None:
    """Existing prompts' workflow ids. On PostgreSQL a batch per transaction (one UPDATE of a
    large table would hold its row locks against the workers recording prompts' ends); SQLite
    (one host, one writer) in one statement."""
    bind = op.get_bind()
    if not _postgresql():
        op.execute(sa.text(
            "UPDATE prompts SET workflow_id = substr(json_extract(extra_data, '$.extra_pnginfo.workflow.id'), 1, 64) "
            "WHERE json_type(extra_data, '$.extra_pnginfo.workflow.id') = 'text'"))
        return
    statement = sa.text(
        "UPDATE prompts SET workflow_id = left(extra_data #>> '{extra_pnginfo,workflow,id}', 64) "
        "WHERE prompt_id IN (SELECT prompt_id FROM prompts WHERE prompt_id > :after "
        "AND jsonb_typeof(extra_data #> '{extra_pnginfo,workflow,id}') = 'string' "
        "ORDER BY prompt_id LIMIT :batch) RETURNING prompt_id")
    after = ""
    with op.get_context().autocommit_block():  # each statement commits on its own
        while True:
            done = [row[0] for row in bind.execute(statement, {"after": after, "batch": BACKFILL_BATCH})]
            if not done:
                return
            after = max(done)


_POSTGRESQL_COUNTING = [
    # Statement-level triggers with transition tables: one insert per statement, whatever the
    # number of rows it changed (a batch of 100,000 cells is one delta row per state).
    """CREATE OR REPLACE FUNCTION farm_count_inserted_prompts() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO prompt_count_deltas (team, state, n)
        SELECT team, state, count(*) FROM new_rows GROUP BY team, state;
      RETURN NULL;
    END $$""",
    """CREATE OR REPLACE FUNCTION farm_count_deleted_prompts() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO prompt_count_deltas (team, state, n)
        SELECT team, state, -count(*) FROM old_rows GROUP BY team, state;
      RETURN NULL;
    END $$""",
    # Most updates change neither state nor team (progress, outputs): they add nothing.
    """CREATE OR REPLACE FUNCTION farm_count_updated_prompts() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      INSERT INTO prompt_count_deltas (team, state, n)
        SELECT team, state, sum(d) FROM (
          SELECT team, state, 1 AS d FROM new_rows UNION ALL SELECT team, state, -1 AS d FROM old_rows
        ) AS changed GROUP BY team, state HAVING sum(d) <> 0;
      RETURN NULL;
    END $$""",
    "CREATE TRIGGER prompts_counted_insert AFTER INSERT ON prompts REFERENCING NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION farm_count_inserted_prompts()",
    "CREATE TRIGGER prompts_counted_delete AFTER DELETE ON prompts REFERENCING OLD TABLE AS old_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION farm_count_deleted_prompts()",
    "CREATE TRIGGER prompts_counted_update AFTER UPDATE ON prompts "
    "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT EXECUTE FUNCTION farm_count_updated_prompts()",
]
_SQLITE_COUNTING = [
    """CREATE TRIGGER prompts_counted_insert AFTER INSERT ON prompts BEGIN
      INSERT INTO prompt_counts (team, state, n) VALUES (NEW.team, NEW.state, 1)
        ON CONFLICT (team, state) DO UPDATE SET n = n + 1;
    END""",
    """CREATE TRIGGER prompts_counted_delete AFTER DELETE ON prompts BEGIN
      UPDATE prompt_counts SET n = n - 1 WHERE team = OLD.team AND state = OLD.state;
    END""",
    """CREATE TRIGGER prompts_counted_update AFTER UPDATE OF state, team ON prompts
      WHEN OLD.state IS NOT NEW.state OR OLD.team IS NOT NEW.team BEGIN
      UPDATE prompt_counts SET n = n - 1 WHERE team = OLD.team AND state = OLD.state;
      INSERT INTO prompt_counts (team, state, n) VALUES (NEW.team, NEW.state, 1)
        ON CONFLICT (team, state) DO UPDATE SET n = n + 1;
    END""",
]
_TRIGGERS = ("prompts_counted_insert", "prompts_counted_delete", "prompts_counted_update")


def _count_prompts() -> None:
    op.create_table(
        "prompt_counts",
        sa.Column("team", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), primary_key=True),
        sa.Column("n", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "prompt_count_deltas",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("team", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False),
    )
    # Creating a trigger locks out writes to prompts until this migration commits, so the counts
    # taken here and the triggers' changes after it add up exactly.
    for statement in _POSTGRESQL_COUNTING if _postgresql() else _SQLITE_COUNTING:
        op.execute(sa.text(statement))
    op.execute(sa.text("INSERT INTO prompt_counts (team, state, n) "
                       "SELECT team, state, count(*) FROM prompts GROUP BY team, state"))


def upgrade() -> None:
    _count_prompts()
    if _postgresql():
        start = op.get_bind().execute(sa.text("SELECT value FROM counters WHERE name = 'prompt_number'")).scalar() or 0
        op.execute(sa.text(f"CREATE SEQUENCE IF NOT EXISTS prompt_number_seq MINVALUE 0 START WITH {int(start)}"))
    op.add_column("prompts", sa.Column("workflow_id", sa.String(64), nullable=True))
    _backfill_workflow_ids()
    online.create_index("ix_prompts_workflow", "prompts", ["workflow_id", "created_at", "prompt_id"],
                        postgresql_where=sa.text("workflow_id IS NOT NULL"),
                        sqlite_where=sa.text("workflow_id IS NOT NULL"))
    online.create_index("ix_prompts_state_created", "prompts", ["state", "created_at", "prompt_id"])
    online.create_index("ix_prompts_team_created", "prompts", ["team", "state", "created_at", "prompt_id"])
    online.create_index("ix_prompts_team_history", "prompts", ["team", "finished_at", "prompt_id"])


def downgrade() -> None:
    for trigger in _TRIGGERS:
        op.execute(sa.text(f"DROP TRIGGER IF EXISTS {trigger}" + (" ON prompts" if _postgresql() else "")))
    if _postgresql():
        for function in ("farm_count_inserted_prompts", "farm_count_deleted_prompts", "farm_count_updated_prompts"):
            op.execute(sa.text(f"DROP FUNCTION IF EXISTS {function}()"))
    op.drop_table("prompt_count_deltas")
    op.drop_table("prompt_counts")
    for name in ("ix_prompts_team_history", "ix_prompts_team_created", "ix_prompts_state_created",
                 "ix_prompts_workflow"):
        online.drop_index(name, "prompts")
    op.drop_column("prompts", "workflow_id")
    if _postgresql():
        op.execute(sa.text("UPDATE counters SET value = GREATEST(value, "
                           "(SELECT last_value + 1 FROM prompt_number_seq)) WHERE name = 'prompt_number'"))
        op.execute(sa.text("DROP SEQUENCE IF EXISTS prompt_number_seq"))
