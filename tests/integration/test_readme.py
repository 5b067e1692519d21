"""The README's first Python example runs, as it is, as a script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_example_runs_as_a_script(db_url, tmp_path):
    readme = (ROOT / "README.md").read_text()
    script = tmp_path / "example.py"
    script.write_text(readme.split("```python\n", 1)[1].split("```", 1)[0])
    env = os.environ | {"AIECS_DATABASE_URL": db_url.render_as_string(hide_password=False)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "pandas_tool.read_csv" in done.stdout and done.stdout.strip().endswith("True")
