"""Show a Report: one rich table per model (check, status, detail, fix), or JSON, or as the
PreflightFailed that stops the app (``raise_for_failures``)."""

from __future__ import annotations

import io
import json
import sys

from rich.console import Console
from rich.table import Table
from rich.text import Text

from serve_app.errors import PreflightFailed
from serve_app.preflight.report import CheckResult, Report

STYLES = {"pass": "green", "warn": "yellow", "fail": "bold red", "skipped": "dim"}


def _table(title: str, results: list[CheckResult]) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False, expand=True)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", ratio=3, overflow="fold")
    table.add_column("fix", ratio=2, overflow="fold")
    for r in results:
        table.add_row(r.name, Text(r.status, style=STYLES[r.status]), r.detail, r.fix)
    return table


# Rich draws tables 80 columns wide when stdout is not a terminal (make serve's log, CI), which
# wrapped the report into about 200 lines.
LOG_WIDTH = 160


def render(report: Report, console: Console | None = None) -> None:
    if console is None:
        console = Console() if sys.stdout.isatty() else Console(width=LOG_WIDTH)
    for model in report.models:
        verdict = "ok" if model.ok else f"FAILED (on_preflight_failure: {model.policy})"
        console.print(_table(f"{model.model}: {verdict}\n{model.checkpoint}", model.results))
    if report.cluster:
        console.print(_table("cluster", report.cluster))
    console.print(summary(report))


def summary(report: Report) -> str:
    failed = report.failed_models()
    head = f"{len(report.models)} model(s), {len(failed)} failed"
    if failed:
        head += ": " + ", ".join(
            f"{m.model} ({', '.join(r.name for r in m.failed_checks())})" for m in failed
        )
    if any(r.status == "fail" for r in report.cluster):
        head += "; cluster_fit failed"
    return f"{head}; {report.elapsed_s:.2f} s; exit {report.exit_code}"


def render_text(report: Report, width: int = LOG_WIDTH) -> str:
    """The tables as plain text (for exceptions and logs)."""
    buffer = io.StringIO()
    render(
        report, Console(file=buffer, width=width, color_system=None, force_terminal=False, soft_wrap=False)
    )
    return buffer.getvalue()


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)


def raise_for_failures(report: Report) -> None:
    """Raise PreflightFailed with the report's tables when the app must not start (``report.blocking()``)."""
    if report.blocking():
        raise PreflightFailed("preflight failed:\n" + render_text(report))
