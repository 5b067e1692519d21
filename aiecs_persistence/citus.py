"""Citus (distributed PostgreSQL): where each table lives on a cluster, and keeping it so.

On a Citus coordinator (a database with the ``citus`` extension) every upgrade ends by placing
what is not placed yet (``distribute``): ``tasks`` and the tables that follow a task's
history distributed by ``user_id`` and co-located with ``tasks`` (a user's rows on one node, so
keys, foreign keys, cascades and triggers stay on that node), ``error_codes`` a reference table
(copied to every node), and the save function distributed by its user argument, so that Citus
runs a whole save on the node that owns the user. The migration bookkeeping stays on the
coordinator. ``problems`` reports any drift from that (``aiecs-db check``).

Nothing here runs on plain PostgreSQL: ``present`` is False there, and ``problems`` and
``distribute`` are for a coordinator only. The statements that differ on a cluster are in
``statements.py``, named there; docs/scaling.md explains each choice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

__all__ = ["DISTRIBUTED", "FUNCTIONS", "LOCAL", "REFERENCE", "distribute", "present", "problems"]

#: Distributed by ``user_id``, co-located with the first (``tasks``), in this order.
DISTRIBUTED: Final = ("tasks", "task_history", "task_events", "aiecs_watched")
#: Small tables every node reads: one copy on each.
REFERENCE: Final = ("error_codes",)
#: The coordinator's own (the migration bookkeeping, the import's rejects).
LOCAL: Final = ("aiecs_alembic_version", "legacy_task_history_rejects", "aiecs_partitioning",
                 "aiecs_period_summaries", "aiecs_scopes")
#: Functions run where their user lives: signature → the argument that names the user.
FUNCTIONS: Final = {
    "aiecs_save_steps(text, text[], integer[], text[], jsonb[], boolean[], text[], "
    "task_status[], error_code[], text[], text)": "p_user_id",
    "aiecs_xmin_horizon(text)": "p_user_id",
}

#: Whether this database is a Citus coordinator: the extension is there and this node is the
#: coordinator (or no node is registered yet: a single-node Citus, which becomes one).
PRESENT_SQL: Final = """
SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')
"""
_COORDINATOR_SQL: Final = """
SELECT citus_is_coordinator() OR NOT EXISTS (SELECT FROM pg_dist_node)
"""

_PLACED_SQL: Final = """
SELECT c.relname, p.partmethod, column_to_column_name(p.logicalrelid, p.partkey)
FROM pg_dist_partition p JOIN pg_class c ON c.oid = p.logicalrelid
WHERE c.relnamespace = current_schema()::regnamespace
"""

#: Which of the given signatures exist (an older revision has not all of them) and are not
#: distributed by an argument yet.
_UNDELEGATED_SQL: Final = """
SELECT sig FROM unnest(%s::text[]) AS sig
WHERE to_regprocedure(sig) IS NOT NULL
  AND NOT EXISTS (SELECT FROM pg_dist_object o
                  WHERE o.classid = 'pg_proc'::regclass AND o.objid = to_regprocedure(sig)
                    AND o.distribution_argument_index IS NOT NULL)
"""


def present(conn: Connection) -> bool:
    """Whether ``conn`` is on a Citus coordinator."""
    if not conn.exec_driver_sql(PRESENT_SQL).scalar():
        return False
    return bool(conn.exec_driver_sql(_COORDINATOR_SQL).scalar())


def _placed(conn: Connection) -> dict[str, tuple[str, str | None]]:
    """Each placed table of the current schema → (Citus's method: h hash, n reference; its
    distribution column)."""
    return {str(name): (str(method), column)
            for name, method, column in conn.exec_driver_sql(_PLACED_SQL)}


def _undelegated(conn: Connection) -> list[str]:
    """``FUNCTIONS`` that exist and do not run where their user lives yet."""
    return [str(r[0]) for r in conn.exec_driver_sql(_UNDELEGATED_SQL, (list(FUNCTIONS),))]


def problems(conn: Connection) -> list[str]:
    """On a coordinator (``present``): what is not placed as it should be."""
    placed = _placed(conn)
    found = []
    for table in DISTRIBUTED:
        if placed.get(table) != ("h", "user_id"):
            found.append(f"table {table} is not distributed by user_id")
    for table in REFERENCE:
        if placed.get(table, ("",))[0] != "n":
            found.append(f"table {table} is not a reference table")
    for signature in _undelegated(conn):
        found.append(f"function {signature.split('(')[0]} is not distributed by its user")
    return found


def distribute(conn: Connection) -> list[str]:
    """On a coordinator (``present``): place whatever is not placed yet (each step committed;
    nothing when all is); returns what it did. Distributing a table that holds rows copies
    them to the workers."""
    done = []
    placed = _placed(conn)
    # The triggers write only rows of the same user (co-located, same node): safe here.
    conn.exec_driver_sql("SET citus.enable_unsafe_triggers = on")
    for table in REFERENCE:
        if table not in placed:
            conn.exec_driver_sql("SELECT create_reference_table(%s)", (table,))
            done.append(f"{table}: reference table")
    for i, table in enumerate(DISTRIBUTED):
        if table not in placed:
            colocate = "default" if i == 0 else DISTRIBUTED[0]
            conn.exec_driver_sql(
                "SELECT create_distributed_table(%s, 'user_id', colocate_with => %s)",
                (table, colocate))
            done.append(f"{table}: distributed by user_id")
        conn.commit()
    # The rows copied out stay hidden in the coordinator's own files: free them (once every
    # table pointing at one is placed too).
    for table in (*REFERENCE, *DISTRIBUTED):
        if table not in placed:
            conn.exec_driver_sql("SELECT truncate_local_data_after_distributing_table(%s)",
                                 (table,))
    for signature in _undelegated(conn):
        argument = FUNCTIONS[signature]
        conn.exec_driver_sql("SELECT create_distributed_function(%s, %s, colocate_with => %s)",
                             (signature, argument, DISTRIBUTED[0]))
        done.append(f"{signature.split('(')[0]}: run on the node of {argument}")
    conn.commit()
    return done
