"""Summaries of closed periods (``ddl.py``, summaries): which partitions of the history are due
one, and the call that makes it. ``statements/report.py`` adds them up.

A period is due once it ended and its tasks have all been quiet for a while (the partition
width, at most an hour): a summary made while its tasks still write would be outdated by the
next save. One whose partition was written since its summary was made is due again. On Citus
none is (its report reads the distributed tables, ``statements/report.py``), nor for a scoped
role (``scopes.py``), which sees no summary: they add up every user's steps.
"""

from __future__ import annotations

from typing import Final

from .. import names
from .statement import Statement

_QUIET: Final = "least(p.width, interval '1 hour')"

#: The history partitions due a summary, oldest first.
DUE: Final = f"""
SELECT b.partition
FROM aiecs_partition_bounds() b, {names.PARTITIONING_TABLE} p
WHERE b.parent = 'task_history' AND b.upper <= now() - {_QUIET}
  AND NOT EXISTS (SELECT FROM {names.SUMMARIES_TABLE} s
                  WHERE s.partition = b.partition AND s.writes_seen = s.writes)
  AND NOT EXISTS (SELECT FROM tasks t
                  WHERE t.{names.BUCKET} >= b.lower AND t.{names.BUCKET} < b.upper
                    AND t.updated_at >= now() - {_QUIET})
  AND NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')
  AND NOT EXISTS (SELECT FROM {names.SCOPES_TABLE} sc WHERE sc.role = current_user)
ORDER BY b.lower
"""

#: One step of a partition's summary: true once it is made (the first call of a partition
#: puts the counting trigger on it and answers false: call again, in a new transaction).
SUMMARIZE: Final = f"SELECT {names.SUMMARIZE_FUNCTION}(%(partition)s) AS done"


def due() -> Statement:
    return Statement("summarize_periods", DUE)


def summarize(partition: str) -> Statement:
    return Statement("summarize_periods", SUMMARIZE, {"partition": partition})
