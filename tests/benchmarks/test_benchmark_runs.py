"""The benchmark runs end to end (at a tiny scale) so it cannot rot. No timing is asserted:
figures belong to docs/performance.md, not to a test on a noisy machine."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASES = ("import:", "upstream: sequential saves, each save a new task",
         "upstream: sequential saves, 10 steps per task", "upstream: load_task_history",
         "upstream: 64 coroutines, each save a new task", "upstream: 64 coroutines, 64 tasks",
         "single:", "blocking:", "concurrent:", "telemetry: sequential saves, API without SDK",
         "telemetry: sequential saves, SDK", "telemetry: 64 coroutines", "telemetry: 64 coroutines",
         "row security: sequential saves, unscoped", "row security: sequential saves, scoped",
         "row security: 64 coroutines", "row security: 64 coroutines",
         "row security: save_task_history_many",
         "watchers: 64 coroutines saving, 100 idle",
         "watchers: 64 coroutines saving, 10 watchers", "bulk:", "memory:", "read:",
         "listing: first page", "listing: deep page (after", "listing: deep page against",
         "report: whole table", "report: a window", "retention:",
         *(("scale: bytes per step at", "scale: load_task_history,", "scale: get_user_tasks,",
            "scale: save_task_history (a new task),") * 2),
         "scale: whole-history report()", "scale: report() of the last day",
         *(("scale: load_task_history,", "scale: get_user_tasks,",
            "scale: save_task_history (a new task),") * 2),
         "scale: retention of a day's partition",
         "scale: expiring 10% of history against row by row",
         "scale: expiring 10% of history against upstream's DELETE",
         "scale: table files after expiring")

#: The cases of history written weeks ago: they need libfaketime (Debian's package faketime,
#: which CI installs), and say "not run" without it.
AGED = ("scale: retention of", "scale: expiring", "scale: table files after")
LIBFAKETIME = any(Path("/").glob("usr/lib/*/faketime/libfaketime.so.1")) or any(
    Path(d, "faketime/libfaketime.so.1").exists() for d in ("/usr/lib", "/usr/local/lib"))


def test_every_case_reports_a_figure_and_a_mark(pg, tmp_path):
    results = tmp_path / "results.json"
    database = f"aiecs_bench_{uuid.uuid4().hex[:8]}"
    run = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--scale", "0.005",
         "--url", pg.admin_url.render_as_string(hide_password=False),
         "--database", database, "--json", str(results)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stdout, stderr = run.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # stuck: where every task waits (run.py's SIGUSR1), then fail
        run.send_signal(signal.SIGUSR1)
        time.sleep(2)
        run.kill()
        stdout, stderr = run.communicate()
        pytest.fail(f"the benchmark did not finish in 300 s:\n{stdout[-3000:]}\n{stderr[-6000:]}")
    done = subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = json.loads(results.read_text())
    assert len(rows) == len(CASES)
    for prefix, row in zip(CASES, rows, strict=True):
        assert row["case"].startswith(prefix), row
        assert row["ours"] and row["target"]
        if row["ours"] == "not run":  # only the aged case, and only without libfaketime
            assert row["case"].startswith(AGED) and not LIBFAKETIME, row
            continue
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
