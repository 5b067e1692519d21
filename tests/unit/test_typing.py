"""The public API is typed for its users: ``mypy --strict`` catches a misspelt filter or
setting, and a page's records are typed."""

from __future__ import annotations

from mypy import api

from aiecs_persistence.core import Settings, SettingsKwargs

USER_CODE = """
from aiecs_persistence import DatabaseManager, SyncDatabaseManager

db = SyncDatabaseManager(pool_sise=3)
page = db.list_tasks("u", stauts="running")
for record in db.list_steps("u", status="failed"):
    reveal_type(record)
manager = DatabaseManager(statement_timeout_ms="30s")
"""


def test_mypy_strict_rejects_misspelt_filters_and_settings(tmp_path):
    user = tmp_path / "user_code.py"
    user.write_text(USER_CODE)
    stdout, stderr, status = api.run(
        [str(user), "--strict", "--cache-dir", str(tmp_path / "cache")])
    assert status == 1, stdout + stderr
    assert 'Unexpected keyword argument "pool_sise"' in stdout, stdout
    assert 'Unexpected keyword argument "stauts"' in stdout, stdout
    assert "fallback=aiecs_persistence.records.StepRecord]" in stdout, stdout  # a NamedTuple
    assert '"statement_timeout_ms"' in stdout and "str" in stdout, stdout


def test_settings_keywords_match_the_settings():
    assert set(SettingsKwargs.__annotations__) == set(Settings.__dataclass_fields__)
