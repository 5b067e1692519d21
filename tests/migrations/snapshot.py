"""A comparable picture of a database schema, read from PostgreSQL's catalogs."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

QUERIES = {
    "enums": """
        SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)::text
        FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
        JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'public'
        GROUP BY t.typname""",
    "columns": """
        SELECT table_name || '.' || column_name,
               concat_ws(' ', udt_name, is_nullable, column_default)
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name <> 'aiecs_alembic_version'""",
    "constraints": """
        SELECT conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
          AND conrelid::regclass::text <> 'aiecs_alembic_version'""",
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'aiecs_alembic_version'""",
    "triggers": """
        SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal""",
    "functions": """
        SELECT proname, pg_get_functiondef(oid) FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace""",
    "views": """
        SELECT viewname, pg_get_viewdef(viewname::regclass) FROM pg_views
        WHERE schemaname = 'public'""",
    "error_codes": "SELECT code::text, concat_ws('|', name, category, description) "
                   "FROM error_codes",
    "row_security": """
        SELECT relname, concat_ws(' ', relrowsecurity, relforcerowsecurity, reloptions::text)
        FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p', 'v')
          AND NOT relispartition AND relname <> 'aiecs_alembic_version'""",
    "policies": """
        SELECT tablename || '.' || policyname,
               concat_ws(' ', permissive, roles::text, cmd, qual, with_check)
        FROM pg_policies WHERE schemaname = 'public'""",
}


def _norm(text: Any) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()


def snapshot(url: Any) -> dict[str, dict[str, str]]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return {
                kind: {str(k): _norm(v) for k, v in conn.exec_driver_sql(sql)}
                for kind, sql in QUERIES.items()
            }
    finally:
        engine.dispose()


def objects(url: Any) -> list[tuple[str, str]]:
    """Every object in the public schema (for 'downgrade removes everything')."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql("""
                SELECT 'relation', relname FROM pg_class
                 WHERE relnamespace = 'public'::regnamespace
                UNION ALL SELECT 'type', typname FROM pg_type
                 WHERE typnamespace = 'public'::regnamespace AND typtype = 'e'
                UNION ALL SELECT 'function', proname FROM pg_proc
                 WHERE pronamespace = 'public'::regnamespace
                ORDER BY 1, 2""")]
    finally:
        engine.dispose()
