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


def plot(data: dict[str, Any], path: Path, title: str = "aiecs-persistence report") -> Path:
    """Write the report as a PNG: failures by error code, busiest steps (failed and other
    steps stacked, so both show), steps per day; counts on whole-number axes, each bar
    labelled, "no data" where a panel has none, and ``title`` (database and period) on top."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ValidationError(
            "--plot needs matplotlib: pip install 'aiecs-persistence[plot]'", field="plot"
        ) from None
    fig, (codes, steps, days) = plt.subplots(3, 1, figsize=(10, 12), layout="constrained")
    fig.suptitle(title, fontsize=13)
    try:
        failures = data["failures_by_error_code"]
        codes.set_title("Failures by error code")
        if failures:
            bars = codes.bar([f"{r['error_code']}\n{r['error_category']}" for r in failures],
                             [r["failures"] for r in failures], color="tab:red")
            codes.bar_label(bars)
            codes.margins(y=0.12)
            codes.set_ylabel("failed steps")
            codes.yaxis.set_major_locator(MaxNLocator(integer=True))
        else:
            _no_data(codes)

        busiest = list(reversed(data["busiest_steps"]))
        steps.set_title("Busiest steps")
        if busiest:
            names = [r["step_name"] for r in busiest]
            failed = [r["failures"] for r in busiest]
            other = [r["steps"] - f for r, f in zip(busiest, failed, strict=True)]
            steps.barh(names, other, color="tab:blue", label="other steps")
            bars = steps.barh(names, failed, left=other, color="tab:red", label="failed")
            steps.bar_label(bars, labels=[str(r["steps"]) for r in busiest], padding=3)
            steps.margins(x=0.08)
            steps.xaxis.set_major_locator(MaxNLocator(integer=True))
            steps.set_xlabel("steps (bar label: total)")
            steps.legend(loc="lower right")
        else:
            _no_data(steps)

        per_day = data["per_day"]
        days.set_title("Steps per day (UTC)")
        if per_day:
            labels = [r["day"] for r in per_day]
            done = [r["completed"] for r in per_day]
            failed = [r["failures"] for r in per_day]
            rest = [r["steps"] - c - f for r, c, f in zip(per_day, done, failed, strict=True)]
            width = 0.6 if len(labels) < 4 else 0.8
            days.bar(labels, done, width, color="tab:green", label="completed")
            days.bar(labels, failed, width, bottom=done, color="tab:red", label="failed")
            days.bar(labels, rest, width,
                     bottom=[c + f for c, f in zip(done, failed, strict=True)],
                     color="tab:gray", label="other")
            days.yaxis.set_major_locator(MaxNLocator(integer=True))
            days.set_ylabel("steps")
            days.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
            days.tick_params(axis="x", labelrotation=45)
        else:
            _no_data(days)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def _no_data(axes: Any) -> None:
    axes.text(0.5, 0.5, "no data in this period", ha="center", va="center",
              transform=axes.transAxes, fontsize=12, color="gray")
    axes.set_xticks([])
    axes.set_yticks([])
