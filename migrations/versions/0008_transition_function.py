"""``aiecs_status_transition_allowed`` is written by the same generator as the triggers' inline
condition (``ddl.py``, from ``TaskStatus.can_transition_to``), so the state machine is stated
once. The moves it allows are unchanged; only the order in which its body lists them differs
from the hand-written one it replaces.

A frozen snapshot (see 0001).

Revision ID: 0008_transition_function
Revises: 0007_inserts_and_windows
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008_transition_function"
down_revision: str | Sequence[str] | None = "0007_inserts_and_windows"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_HEAD = """
CREATE OR REPLACE FUNCTION @S@.aiecs_status_transition_allowed(
  from_status @S@.task_status, to_status @S@.task_status)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
"""

GENERATED = _HEAD + """  SELECT from_status = to_status
      OR (from_status = 'pending'
          AND to_status IN ('running', 'cancelled'))
      OR (from_status = 'running'
          AND to_status IN ('completed', 'cancelled', 'timed_out', 'failed'))
$$
"""

HAND_WRITTEN = _HEAD + """  SELECT from_status = to_status
      OR (from_status = 'pending' AND to_status IN ('running', 'cancelled'))
      OR (from_status = 'running'
          AND to_status IN ('completed', 'failed', 'timed_out', 'cancelled'))
$$
"""


def _in_current_schema(ddl: str) -> str:
    return (
        "DO $aiecs$ BEGIN EXECUTE replace($ddl$" + ddl
        + "$ddl$, '@S@', quote_ident(current_schema())); END $aiecs$"
    )


def upgrade() -> None:
    op.execute(_in_current_schema(GENERATED))


def downgrade() -> None:
    op.execute(_in_current_schema(HAND_WRITTEN))
