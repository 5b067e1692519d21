"""docker-compose.yml, the README and the package layout agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

import aiecs_persistence

ROOT = Path(__file__).resolve().parents[2]


def test_compose_service_and_readme_url_match():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["postgres"]
    image, tag = service["image"].split(":")
    assert image == "postgres" and re.fullmatch(r"\d+(\.\d+)?", tag), "pinned major version"
    assert "5432:5432" in service["ports"]
    health = service["healthcheck"]["test"]
    assert any("pg_isready" in part for part in health)
    volume = service["volumes"][0].split(":")[0]
    assert volume in compose["volumes"], "a named volume"
    env = service["environment"]
    url = (f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}"
           f"@localhost:5432/{env['POSTGRES_DB']}")
    assert url in (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in readme
    assert ".venv/bin/python -m pytest" in ci
    assert "pip install -e '.[dev]'" in readme and "pip install -q -e '.[dev]'" in ci


def test_public_api_and_typed_marker():
    expected = {"TaskStatus", "ErrorCode", "TaskStepResult", "PersistenceError",
                "ValidationError", "InvalidTransitionError", "QueryTimeoutError",
                "RetryExhaustedError", "DatabaseError", "SchemaMismatchError"}
    assert expected <= set(aiecs_persistence.__all__)
    assert (Path(aiecs_persistence.__file__).parent / "py.typed").exists()


def test_domain_imports_no_database_module():
    code = ("import sys, aiecs_persistence.domain; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('sqlalchemy', 'psycopg', 'alembic', 'psycopg_pool')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_readme_snippets_are_valid_python():
    """Every python block of the README compiles as a script (the first one runs in
    tests/integration/test_readme.py)."""
    readme = (ROOT / "README.md").read_text()
    blocks = readme.split("```python\n")[1:]
    assert len(blocks) >= 2
    for block in blocks:
        compile(block.split("```", 1)[0], "README.md", "exec")
