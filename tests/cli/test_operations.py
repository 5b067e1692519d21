"""report, import-legacy and demo through the real entry points, against real PostgreSQL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from aiecs_persistence import SyncDatabaseManager, TaskStepResult, migrate
from aiecs_persistence.cli import app

from ..conftest import conninfo
from ..migrations import legacy

runner = CliRunner(env={"COLUMNS": "200"})


def url_of(db_url) -> str:
    return db_url.render_as_string(hide_password=False)


def counts(url) -> tuple[int, ...]:
    with psycopg.connect(conninfo(url)) as conn:
        return tuple(conn.execute(
            "SELECT (SELECT count(*) FROM tasks), (SELECT count(*) FROM task_history), "
            "(SELECT count(*) FROM legacy_task_history_rejects)").fetchone())


# -- report ------------------------------------------------------------------------------------


@pytest.fixture
def workload(db_url):
    """12 tasks: 2 steps each; every third fails at step 1 with E001/E003/E007 in turn."""
    codes = ["E001", "E003", "E007"]
    with SyncDatabaseManager(url=db_url) as db:
        for i in range(12):
            db.save_task_history("ops", f"t{i}", 0, TaskStepResult("fetch", i, True, "",
                                                                  "completed"))
            if i % 3 == 0:
                db.save_task_history("ops", f"t{i}", 1, TaskStepResult(
                    "parse", None, False, "", "failed", codes[i // 3 % 3], "broke"))
            else:
                db.save_task_history("ops", f"t{i}", 1, TaskStepResult(
                    "summarise", {"words": i}, True, "", "completed"))
    return url_of(db_url)


def test_report_json_and_table_carry_the_same_numbers(workload):
    data = json.loads(runner.invoke(app, ["report", "--json", "--url", workload]).output)
    assert data["totals"] == {"steps": 24, "tasks": 12, "failures": 4}
    assert [(r["error_code"], r["failures"], r["error_category"])
            for r in data["failures_by_error_code"]] == [
        ("E001", 2, "client"), ("E003", 1, "execution"), ("E007", 1, "system")]
    assert {r["category"]: r["failures"] for r in data["failures_by_category"]} == {
        "client": 2, "execution": 1, "system": 1}
    assert [(r["step_name"], r["steps"], r["failures"]) for r in data["busiest_steps"]] == [
        ("fetch", 12, 0), ("summarise", 8, 0), ("parse", 4, 4)]
    assert [(r["steps"], r["completed"], r["failures"]) for r in data["per_day"]] == [
        (24, 20, 4)]

    human = runner.invoke(app, ["report", "--url", workload])
    assert human.exit_code == 0, human.output
    assert "failures by error code (4 of 24 steps, 12 tasks)" in human.output
    lines = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
             for line in human.output.splitlines() if line.startswith("│")}
    assert lines["E001"] == ["VALIDATION_ERROR", "client", "2", "2"]
    assert lines["summarise"] == ["8", "0"]


def test_report_window_and_bad_dates(workload):
    future = json.loads(runner.invoke(
        app, ["report", "--json", "--since", "2999-01-01", "--url", workload]).output)
    assert future["totals"] == {"steps": 0, "tasks": 0, "failures": 0}
    assert future["per_day"] == [] and future["failures_by_error_code"] == []
    recent = json.loads(runner.invoke(
        app, ["report", "--json", "--since", "1d", "--until", "2999-01-01T00:00+01:00",
              "--url", workload]).output)
    assert recent["totals"]["steps"] == 24
    bad = runner.invoke(app, ["report", "--since", "last tuesday", "--url", workload])
    assert bad.exit_code == 2 and "ISO date" in bad.output


def test_report_plot_writes_a_real_chart(workload, tmp_path):
    png = tmp_path / "report.png"
    result = runner.invoke(app, ["report", "--plot", str(png), "--url", workload])
    assert result.exit_code == 0, result.output
    raw = png.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 10_000
    import matplotlib.image

    pixels = matplotlib.image.imread(png)
    assert pixels.shape[0] >= 800 and pixels.shape[1] >= 600
    # Not blank: the bars are there (tab:red and tab:blue pixels), not only white and text.
    rgb = (pixels[..., :3] * 255).round().astype(int)
    red = ((rgb[..., 0] == 214) & (rgb[..., 1] == 39) & (rgb[..., 2] == 40)).sum()
    blue = ((rgb[..., 0] == 31) & (rgb[..., 1] == 119) & (rgb[..., 2] == 180)).sum()
    assert red > 5_000 and blue > 5_000


def test_an_empty_period_charts_as_no_data_panels(workload, tmp_path):
    """No bars, no ±0.04 axes: every panel is blank but for its "no data" line."""
    png = tmp_path / "empty.png"
    result = runner.invoke(app, ["report", "--since", "2000-01-01", "--until", "2000-01-02",
                                 "--plot", str(png), "--url", workload])
    assert result.exit_code == 0, result.output
    import matplotlib.image

    rgb = (matplotlib.image.imread(png)[..., :3] * 255).round().astype(int)
    red = ((rgb[..., 0] == 214) & (rgb[..., 1] == 39) & (rgb[..., 2] == 40)).sum()
    gray = ((rgb[..., 0] == 128) & (rgb[..., 1] == 128) & (rgb[..., 2] == 128)).sum()
    assert red == 0 and gray > 100  # the gray "no data" text, no red bar


# -- import-legacy ----------------------------------------------------------------------------


@pytest.fixture
def upstream(empty_db_url):
    """Another database holding upstream AIECS's task_history, filled by legacy.build()."""
    data = legacy.build(seed=11, tasks=120)
    with psycopg.connect(conninfo(empty_db_url)) as conn:
        conn.execute(legacy.UPSTREAM_DDL)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO task_history (user_id, task_id, step, result, timestamp, status) "
                "VALUES (%s, %s, %s, %s, %s, %s)", data.rows)
    return data, url_of(empty_db_url)


def test_import_legacy_from_another_database_is_complete_and_idempotent(upstream, db_url):
    data, source = upstream
    first = runner.invoke(app, ["import-legacy", "--from-url", source, "--url", url_of(db_url),
                                "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output)
    assert summary["read"] == len(data.rows) == summary["new"]
    assert summary["adopted"] + summary["set_aside"] == len(data.rows)
    assert summary["adopted"] == data.adopted
    assert summary["reasons"] == dict(data.rejected)
    tasks, steps, rejects = counts(db_url)
    assert steps == data.adopted and rejects == sum(data.rejected.values())

    again = runner.invoke(app, ["import-legacy", "--from-url", source, "--url", url_of(db_url)])
    assert again.exit_code == 0, again.output
    assert f"read {len(data.rows)} row(s): {len(data.rows)} already imported, 0 new" in (
        again.output)
    assert counts(db_url) == (tasks, steps, rejects)


def test_import_legacy_from_json_lines(db_url, tmp_path):
    data = legacy.build(seed=5, tasks=60)
    export = tmp_path / "task_history.jsonl"
    with export.open("w") as f:
        for i, (user, task, step, result, when, status) in enumerate(data.rows, 1):
            f.write(json.dumps({"id": i, "user_id": user, "task_id": task, "step": step,
                                "result": json.loads(result), "timestamp": when.isoformat(),
                                "status": status}) + "\n")
    result = runner.invoke(app, ["import-legacy", "--from-jsonl", str(export), "--json",
                                 "--url", url_of(db_url)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["adopted"], summary["set_aside"]) == (
        data.adopted, sum(data.rejected.values()))
    before = counts(db_url)
    again = json.loads(runner.invoke(app, ["import-legacy", "--from-jsonl", str(export),
                                           "--json", "--url", url_of(db_url)]).output)
    assert again["new"] == 0 and again["already_present"] == len(data.rows)
    assert counts(db_url) == before


def test_import_legacy_bad_input_writes_nothing(db_url, tmp_path):
    export = tmp_path / "broken.jsonl"
    good = {"user_id": "u", "task_id": "t", "step": 0, "result": {}, "status": "completed",
            "timestamp": "2026-01-01T00:00:00"}
    export.write_text(json.dumps(good) + "\n" + json.dumps(good | {"step": "one"}) + "\n")
    result = runner.invoke(app, ["import-legacy", "--from-jsonl", str(export),
                                 "--url", url_of(db_url)])
    assert result.exit_code == 4
    assert "broken.jsonl line 2: step must be an integer" in result.output
    assert counts(db_url) == (0, 0, 0)
    neither = runner.invoke(app, ["import-legacy", "--url", url_of(db_url)])
    assert neither.exit_code == 2 and "exactly one of" in neither.output


# -- demo -------------------------------------------------------------------------------------


def test_demo_runs_twice_on_a_fresh_embedded_server():
    """No configuration at all: no URL, an empty data directory, a fresh HOME."""
    base = Path(tempfile.mkdtemp(prefix="aiecs-demo-", dir="/tmp"))
    base.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if k not in ("AIECS_DATABASE_URL", "AIECS_TEST_DATABASE_URL")}
    env |= {"AIECS_EMBEDDED_DIR": str(base / "embedded"), "HOME": str(base),
            "COLUMNS": "200"}
    command = [sys.executable, "-m", "aiecs_persistence"]
    try:
        outputs = []
        for _ in range(2):
            done = subprocess.run([*command, "demo"], capture_output=True, text=True,
                                  timeout=180, env=env)
            assert done.returncode == 0, done.stdout + done.stderr
            assert done.stderr == ""
            outputs.append(done.stdout)
        for text in outputs:
            assert f"migrated to {migrate.head()}" in text
            assert "failures by error code (7 of 20 steps, 9 tasks)" in text
            for code in ("E001", "E002", "E003", "E004", "E005", "E006", "E007"):
                assert code in text
            assert "timed_out" in text and "cancelled -> completed" in text
        # The demo ends with commands to explore what it wrote: they run as printed.
        explore = outputs[1].split("explore what the demo wrote:", 1)[1].strip().splitlines()
        assert len(explore) == 3 and all(c.strip().startswith("aiecs-db ") for c in explore)
        path = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        shown = []
        for line in explore:
            ran = subprocess.run(["bash", "-c", line.strip()], capture_output=True, text=True,
                                 timeout=60, env=env | {"PATH": path})
            assert ran.returncode == 0, (line, ran.stdout + ran.stderr)
            shown.append(ran.stdout)
        assert "research-report" in shown[0] and "bad-input" in shown[0]
        assert "llm.summarise" in shown[1]
        assert "failures by error code" in shown[2]
        status = json.loads(subprocess.run([*command, "embedded", "status", "--json"],
                                           capture_output=True, text=True, env=env,
                                           timeout=60).stdout)
        assert status["running"] is True
        assert status["data_dir"] == str(base / "embedded")
    finally:
        subprocess.run([*command, "embedded", "stop"], env=env, timeout=60,
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
