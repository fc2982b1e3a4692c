"""`labs`: list, grade, bench and profile the labs. Thin: the work is in grader.runner."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from . import REPO_ROOT

STATE = REPO_ROOT / ".kernel_labs"
console = Console(stderr=False)


def _source(args) -> str:
    if getattr(args, "solutions", False) and getattr(args, "submission", None):
        raise SystemExit("labs: choose one of --solutions and --submission")
    if getattr(args, "submission", None):
        path = Path(args.submission)
        if not path.is_dir():
            raise SystemExit(f"labs: submission folder not found: {path}")
        return str(path)
    return "solutions" if getattr(args, "solutions", False) else "student"


def cmd_list(args) -> int:
    from rich.table import Table

    from .labs import all_specs
    t = Table(title="kernel-labs")
    for col in ("lab", "title", "folder", "last score"):
        t.add_column(col)
    for spec in all_specs():
        last = STATE / f"{spec.id}.json"
        score = "-"
        if last.exists():
            d = json.loads(last.read_text())["labs"][0]
            score = f"{d['score']:g}/{d['max_score']:g} ({d['tier']}, {d['source']})"
        t.add_row(spec.id, spec.title, spec.path, score)
    console.print(t)
    return 0


def cmd_grade(args) -> int:
    from .labs import UnknownLab, get
    from .report import gradescope, table, write_json
    from .runner import grade

    source = _source(args)
    try:
        specs = [get(lab) for lab in args.labs]
    except UnknownLab as exc:
        console.print(f"[red]labs: {exc}[/]")
        return 2
    results = []
    for spec in specs:
        with console.status(f"{spec.id}: starting") as status:
            def on_start(p, _s=spec):
                status.update(f"{_s.id}: {p.name}")

            def on_check(r):
                mark = {"pass": "[green]pass[/]", "fail": "[red]FAIL[/]", "skip": "[yellow]skip[/]"}[r.status]
                detail = f": {escape(r.message)}" if r.group == "speed" or r.status == "fail" else ""
                console.print(f"  {mark} {r.lab} {escape(r.name)} [dim]({r.seconds:.1f}s)[/]{detail}")

            try:
                result = grade(spec.id, source, cpu=args.cpu, seed=args.seed, only=args.only,
                               on_start=on_start, on_check=on_check if args.progress else None)
            except Exception as exc:  # the grader itself failed on this lab: report, go on
                console.print(f"[red]labs: grading {spec.id} failed: {type(exc).__name__}: {exc}[/]")
                continue
        table(result, console, verbose=args.verbose)
        results.append(result)
        STATE.mkdir(exist_ok=True)
        write_json([result], STATE / f"{spec.id}.json")
    if args.json:
        write_json(results, Path(args.json))
        console.print(f"wrote {args.json}")
    if args.gradescope:
        Path(args.gradescope).write_text(json.dumps(gradescope(results), indent=1))
        console.print(f"wrote {args.gradescope}")
    ok = len(results) == len(specs) and all(r.passed for r in results)
    return 0 if ok else 1


def cmd_bench(args) -> int:
    from .bench import bench
    return bench(args.lab, _source(args), args.entry, Path(args.out), args.seed, console)


def cmd_profile(args) -> int:
    from .bench import profile
    return profile(args.lab, _source(args), args.entry, Path(args.out), args.seed, console)


def cmd_release(args) -> int:
    from .instructor import release
    return release(Path(args.out), force=args.force, console=console,
                   hidden_seed=Path(args.hidden_seed) if args.hidden_seed else None)


def cmd_gradebook(args) -> int:
    from .instructor import gradebook
    return gradebook(Path(args.submissions), args.labs, Path(args.out), cpu=args.cpu, seed=args.seed,
                     only=args.only, jobs=args.jobs, gradescope=args.gradescope, console=console)


def cmd_calibrate(args) -> int:
    """Grade the reference solutions' speed checks on this GPU and store their ratios (grader/calibration)."""
    import datetime

    import torch

    from . import calibration
    from .labs import UnknownLab, get
    from .runner import grade

    if args.from_json:
        try:
            report = json.loads(Path(args.from_json).read_text())
            gpu = report["labs"][0]["env"]["gpu"]
        except (OSError, ValueError, KeyError, IndexError) as exc:
            console.print(f"[red]labs calibrate: cannot read a grade report from {args.from_json}: {exc}[/]")
            return 2
        ratios, command = calibration.ratios_from_report(report), f"labs calibrate --from-json {args.from_json}"
    else:
        if not torch.cuda.is_available():
            console.print("[red]labs calibrate: no CUDA GPU here; calibration times the solutions on the GPU[/]")
            return 2
        try:
            specs = [get(lab) for lab in args.labs]
        except UnknownLab as exc:
            console.print(f"[red]labs: {exc}[/]")
            return 2
        gpu, reports = torch.cuda.get_device_name(), []
        for spec in specs:
            r = grade(spec.id, "solutions", only=["speed["])
            reports.append(json.loads(json.dumps(r.as_dict(), default=str)))
        ratios, command = calibration.ratios_from_report({"labs": reports}), "labs calibrate " + " ".join(args.labs)
    if not ratios:
        console.print("[red]labs calibrate: no passing speed check to calibrate from[/]")
        return 1
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if args.from_json:          # when the report was graded, where it says so
        when = report["labs"][0]["env"].get("utc") or f"{when} (calibrated; the report has no time)"
    path = calibration.write(gpu, ratios, when, command)
    n = sum(len(v) for v in ratios.values())
    console.print(f"wrote {n} reference ratio(s) for {gpu} to {path}")
    return 0


def cmd_notebook(args) -> int:
    from .labs import UnknownLab
    from .notebook import run
    try:
        return run(args.lab, args.solutions, Path(args.out), args.timeout)
    except UnknownLab as exc:
        console.print(f"[red]labs: {exc}[/]")
        return 2


def add_instructor_commands(sub) -> None:
    """`labs release` and `labs gradebook` (grader/instructor.py)."""
    r = sub.add_parser("release", help="write the student edition (no solutions) into OUT; refuse if any leaks")
    r.add_argument("out", metavar="OUT", help="an empty folder outside the repository")
    r.add_argument("--force", action="store_true", help="write into OUT even if it is not empty")
    r.add_argument("--hidden-seed", metavar="FILE",
                   help="file holding the secret grading seed: never copied; its value must not appear in OUT")
    r.set_defaults(fn=cmd_release)

    n = sub.add_parser("notebook", help="run a lab notebook's code top to bottom without Jupyter (GPU machines)")
    n.add_argument("lab", metavar="LAB")
    n.add_argument("--solutions", action="store_true", help="point the notebook at the reference solutions")
    n.add_argument("--out", default="notebook_out", help="folder for the script and the figures (default notebook_out)")
    n.add_argument("--timeout", type=float, default=1200, help="seconds (default 1200)")
    n.set_defaults(fn=cmd_notebook)

    c = sub.add_parser("calibrate", help="store the reference solutions' speed ratios on this GPU model")
    c.add_argument("labs", nargs="*", metavar="LAB", help="labs to time (their solutions' speed checks)")
    c.add_argument("--from-json", metavar="FILE", help="take the ratios from a `labs grade --solutions --json` report")
    c.set_defaults(fn=cmd_calibrate)

    g = sub.add_parser("gradebook", help="grade a class: one folder per student -> gradebook.csv and JSON")
    g.add_argument("submissions", metavar="SUBMISSIONS_DIR", help="one folder per student, named by student id")
    g.add_argument("--labs", nargs="+", metavar="LAB", help="labs to grade (default: all)")
    g.add_argument("--out", default="gradebook", help="folder for gradebook.csv and <student>.json")
    g.add_argument("--gradescope", action="store_true", help="also write <student>.results.json for Gradescope")
    g.add_argument("--seed", type=int, default=os.environ.get("LABS_SEED", "0"),
                   help="the secret grading seed (default $LABS_SEED or 0): the labs draw hidden shapes from it, "
                        "so public shapes cannot be special-cased")
    g.add_argument("--cpu", action="store_true", help="force the CPU tier")
    g.add_argument("-k", "--only", action="append", metavar="TEXT", help="only checks whose name contains TEXT")
    g.add_argument("-j", "--jobs", type=int, default=1, help="students graded at once (default 1)")
    g.set_defaults(fn=cmd_gradebook)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="labs", description="kernel-labs: grade, benchmark and profile the labs.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="labs, their folders and last scores").set_defaults(fn=cmd_list)

    def source_opts(p):
        p.add_argument("--solutions", action="store_true", help="use the reference solutions")
        p.add_argument("--submission", metavar="DIR", help="a folder holding a student's files")
        p.add_argument("--seed", type=int, default=os.environ.get("LABS_SEED", "0"),
                       help="input seed; instructors use a secret one (default $LABS_SEED or 0)")

    g = sub.add_parser("grade", help="run a lab's checks (GPU tier if CUDA is present, else CPU tier)")
    g.add_argument("labs", nargs="+", metavar="LAB", help="lab id, e.g. lab02")
    source_opts(g)
    g.add_argument("--cpu", action="store_true", help="force the CPU tier")
    g.add_argument("--json", metavar="FILE", help="write results as JSON")
    g.add_argument("--gradescope", metavar="FILE", help="write Gradescope results.json")
    g.add_argument("-k", "--only", action="append", metavar="TEXT", help="only checks whose name contains TEXT")
    g.add_argument("-v", "--verbose", action="store_true", help="full messages for passing checks too")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no line per finished check")
    g.set_defaults(fn=cmd_grade)

    for name, fn, what in (("bench", cmd_bench, "sweep sizes; plot TFLOP/s or GB/s with baseline and roofline"),
                           ("profile", cmd_profile, "torch.profiler + NVTX trace of one call; ncu summary")):
        b = sub.add_parser(name, help=what)
        b.add_argument("lab")
        b.add_argument("--entry", help="entry point (default: every entry with a sweep)")
        b.add_argument("--out", default="bench_out", help="folder for the PNG/JSON/trace")
        source_opts(b)
        b.set_defaults(fn=fn)
    add_instructor_commands(sub)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            console.print(f"[red]{escape(exc.code)}[/]")
            return 2
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
