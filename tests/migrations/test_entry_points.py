"""Migrations run from a checkout (`alembic upgrade head`) and ship inside the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from aiecs_persistence import migrate

ROOT = Path(__file__).resolve().parents[2]


def test_alembic_upgrade_head_from_the_checkout(empty_db_url):
    env = {**os.environ, "AIECS_DATABASE_URL": empty_db_url.render_as_string(hide_password=False)}
    alembic = Path(sys.executable).with_name("alembic")
    done = subprocess.run([str(alembic), "upgrade", "head"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert migrate.current(empty_db_url) == migrate.head()


def test_the_wheel_ships_the_migrations(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    [wheel] = tmp_path.glob("aiecs_persistence-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "aiecs_persistence/migrations/env.py" in names
    assert "aiecs_persistence/migrations/versions/0001_initial.py" in names
    assert "aiecs_persistence/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)[-8:]
