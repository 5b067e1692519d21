"""The trigger functions cannot be hijacked through search_path, and work under the empty
search_path that pg_dump and pg_restore use (revision 0003)."""

from __future__ import annotations

import psycopg
import pytest

from .test_constraints import insert_step, insert_task


def test_a_function_earlier_on_search_path_does_not_replace_ours(psql):
    insert_task(psql, status="running")
    psql.execute("UPDATE tasks SET status = 'completed' WHERE task_id = 't'")
    psql.execute("CREATE SCHEMA evil")
    psql.execute("""
        CREATE FUNCTION evil.aiecs_status_transition_allowed(a public.task_status,
                                                             b public.task_status)
        RETURNS boolean LANGUAGE sql AS 'SELECT true'""")
    psql.execute("CREATE TYPE evil.task_status AS ENUM ('pending', 'running', 'completed')")
    psql.execute("SET search_path = evil, public")
    with pytest.raises(psycopg.DatabaseError) as info:
        psql.execute("UPDATE public.tasks SET status = 'running' WHERE task_id = 't'")
    assert info.value.sqlstate == "AE001" and "completed -> running" in str(info.value)
    psql.execute("SET search_path = pg_temp, public")
    psql.execute("CREATE FUNCTION pg_temp.aiecs_status_transition_allowed("
                 "a public.task_status, b public.task_status) RETURNS boolean "
                 "LANGUAGE sql AS 'SELECT true'")
    with pytest.raises(psycopg.DatabaseError):
        psql.execute("UPDATE public.tasks SET status = 'running' WHERE task_id = 't'")
    psql.execute("RESET search_path")
    assert psql.execute("SELECT status::text FROM tasks").fetchone() == ("completed",)


def test_writes_work_with_an_empty_search_path(psql):
    psql.execute("SET search_path = ''")
    psql.execute("INSERT INTO public.tasks (user_id, task_id, status) "
                 "VALUES ('u', 't', 'running')")
    psql.execute("INSERT INTO public.task_history (user_id, task_id, step, step_name, status) "
                 "VALUES ('u', 't', 0, 'op', 'running')")
    psql.execute("UPDATE public.task_history SET status = 'completed', completed = true")
    psql.execute("UPDATE public.tasks SET status = 'completed'")
    with pytest.raises(psycopg.DatabaseError):
        psql.execute("UPDATE public.tasks SET status = 'running'")
    row = psql.execute("SELECT status::text, finished_at IS NOT NULL FROM public.tasks"
                       ).fetchone()
    assert row == ("completed", True)


def test_functions_pin_their_search_path(psql):
    configs = psql.execute("SELECT proname, proconfig FROM pg_proc "
                           "WHERE proname LIKE 'aiecs%' "
                           "AND pronamespace = current_schema()::regnamespace ORDER BY 1"
                           ).fetchall()
    # 8, aiecs_keys_immutable, six of partitions and summaries, aiecs_task_bucket and
    # aiecs_scope_patterns
    assert len(configs) == 17
    for name, config in configs:
        # (Those reading partition bounds also pin how timestamps are written.)
        assert config[0] == "search_path=pg_catalog, pg_temp", name
        assert set(config[1:]) <= {"DateStyle=ISO, YMD", "TimeZone=UTC"}, name


@pytest.mark.parametrize(("name", "accepted"), [
    ("vv", True), ("v", True), ("\v", False), (" \v\t", False), ("\vx", True),
])
def test_step_name_rule_strips_vertical_tab_not_the_letter_v(psql, name, accepted):
    insert_task(psql)
    if accepted:
        insert_step(psql, step_name=name)
    else:
        with pytest.raises(psycopg.errors.CheckViolation):
            insert_step(psql, step_name=name)
