"""Shared helpers for the repository's own tests.

Grading a lab is the expensive part (a spawned student process, the Triton interpreter), so full runs are
graded once per session and shared: `graded(lab, source)` memoizes `grader.runner.grade` on its arguments.
Tests that need only a few checks pass `only=` patterns instead of grading everything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:       # the project is not necessarily installed
    sys.path.insert(0, str(REPO_ROOT))

from grader.runner import CheckResult, LabResult, grade  # noqa: E402

TESTS = Path(__file__).resolve().parent
ADVERSARIAL = TESTS / "adversarial"

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                   reason="needs a CUDA GPU (GPU-tier test: run on the course GPU, H100 or H200)")


def describe(result: LabResult) -> str:
    """Every check on one line each, for assertion messages."""
    return "\n".join(f"  {c.name}: {c.status} {c.points:g}/{c.max_points:g} :: {c.message[:300]}"
                     for c in result.checks)


def checks_by_name(result: LabResult) -> dict[str, CheckResult]:
    names = [c.name for c in result.checks]
    assert len(names) == len(set(names)), f"duplicate check names in {names}"
    return {c.name: c for c in result.checks}


def check(result: LabResult, name: str) -> CheckResult:
    """The check called `name`, with every check listed if it is missing."""
    found = checks_by_name(result)
    assert name in found, f"no check {name!r}; the run had:\n{describe(result)}"
    return found[name]


@pytest.fixture(scope="session")
def graded():
    """grade(lab, source, cpu=True, seed=0, only=None), computed once per session per argument set."""
    cache: dict[tuple, LabResult] = {}

    def run(lab: str, source: str | Path = "student", cpu: bool = True, seed: int = 0,
            only: tuple[str, ...] | None = None) -> LabResult:
        key = (lab, str(source), cpu, seed, tuple(only) if only else None)
        if key not in cache:
            cache[key] = grade(lab, source, cpu=cpu, seed=seed, only=list(only) if only else None)
        return cache[key]

    return run


@pytest.fixture(scope="session")
def lab02_solutions(graded) -> LabResult:
    """The lab02 reference solutions graded on the CPU tier, every check."""
    return graded("lab02", "solutions", cpu=True)


@pytest.fixture(scope="session")
def lab02_skeleton(graded) -> LabResult:
    """The lab02 skeleton (what a student starts from) graded on the CPU tier, every check."""
    return graded("lab02", "student", cpu=True)


def exploit_dir(lab: str, name: str) -> Path:
    """A known-bad submission, built from its patch against today's solution (tests/exploits.py);
    name "." builds all of the lab's and returns the folder that holds them."""
    from tests import exploits
    if name == ".":
        return exploits.build_lab(lab)
    assert (ADVERSARIAL / lab / name).is_dir(), f"missing adversarial submission {ADVERSARIAL / lab / name}"
    return exploits.build(lab, name)


# ---- the command line ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def repo_copy(tmp_path_factory) -> Path:
    """The grader, the labs and the solutions copied to a scratch folder.

    The CLI records last scores under <repo>/.kernel_labs; running it on a copy keeps the developer's state
    (and other people's concurrent runs) out of the tests, and lets `labs list` be checked exactly.
    """
    dst = tmp_path_factory.mktemp("repo")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for item in REPO_ROOT.iterdir():
        if item.name == "grader" or item.name == "solutions" or item.name.startswith("stage"):
            if item.is_dir():
                shutil.copytree(item, dst / item.name, ignore=ignore)
    return dst


def run_cli(*args: str, cwd: Path = REPO_ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m grader ARGS` in `cwd` (a repository root), wide terminal so messages are not wrapped."""
    env = dict(os.environ, COLUMNS="250", PYTHONPATH=str(cwd), NO_COLOR="1", TERM="dumb")
    env.pop("TRITON_INTERPRET", None)
    return subprocess.run([sys.executable, "-m", "grader", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
