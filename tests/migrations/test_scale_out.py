"""Scale-out readiness, read from the catalogs: every primary key, unique key, unique index and
foreign key of the tables a sharded PostgreSQL (Citus) would distribute includes ``user_id``,
the distribution column (docs/scaling.md). On a Citus coordinator (.ci/run) the same checks run
on the distributed database itself."""

from __future__ import annotations

from aiecs_persistence import citus

# Where each table goes on a cluster, as `aiecs-db upgrade` places them there (citus.py).
DISTRIBUTED = set(citus.DISTRIBUTED)  # by user_id, co-located
REFERENCE = set(citus.REFERENCE)  # small, copied to every node
LOCAL = set(citus.LOCAL)  # coordinator only


def test_every_table_has_a_placement(psql):
    tables = {r[0] for r in psql.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
        "AND relkind IN ('r', 'p') AND NOT relispartition").fetchall()}  # (a partition goes
    # with its table)
    assert tables == DISTRIBUTED | REFERENCE | LOCAL


def test_keys_of_distributed_tables_include_user_id(psql):
    rows = psql.execute("""
        SELECT c.conname, c.contype, t.relname,
               ARRAY(SELECT a.attname FROM unnest(c.conkey) k
                     JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k)::text[],
               f.relname,
               ARRAY(SELECT a.attname FROM unnest(c.confkey) k
                     JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k)::text[]
        FROM pg_constraint c
        JOIN pg_class t ON t.oid = c.conrelid
        LEFT JOIN pg_class f ON f.oid = c.confrelid
        WHERE c.contype IN ('p', 'u', 'f', 'x') AND t.relname = ANY(%s)
    """, [sorted(DISTRIBUTED)]).fetchall()
    kinds = {r[1] for r in rows}
    assert {"p", "f"} <= kinds  # the check below has something to check
    for name, kind, table, columns, target, target_columns in rows:
        assert "user_id" in columns, f"{name} on {table}: {columns}"
        if kind == "f" and target in DISTRIBUTED:  # co-located: joined on user_id
            assert target_columns[columns.index("user_id")] == "user_id", name
        if kind == "f":
            assert target in DISTRIBUTED | REFERENCE, f"{name} points to {target}"
    unique_indexes = psql.execute("""
        SELECT i.relname, t.relname,
               ARRAY(SELECT a.attname FROM unnest(x.indkey) k
                     JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k)::text[]
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid
        WHERE x.indisunique AND t.relname = ANY(%s)
    """, [sorted(DISTRIBUTED)]).fetchall()
    assert unique_indexes
    for index, table, columns in unique_indexes:
        assert "user_id" in columns, f"{index} on {table}: {columns}"


def test_reference_and_local_tables_are_not_pointed_at_by_local_ones(psql):
    """A distributed table may reference a reference table, never a local one."""
    rows = psql.execute("""
        SELECT t.relname, f.relname FROM pg_constraint c
        JOIN pg_class t ON t.oid = c.conrelid JOIN pg_class f ON f.oid = c.confrelid
        WHERE c.contype = 'f'
    """).fetchall()
    for table, target in rows:
        assert not (table in DISTRIBUTED | REFERENCE and target in LOCAL), (table, target)
