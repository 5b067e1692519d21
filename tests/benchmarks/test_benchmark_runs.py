"""The benchmark runs end to end (at a tiny scale) so it cannot rot. No timing is asserted:
figures belong to docs/performance.md, not to a test on a noisy machine."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASES = ("import:", "upstream: sequential saves, each save a new task",
         "upstream: sequential saves, 10 steps per task", "upstream: load_task_history",
         "upstream: 64 coroutines, each save a new task", "upstream: 64 coroutines, 64 tasks",
         "single:", "blocking:", "concurrent:", "watchers: 64 coroutines saving, 100 idle",
         "watchers: 64 coroutines saving, 10 watchers", "bulk:", "memory:", "read:",
         "listing: first page", "listing: deep page (after", "listing: deep page against",
         "report: whole table", "report: since 7 days ago", "retention:")


def test_every_case_reports_a_figure_and_a_mark(pg, tmp_path):
    results = tmp_path / "results.json"
    database = f"aiecs_bench_{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--scale", "0.005",
         "--url", pg.admin_url.render_as_string(hide_password=False),
         "--database", database, "--json", str(results)],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(results.read_text())
    assert len(rows) == len(CASES)
    for prefix, row in zip(CASES, rows, strict=True):
        assert row["case"].startswith(prefix), row
        assert row["ours"] and row["target"]
        assert row["ok"] in (True, False)
        if row["baseline"] != "—":
            assert row["ratio"] > 0
    assert "results (" in done.stdout  # the summary table was printed
    with __import__("psycopg").connect(
        pg.admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
    ) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            [database]).fetchone()
    assert left == (0,)  # the benchmark dropped its database
