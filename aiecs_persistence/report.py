"""The failure report for people: rich tables and a matplotlib chart.

The numbers come from ``statements.report`` (``DatabaseManager.report`` /
``SyncDatabaseManager.report``); this module only presents them. ``plot`` needs matplotlib
(``pip install 'aiecs-persistence[plot]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from .errors import ValidationError

__all__ = ["plot", "tables"]


def tables(data: dict[str, Any]) -> list[Table]:
    """One table per section of the report."""
    t = data["totals"]
    by_code = Table("code", "name", "category", "failures", "tasks",
                    title=f"failures by error code ({t['failures']} of {t['steps']} steps, "
                          f"{t['tasks']} tasks)")
    for r in data["failures_by_error_code"]:
        by_code.add_row(r["error_code"], r["error_name"], r["error_category"],
                        str(r["failures"]), str(r["tasks"]))
    by_category = Table("category", "failures", title="failures by category")
    for r in data["failures_by_category"]:
        by_category.add_row(r["category"], str(r["failures"]))
    busiest = Table("step", "steps", "failures", title="busiest steps")
    for r in data["busiest_steps"]:
        busiest.add_row(r["step_name"], str(r["steps"]), str(r["failures"]))
    per_day = Table("day (UTC)", "steps", "completed", "failures", title="per day")
    for r in data["per_day"]:
        per_day.add_row(r["day"], str(r["steps"]), str(r["completed"]), str(r["failures"]))
    return [by_code, by_category, busiest, per_day]


def plot(data: dict[str, Any], path: Path) -> Path:
    """Write the report as a PNG bar chart: failures by error code, busiest steps, per day."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValidationError(
            "--plot needs matplotlib: pip install 'aiecs-persistence[plot]'", field="plot"
        ) from None
    fig, (codes, steps, days) = plt.subplots(3, 1, figsize=(9, 11), layout="constrained")
    try:
        failures = data["failures_by_error_code"]
        codes.bar([f"{r['error_code']}\n{r['error_category']}" for r in failures],
                  [r["failures"] for r in failures], color="tab:red")
        codes.set_title("Failures by error code")
        codes.set_ylabel("failed steps")

        busiest = list(reversed(data["busiest_steps"]))
        names = [r["step_name"] for r in busiest]
        steps.barh(names, [r["steps"] for r in busiest], color="tab:blue", label="steps")
        steps.barh(names, [r["failures"] for r in busiest], color="tab:red", label="failures")
        steps.set_title("Busiest steps")
        steps.legend(loc="lower right")

        per_day = data["per_day"]
        labels = [r["day"] for r in per_day]
        done = [r["completed"] for r in per_day]
        failed = [r["failures"] for r in per_day]
        other = [r["steps"] - c - f for r, c, f in zip(per_day, done, failed, strict=True)]
        days.bar(labels, done, color="tab:green", label="completed")
        days.bar(labels, failed, bottom=done, color="tab:red", label="failed")
        days.bar(labels, other, bottom=[c + f for c, f in zip(done, failed, strict=True)],
                 color="tab:gray", label="other")
        days.set_title("Steps per day (UTC)")
        days.legend(loc="upper left")
        days.tick_params(axis="x", labelrotation=45)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
