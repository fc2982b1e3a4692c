"""Reports: a rich table for people, JSON for machines, Gradescope's results.json for courses."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .runner import LabResult

_STYLE = {"pass": "green", "fail": "red", "skip": "yellow"}


def mode_line(result: LabResult) -> str:
    env = result.env
    if result.tier == "gpu":
        return (f"GPU tier on {env['gpu']} (driver {env['driver']}, torch {env['torch']}, triton {env['triton']}): "
                "every case, speed graded, kernel audit")
    return (f"CPU tier ({env.get('tier_reason', 'no CUDA')}; torch {env['torch']}, triton "
            f"{env['triton']} interpreter): small fp32/fp16 cases, .cu compile-checked, speed not graded")


def table(result: LabResult, console: Console | None = None, verbose: bool = False) -> None:
    console = console or Console()
    t = Table(title=escape(f"{result.lab}: {result.title} [{result.source}]"), title_justify="left", expand=False)
    t.add_column("check", overflow="fold")
    t.add_column("result")
    t.add_column("points", justify="right")
    t.add_column("details", overflow="fold", max_width=100)
    for c in result.checks:
        msg = c.message if (verbose or c.status == "fail" or c.group == "speed") else c.message.split(";")[0]
        pts = f"{c.points:g}/{c.max_points:g}" if c.max_points else "-"
        t.add_row(escape(c.name), f"[{_STYLE[c.status]}]{c.status}[/]", pts, escape(msg))
    console.print(t)
    n_fail = sum(c.status == "fail" for c in result.checks)
    n_pass = sum(c.status == "pass" for c in result.checks)
    n_skip = sum(c.status == "skip" for c in result.checks)
    console.print(f"[bold]{result.lab}[/]: {escape(mode_line(result))}")
    console.print(f"[bold]{result.lab}: {result.score:g}/{result.max_score:g} points; {n_pass} passed, "
                  f"{n_fail} failed, {n_skip} not graded here; {result.seconds:.0f}s[/]")


def write_json(results: list[LabResult], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"labs": [r.as_dict() for r in results]}, indent=1, default=str))


def gradescope(results: list[LabResult]) -> dict:
    """Gradescope autograder results.json: overall score, one test entry per check, a leaderboard."""
    tests, board = [], []
    for r in results:
        for c in r.checks:
            if c.status == "skip" and not c.max_points:
                continue
            tests.append({"name": f"{r.lab}::{c.name}", "score": round(c.points, 4), "max_score": c.max_points,
                          "status": "passed" if c.status == "pass" else "failed",
                          "output": c.message, "visibility": "visible"})
            if c.group == "speed" and "ratio" in c.details:
                board.append({"name": f"{r.lab} {c.name} (x baseline)", "value": round(c.details["ratio"], 3)})
    return {"score": round(sum(r.score for r in results), 4),
            "max_score": sum(r.max_score for r in results),
            "output": "\n".join(mode_line(r) for r in results),
            "visibility": "visible", "stdout_visibility": "hidden",
            "tests": tests, "leaderboard": board}
