"""The instructor's side: release the student edition, grade a class into a gradebook.

`labs release OUT` writes the student edition: every tracked file of the repository (`git ls-files`,
read from the working tree; without a git checkout, every file outside hidden and build folders)
except what only instructors may see:

- `solutions/`, and `.ci/` (internal grading scripts that run the solutions);
- `tests/`: the repository's own suite grades the solutions (its conftest does, for every test) and
  the known-bad submissions in tests/adversarial/ (solution code plus an exploit). Keeping the few
  files that do not mention solutions would ship tests whose fixtures are gone, so none of it ships;
  students check their work with `labs grade`;
- `tools/gpu_checks/`: the course's own GPU verification scripts, which grade the solutions;
- the `--hidden-seed` file.

Nothing is written until the edition has been searched for solution text (`find_leaks`) and for the
secret seed (the value in `--hidden-seed` or $LABS_SEED); finding either refuses the release.

`labs gradebook SUBMISSIONS` grades one folder per student (folder name = student id). For each lab,
only the files the lab declares as the student's are copied, from `<student>/<lab path>/<file>` or
`<student>/<file>`, into a fresh empty folder, and that folder is graded by `grader.runner.grade`
(the student's code runs in its own spawned process with time limits). A missing file, a syntax
error or an absent import fails that student's checks with the reason; it never stops the class.

Instructors grade with a secret seed (`--seed` or $LABS_SEED): the lab specs draw extra "seeded"
cases (shapes nobody has seen) from it, so a submission cannot special-case the public shapes. The
seed stays in the grading process: LABS_SEED is removed from the environment student processes inherit.
"""

from __future__ import annotations

import ast
import csv
import json
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from . import REPO_ROOT

INSTRUCTOR_ONLY = ("solutions/", ".ci/", "tests/", "tools/gpu_checks/")   # gpu_checks grade --solutions
LEAK_RUN = 8              # this many consecutive code lines of a solution in the edition is a leak
MIN_KERNEL_LINES = 3      # shorter kernel bodies are too plain to call their appearance a leak
SECRET_SEED_DIGITS = 6    # shorter seeds are too common as numbers to search for (and too easy to guess)
_COMMENT = re.compile(r"(^|\s)#.*$|(^|\s\s)//.*$")   # a lone ' // ' is Python's floor division


# ---- release --------------------------------------------------------------------------------------

def repo_files(root: Path) -> list[str]:
    """Tracked files (git ls-files) as posix paths; without git, every file outside hidden/build folders."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True).stdout
        names = [n for n in out.decode().split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        skip = ("__pycache__", "build", "dist")
        names = [p.relative_to(root).as_posix() for p in root.rglob("*")
                 if not any(d.startswith(".") or d in skip or d.endswith(".egg-info")
                            for d in p.relative_to(root).parent.parts)]
    return sorted(n for n in names if (root / n).is_file())


def code_text(name: str, data: bytes) -> str | None:
    """The text a leak could hide in: a notebook's cell sources, a text file's text; None for binaries."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    if name.endswith(".ipynb"):
        try:
            return "\n".join("".join(cell.get("source", "")) for cell in json.loads(text)["cells"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return text
    return text


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) for each line of code, whitespace collapsed; comments, blank lines and lines
    too short to mean anything ('}', 'pass', 'else:') dropped, so reformatting hides nothing."""
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        line = " ".join(_COMMENT.sub("", line).split())
        if len(re.sub(r"\W", "", line)) >= 5 and not line.startswith(("/*", "*", "//")):
            lines.append((number, line))
    return lines


def _cuda_entry_kernels() -> dict[str, tuple[str, ...]]:
    """Repository path of each student .cu file -> the kernels its lab's CUDA entries name."""
    from .labs import all_specs
    kernels: dict[str, tuple[str, ...]] = {}
    for spec in all_specs():
        for e in spec.entries.values():
            if e.kind == "cuda":
                path = f"{spec.path}/{e.files[0]}"
                kernels[path] = kernels.get(path, ()) + (e.symbol,)
    return kernels


def written_kernels(path: str, text: str) -> dict[str, list[str]]:
    """Code lines of each kernel body the student writes in this solution file: the CUDA kernels the
    lab's entries name, and every @triton.jit function (so a jit helper given complete belongs in a
    given file, not in a student file)."""
    from .cuda import kernel_body
    bodies: dict[str, str | None] = {}
    if path.endswith(".cu"):
        bodies = {k: kernel_body(text, k) for k in _cuda_entry_kernels().get(path, ())}
    elif path.endswith(".py"):
        try:
            tree = ast.parse(text)
        except SyntaxError:
            return {}
        lines = text.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and any(
                    ast.unparse(d).split("(")[0] in ("triton.jit", "jit") for d in node.decorator_list):
                bodies[node.name] = "\n".join(lines[node.body[0].lineno - 1:node.end_lineno])
    found = {k: [line for _, line in code_lines(b)] for k, b in bodies.items() if b}
    return {k: b for k, b in found.items() if len(b) >= MIN_KERNEL_LINES}


def find_leaks(edition: dict[str, str], solutions: dict[str, str]) -> list[str]:
    """Solution text found in the edition, one message per (solution file, edition file) pair.

    `edition`: every edition file's path -> text (the skeletons among them). `solutions`: the path of
    each solution file inside the lab tree (solutions/ stripped, so it names its skeleton) -> text.
    A leak is either
    - LEAK_RUN consecutive code lines of a solution file, at least one of them absent from its
      skeleton (so given code shared by both is no leak), found in any edition file; or
    - the whole body of a kernel the student writes (`written_kernels`) found in any edition file, its
      own skeleton included: this catches a skeleton into which the solution was pasted.
    """
    lines = {name: [line for _, line in code_lines(text)] for name, text in edition.items()}
    joined = {name: "\n" + "\n".join(ls) + "\n" for name, ls in lines.items()}
    first_file_with = {}
    for name, ls in lines.items():
        for i in range(len(ls) - LEAK_RUN + 1):
            first_file_with.setdefault(tuple(ls[i:i + LEAK_RUN]), name)
    leaks: dict[tuple[str, str], str] = {}
    for path, text in sorted(solutions.items()):
        solution, skeleton = code_lines(text), set(lines.get(path, ()))
        for i in range(len(solution) - LEAK_RUN + 1):
            run = solution[i:i + LEAK_RUN]
            found = first_file_with.get(tuple(line for _, line in run))
            if found and any(line not in skeleton for _, line in run):
                leaks.setdefault((path, found), f"solutions/{path} lines {run[0][0]}-{run[-1][0]} appear in {found}")
        for kernel, body in written_kernels(path, text).items():
            needle = "\n" + "\n".join(body) + "\n"
            for name, text in joined.items():
                if needle in text:
                    leaks.setdefault((path, name), f"the body of {kernel} (solutions/{path}) appears in {name}")
    return list(leaks.values())


def secret_seeds(hidden_seed: Path | None) -> set[str]:
    seeds = {os.environ.get("LABS_SEED", "").strip()}
    if hidden_seed is not None:
        try:
            seeds.add(hidden_seed.read_text().strip())
        except OSError as exc:
            raise SystemExit(f"labs: cannot read the hidden seed file {hidden_seed}: {exc.strerror or exc}")
    return {s for s in seeds if s.isdigit() and len(s) >= SECRET_SEED_DIGITS}


def release(out: Path, root: Path = REPO_ROOT, force: bool = False, hidden_seed: Path | None = None,
            console: Console | None = None) -> int:
    console = console or Console()
    out, root = out.resolve(), root.resolve()
    if out == root or root in out.parents or out in root.parents:
        raise SystemExit(f"labs: release: {out} overlaps the repository {root}; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise SystemExit(f"labs: release: {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SystemExit(f"labs: release: {out} is not empty (--force writes into it anyway)")
    seeds = secret_seeds(hidden_seed)
    seed_file = hidden_seed.resolve() if hidden_seed else None
    names = [n for n in repo_files(root)
             if not n.startswith(INSTRUCTOR_ONLY) and (root / n).resolve() != seed_file]
    data = {n: (root / n).read_bytes() for n in names}
    edition = {n: t for n, b in data.items() if (t := code_text(n, b)) is not None}
    solution_root = root / "solutions"
    solutions = {p.relative_to(solution_root).as_posix(): t for p in sorted(solution_root.rglob("*"))
                 if p.is_file() and (t := code_text(p.name, p.read_bytes())) is not None}
    problems = find_leaks(edition, solutions)
    problems += [f"the secret seed appears in {n}" for n, t in edition.items()
                 for s in seeds if re.search(rf"(?<!\d){s}(?!\d)", t)]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SystemExit(f"labs: release refused, solution text or seed in the edition: {problems[0]}{more}")
    for n, content in data.items():
        dest = out / n
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content)
        shutil.copymode(root / n, dest)
    console.print(f"wrote the student edition to {escape(str(out))}: {len(data)} files "
                  f"({len(solutions)} solution files checked, no solution text found)")
    return 0


# ---- gradebook ------------------------------------------------------------------------------------

@dataclass
class StudentGrades:
    student: str
    results: list = field(default_factory=list)   # grader.runner.LabResult, one per lab graded
    notes: list[str] = field(default_factory=list)

    def score(self, lab: str) -> float:
        return sum(r.score for r in self.results if r.lab == lab)


def find_student_files(spec, folder: Path) -> dict[str, Path]:
    """Each student file found at <folder>/<lab path>/<file> or <folder>/<file>, as a plain file that
    really lies inside the folder (a symlink out of it, e.g. to solutions/, does not count)."""
    inside = folder.resolve()
    found = {}
    for f in spec.student_files:
        for candidate in (folder / spec.path / f, folder / f):
            real = candidate.resolve()
            if real.is_file() and inside in real.parents:
                found[f] = real
                break
    return found


def lab_note(result, missing: list[str]) -> str:
    if missing:
        return f"{result.lab}: missing {', '.join(missing)}"
    failed = [c for c in result.checks if c.status == "fail"]
    if not failed:
        return ""
    first = (failed[0].message.splitlines() or [""])[0]
    first = first if len(first) <= 200 else first[:200] + "..."
    return f"{result.lab}: {len(failed)} check(s) failed, first {failed[0].name}: {first}"


def grade_student(folder: Path, specs: list, cpu: bool, seed: int, only: list[str] | None) -> StudentGrades:
    """Grade every lab for one student; whatever goes wrong becomes a note, never an exception."""
    from .runner import grade
    grades = StudentGrades(folder.name)
    try:
        os.listdir(folder)
    except OSError as exc:
        grades.notes.append(f"cannot read {folder}: {exc.strerror or exc} (expected one folder per student)")
        return grades
    for spec in specs:
        try:
            with tempfile.TemporaryDirectory(prefix=f"labs-{spec.id}-") as tmp:
                found = find_student_files(spec, folder)
                for name, path in found.items():
                    dest = Path(tmp) / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, dest)
                result = grade(spec.id, tmp, cpu=cpu, seed=seed, only=only)
        except Exception as exc:  # the grader failed on this lab: note it, grade the next one
            grades.notes.append(f"{spec.id}: grading failed: {type(exc).__name__}: {exc}")
            continue
        result.source = str(folder)
        grades.results.append(result)
        note = lab_note(result, sorted(set(spec.student_files) - set(found)))
        if note:
            grades.notes.append(note)
    return grades


def write_student(out: Path, grades: StudentGrades, gradescope: bool) -> None:
    from .report import gradescope as gradescope_results
    record = {"student": grades.student, "notes": grades.notes, "labs": [r.as_dict() for r in grades.results]}
    (out / f"{grades.student}.json").write_text(json.dumps(record, indent=1, default=str))
    if gradescope:
        results = gradescope_results(grades.results)
        results["output"] = "\n".join(grades.notes + [results["output"]]).strip()
        (out / f"{grades.student}.results.json").write_text(json.dumps(results, indent=1))


def write_csv(path: Path, class_grades: list[StudentGrades], labs: list[str]) -> None:
    lab_max = {lab: max((r.max_score for g in class_grades for r in g.results if r.lab == lab), default=0.0)
               for lab in labs}
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["student", *labs, "total", "max", "note"])
        for g in sorted(class_grades, key=lambda g: g.student):
            scores = [g.score(lab) for lab in labs]
            w.writerow([g.student, *(f"{s:g}" for s in scores), f"{sum(scores):g}", f"{sum(lab_max.values()):g}",
                        "; ".join(g.notes) or "ok"])


def gradebook(submissions: Path, labs: list[str] | None, out: Path, cpu: bool = False, seed: int = 0,
              only: list[str] | None = None, jobs: int = 1, gradescope: bool = False,
              console: Console | None = None) -> int:
    from .labs import UnknownLab, all_specs, get
    console = console or Console()
    try:
        specs = [get(lab) for lab in labs] if labs else all_specs()
    except UnknownLab as exc:
        raise SystemExit(f"labs: {exc}")
    try:
        folders = sorted(p for p in submissions.iterdir()
                         if not p.name.startswith(".") and p.resolve() != out.resolve())
    except OSError as exc:
        raise SystemExit(f"labs: cannot read the submissions folder {submissions}: {exc.strerror or exc}")
    os.environ.pop("LABS_SEED", None)   # student processes inherit this environment; the seed stays here
    out.mkdir(parents=True, exist_ok=True)
    class_grades = []
    with Progress(console=console) as progress, ThreadPoolExecutor(max(1, jobs)) as pool:
        task = progress.add_task(f"grading {len(folders)} student(s)", total=len(folders))
        futures = [pool.submit(grade_student, f, specs, cpu, seed, only) for f in folders]
        for future in as_completed(futures):
            grades = future.result()
            write_student(out, grades, gradescope)
            class_grades.append(grades)
            scores = ", ".join(f"{s.id} {grades.score(s.id):g}" for s in specs)
            note = f" [dim]{escape('; '.join(grades.notes))}[/]" if grades.notes else ""
            progress.console.print(f"{escape(grades.student)}: {scores}{note}")
            progress.advance(task)
    write_csv(out / "gradebook.csv", class_grades, [s.id for s in specs])
    console.print(f"wrote {escape(str(out / 'gradebook.csv'))} and one JSON per student"
                  f"{' (+ Gradescope results.json)' if gradescope else ''}")
    return 0
