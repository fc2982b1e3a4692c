"""The instructor workflow: `labs release` (student edition, leak detector) and `labs gradebook`.

The fake class is generated into tmp_path from solutions/ and the skeleton, so no solution-derived
fixture is stored in the repository. Grading runs the CPU tier on lab02's fp16 Triton cases plus the
audit, to stay fast on a 2-core machine.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from grader import REPO_ROOT
from grader.cli import main
from grader.instructor import code_text, find_leaks, release

LAB = "stage1_foundations/lab02_tiled_matmul"
TRITON, CUDA = "triton_matmul.py", "matmul_kernels.cu"
SOLUTION, SKELETON = REPO_ROOT / "solutions" / LAB, REPO_ROOT / LAB
ONLY = ["-k", "triton_matmul[audit]", "-k", "triton_matmul[fp16"]


def read_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): t for p in root.rglob("*")
            if p.is_file() and (t := code_text(p.name, p.read_bytes())) is not None}


# ---- release ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def edition(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("edition")
    assert main(["release", str(out)]) == 0
    return out


def test_release_has_skeletons_and_no_solutions(edition):
    assert not (edition / "solutions").exists()
    for f in (TRITON, CUDA, "cuda_matmul.py"):
        assert (edition / LAB / f).read_text() == (SKELETON / f).read_text()
    assert (edition / "grader" / "runner.py").is_file()
    assert not (edition / "tests").exists()   # the repository's suite grades the solutions


def test_release_refuses_a_non_empty_folder(edition, capsys):
    assert main(["release", str(edition)]) == 2
    assert "not empty" in capsys.readouterr().out


def test_leak_detector_fires_on_planted_solution_text(edition):
    texts = read_tree(edition)
    solutions = {f"{LAB}/{f}": (SOLUTION / f).read_text() for f in (TRITON, CUDA)}
    assert find_leaks(texts, solutions) == []
    # the solution pasted over its skeleton
    assert find_leaks({**texts, f"{LAB}/{TRITON}": solutions[f"{LAB}/{TRITON}"]}, solutions)
    # the kernel's loop, re-indented and without comments, in a notebook cell
    lines = solutions[f"{LAB}/{TRITON}"].splitlines()
    start = next(i for i, line in enumerate(lines) if "acc = tl.zeros" in line)
    cell = "\n".join(" " + line.split("#")[0].strip() for line in lines[start:start + 10])
    notebook = json.dumps({"cells": [{"cell_type": "code", "source": cell.splitlines(True)}]})
    leaks = find_leaks({**texts, f"{LAB}/hints.ipynb": code_text("hints.ipynb", notebook.encode())}, solutions)
    assert leaks and "hints.ipynb" in leaks[0]
    # given code (the wrapper both files share) quoted elsewhere is no leak
    wrapper = solutions[f"{LAB}/{TRITON}"].split("def matmul(")[1]
    assert find_leaks({**texts, "docs/wrapper.md": wrapper}, solutions) == []


def test_release_refuses_a_leak_and_never_copies_the_seed(tmp_path):
    repo = tmp_path / "repo"   # not a git checkout: release walks the tree
    shutil.copytree(SOLUTION, repo / "solutions" / LAB)
    shutil.copytree(SKELETON, repo / LAB)
    seed = repo / "seed.txt"
    seed.write_text("73194028\n")
    assert release(tmp_path / "ok", root=repo, hidden_seed=seed) == 0
    assert (tmp_path / "ok" / LAB / TRITON).exists() and not (tmp_path / "ok" / "seed.txt").exists()

    (repo / "docs").mkdir()
    (repo / "docs" / "ci.md").write_text("LABS_SEED=73194028 labs gradebook subs\n")
    with pytest.raises(SystemExit, match="secret seed appears in docs/ci.md"):
        release(tmp_path / "seed", root=repo, hidden_seed=seed)

    shutil.copy(SOLUTION / CUDA, repo / LAB / CUDA)
    with pytest.raises(SystemExit, match="release refused.*body of sgemm_smem_tiled"):
        release(tmp_path / "leak", root=repo)
    assert not (tmp_path / "leak").exists()


# ---- gradebook ----------------------------------------------------------------------------------

def make_class(root: Path) -> Path:
    """good, partial, broken, absent_import, cheating, missing; plus a stray file that is not a folder."""
    solution = (SOLUTION / TRITON).read_text()
    students = {
        "good": {f"{LAB}/{TRITON}": solution, f"{LAB}/{CUDA}": (SOLUTION / CUDA).read_text()},   # nested layout
        "partial": {TRITON: solution.replace("other=0.0", "other=1.0"),   # K edge tiles padded with 1, not 0
                    CUDA: (SKELETON / CUDA).read_text()},
        "broken": {TRITON: solution + "\ndef oops(:\n", CUDA: (SOLUTION / CUDA).read_text()},
        "absent_import": {TRITON: solution.replace("import os\n", "import os\nimport no_such_module_xyz\n"),
                          CUDA: (SOLUTION / CUDA).read_text()},
        "cheating": {TRITON: "import torch\n\n\ndef matmul(a, b):\n    return torch.matmul(a, b)\n",
                     CUDA: (SOLUTION / CUDA).read_text()},
        "missing": {},
    }
    for student, files in students.items():
        (root / student).mkdir(parents=True)
        for name, text in files.items():
            (root / student / name).parent.mkdir(parents=True, exist_ok=True)
            (root / student / name).write_text(text)
    (root / "stray.zip").write_bytes(b"PK")
    return root


def test_gradebook_grades_a_class(tmp_path):
    subs, out = make_class(tmp_path / "subs"), tmp_path / "out"
    rc = main(["gradebook", str(subs), "--labs", "lab02", "--out", str(out), "--cpu", "--gradescope",
               "--jobs", "2", *ONLY])
    assert rc == 0
    rows = {r["student"]: r for r in csv.DictReader((out / "gradebook.csv").open())}
    assert list(rows) == sorted(rows) == sorted(["good", "partial", "broken", "absent_import", "cheating",
                                                 "missing", "stray.zip"])
    score = {s: float(r["lab02"]) for s, r in rows.items()}
    assert score["good"] == float(rows["good"]["max"]) == 7 and rows["good"]["note"] == "ok"
    assert 0 < score["partial"] < score["good"]
    assert all(score[s] == 0 for s in ("broken", "absent_import", "cheating", "missing", "stray.zip"))
    assert "SyntaxError" in rows["broken"]["note"]
    assert "no_such_module_xyz" in rows["absent_import"]["note"]
    assert "audit" in rows["cheating"]["note"] and "matmul" in rows["cheating"]["note"]
    assert "missing matmul_kernels.cu, triton_matmul.py" in rows["missing"]["note"]
    assert "cannot read" in rows["stray.zip"]["note"]
    for student in rows:
        record = json.loads((out / f"{student}.json").read_text())
        assert record["student"] == student
        results = json.loads((out / f"{student}.results.json").read_text())
        assert {"score", "max_score", "tests", "output"} <= set(results)
    assert json.loads((out / "good.json").read_text())["labs"][0]["score"] == 7
    assert json.loads((out / "good.results.json").read_text())["score"] == 7


@pytest.mark.parametrize("argv, message", [
    (["gradebook", "{tmp}/nope", "--out", "{tmp}/out"], "labs: cannot read the submissions folder"),
    (["gradebook", "{tmp}", "--labs", "nosuchlab", "--out", "{tmp}/out"], "labs: no lab named 'nosuchlab'"),
    (["grade", "nosuchlab"], "labs: no lab named 'nosuchlab'"),
    (["grade", "lab02", "--submission", "{tmp}/nope"], "labs: submission folder not found"),
])
def test_bad_input_gets_one_line_and_exit_2(argv, message, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    out = capsys.readouterr().out
    assert out.startswith(message) and "Traceback" not in out and not (tmp_path / "out").exists(), out
