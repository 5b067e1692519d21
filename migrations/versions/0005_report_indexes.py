"""Indexes for reports and step-name listings.

* ``ix_task_history_created_at``: a BRIN index on ``task_history.created_at``, so a report over
  a window (``report(since=…)``, ``aiecs-db report --since 7d``) reads only the table's blocks
  written in it: steps are appended in time order, and a BRIN index keeps one small summary
  per block range (a few pages for millions of steps, next to nothing per insert).
* ``ix_task_history_user_id_step_name``: ``list_tasks(step_name=…)`` finds a user's tasks
  with a step of that name without reading every step of the user (a rare or absent name
  cost a scan of all of them: 37 to 51 ms for a user with 200,000 steps).

Both are built ``CONCURRENTLY``, outside the migration's transaction, so writers go on while
the table is read; ``IF NOT EXISTS`` lets a run that was interrupted be run again (an index
left invalid by an interruption is dropped and built again).

A frozen snapshot (see 0001).

Revision ID: 0005_report_indexes
Revises: 0004_task_events
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005_report_indexes"
down_revision: str | Sequence[str] | None = "0004_task_events"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    ("ix_task_history_created_at",
     "ON task_history USING brin (created_at) WITH (pages_per_range = 32)"),
    ("ix_task_history_user_id_step_name", "ON task_history (user_id, step_name, task_id)"),
)

# An index that a cancelled CREATE INDEX CONCURRENTLY left behind (not valid): dropped first.
DROP_IF_INVALID = """
DO $aiecs$ BEGIN
  IF EXISTS (SELECT FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE c.relname = '{name}' AND c.relnamespace = current_schema()::regnamespace
               AND NOT i.indisvalid) THEN
    EXECUTE 'DROP INDEX {name}';
  END IF;
END $aiecs$
"""


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, definition in INDEXES:
            op.execute(DROP_IF_INVALID.format(name=name))
            op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} {definition}")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, _ in INDEXES:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
