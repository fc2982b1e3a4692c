"""Lab 02 on the CPU tier: the solutions pass, the skeleton fails cleanly, the command line behaves.

The full solution and skeleton runs are graded once per session (tests/conftest.py) and shared here.
"""

from __future__ import annotations

import json

import pytest

from grader import cuda
from grader.labs import get
from tests.conftest import check, checks_by_name, describe, requires_cuda, run_cli

SPEC = get("lab02")
CPU_CASES = [c for c in SPEC.all_cases(0) if "cpu" in c.tiers]
CUDA_ENTRIES = [n for n, e in SPEC.entries.items() if e.kind == "cuda"]


# ---- the solutions ------------------------------------------------------------------------------------

def test_solutions_pass_every_cpu_check(lab02_solutions):
    r = lab02_solutions
    assert r.tier == "cpu"
    failed = [c for c in r.checks if c.status == "fail"]
    assert not failed, f"the solutions failed checks:\n{describe(r)}"
    assert r.passed
    assert r.env["worker_restarts"] == 0, "the student process had to be restarted while grading the solutions"


def test_solutions_plan_has_the_expected_checks(lab02_solutions):
    names = list(checks_by_name(lab02_solutions))
    assert names[0] == "files"
    expected = (["files"] + [f"compile[{s}]" for s in SPEC.cuda_sources] + ["triton_matmul[audit]"]
                + [f"triton_matmul[{c.name}]" for c in CPU_CASES]
                + [f"{e}[implemented]" for e in CUDA_ENTRIES]
                + [f"speed[{b.name}]" for b in SPEC.benchmarks])
    assert names == expected


@pytest.mark.parametrize("case", [c.name for c in CPU_CASES])
def test_solutions_correctness_case_passes(lab02_solutions, case):
    c = check(lab02_solutions, f"triton_matmul[{case}]")
    assert c.group == "correctness"
    assert c.status == "pass", c.message
    assert c.points == c.max_points == SPEC.correctness_points
    assert c.message.startswith("2 trial(s)"), c.message
    # a true fp32-accumulated GEMM sits far inside the tolerance; 1e-3 relative Frobenius error would not
    assert 0 <= c.details["rel_err"] < 1e-3, c.details


def test_solutions_score_is_full(lab02_solutions):
    r = lab02_solutions
    assert r.max_score == len(CPU_CASES) * SPEC.correctness_points > 0
    assert r.score == r.max_score


def test_solutions_speed_is_not_graded_without_gpu(lab02_solutions):
    speed = [c for c in lab02_solutions.checks if c.group == "speed"]
    assert len(speed) == len(SPEC.benchmarks) > 0
    for c in speed:
        assert c.status == "skip", c.message
        assert "not graded: no GPU" in c.message
        assert c.points == c.max_points == 0.0       # CPU-tier speed neither adds to nor caps the score


def test_solutions_audit_and_cuda_checks(lab02_solutions):
    r = lab02_solutions
    audit = check(r, "triton_matmul[audit]")
    assert audit.status == "pass" and "no forbidden op" in audit.message
    for e in CUDA_ENTRIES:
        c = check(r, f"{e}[implemented]")
        assert c.status == "pass", c.message
    for src in SPEC.cuda_sources:
        c = check(r, f"compile[{src}]")
        if cuda.nvcc_path():
            assert c.status == "pass", c.message
        else:
            assert c.status == "skip" and "nvcc not found" in c.message


def test_only_filter_keeps_files_audit_and_matching_checks(graded):
    r = graded("lab02", "solutions", only=("fp16-33x47x5",))
    # the entry's audit always runs: a filter must not let a library call through
    assert [c.name for c in r.checks] == ["files", "triton_matmul[audit]", "triton_matmul[fp16-33x47x5]"]
    assert all(c.status == "pass" for c in r.checks[1:]), describe(r)
    r = graded("lab02", "solutions", only=("cuda_smem_tiled[implemented]",))
    assert [c.name for c in r.checks] == ["files", "cuda_smem_tiled[implemented]"]


# ---- the skeleton -------------------------------------------------------------------------------------

def test_skeleton_fails_every_graded_check_with_its_todo(lab02_skeleton):
    r = lab02_skeleton
    assert r.tier == "cpu"
    graded_checks = [c for c in r.checks if c.group not in ("files", "compile", "speed")]
    assert len(graded_checks) == 1 + len(CPU_CASES) + len(CUDA_ENTRIES)
    for c in graded_checks:
        assert c.status == "fail", f"{c.name} did not fail on the skeleton: {c.message}"
        assert "NotImplementedError" in c.message and "lab02" in c.message, f"{c.name}: {c.message}"
        assert c.points == 0
        assert "Traceback" not in c.message


def test_skeleton_given_parts_work(lab02_skeleton):
    """A skeleton imports and compiles before any TODO is done (STYLE.md rule 8)."""
    r = lab02_skeleton
    assert check(r, "files").status == "pass"
    for src in SPEC.cuda_sources:
        assert check(r, f"compile[{src}]").status == ("pass" if cuda.nvcc_path() else "skip")
    for c in r.checks:
        if c.group == "speed":
            assert c.status == "skip" and "not graded: no GPU" in c.message


def test_skeleton_crashes_nothing(lab02_skeleton):
    r = lab02_skeleton
    assert r.env["worker_restarts"] == 0
    assert not any("died" in c.message or "timed out" in c.message for c in r.checks), describe(r)
    assert r.score == 0 and not r.passed


def test_skeleton_todo_messages_name_what_is_missing(lab02_skeleton):
    assert "matmul_kernel" in check(lab02_skeleton, "triton_matmul[fp32-64x64x64]").message
    assert "sgemm_smem_tiled" in check(lab02_skeleton, "cuda_smem_tiled[implemented]").message
    assert "sgemm_register_blocked" in check(lab02_skeleton, "cuda_register_blocked[implemented]").message


# ---- the command line ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_solutions_run(repo_copy, tmp_path_factory):
    """`grade lab02 --solutions --cpu --json F --gradescope G` once, in a scratch copy of the repository.

    --cpu keeps this the CPU tier on a GPU machine too (the GPU tier would time every benchmark).
    """
    out = tmp_path_factory.mktemp("cli")
    proc = run_cli("grade", "lab02", "--solutions", "--cpu", "--json", str(out / "r.json"),
                   "--gradescope", str(out / "gs.json"), cwd=repo_copy)
    return proc, out


def test_cli_grade_solutions_exits_zero_and_writes_json(cli_solutions_run):
    proc, out = cli_solutions_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "r.json").read_text())
    (lab,) = data["labs"]
    assert lab["lab"] == "lab02" and lab["tier"] == "cpu" and lab["source"] == "solutions"
    assert lab["passed"] is True
    assert lab["max_score"] == len(CPU_CASES) * SPEC.correctness_points
    assert lab["score"] == lab["max_score"]
    assert {c["name"] for c in lab["checks"]} >= {f"triton_matmul[{c.name}]" for c in CPU_CASES}
    full = f"{lab['max_score']:g}/{lab['max_score']:g} points"
    assert "CPU tier" in proc.stdout and full in proc.stdout, proc.stdout[-2000:]


def test_cli_gradescope_file(cli_solutions_run):
    proc, out = cli_solutions_run
    gs = json.loads((out / "gs.json").read_text())
    assert gs["score"] == gs["max_score"] == len(CPU_CASES) * SPEC.correctness_points
    assert all(t["status"] == "passed" for t in gs["tests"])
    assert not any("speed[" in t["name"] for t in gs["tests"])     # not graded here: not listed


def test_cli_list_shows_labs_and_last_score(cli_solutions_run, repo_copy):
    proc = run_cli("list", cwd=repo_copy, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "lab02" in proc.stdout and SPEC.path in proc.stdout
    n = len(CPU_CASES) * SPEC.correctness_points
    assert f"{n:g}/{n:g} (cpu, solutions)" in proc.stdout, proc.stdout


def test_cli_unknown_lab_is_a_one_line_error():
    proc = run_cli("grade", "nosuchlab", timeout=120)
    assert proc.returncode == 2
    text = (proc.stdout + proc.stderr).strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    assert "nosuchlab" in text and "lab02" in text      # names the wrong lab and lists the real ones


def test_cli_missing_submission_folder_is_a_one_line_error(tmp_path):
    proc = run_cli("grade", "lab02", "--submission", str(tmp_path / "nope"), timeout=120)
    assert proc.returncode == 2
    text = (proc.stdout + proc.stderr).strip()
    assert "Traceback" not in text and len(text.splitlines()) == 1 and "not found" in text, text


def test_cli_solutions_and_submission_conflict(tmp_path):
    proc = run_cli("grade", "lab02", "--solutions", "--submission", str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stdout + proc.stderr


def test_cli_skeleton_exits_one(repo_copy):
    proc = run_cli("grade", "lab02", "--cpu", "-k", "fp32-64x64x64", cwd=repo_copy)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "NotImplementedError" in proc.stdout


# ---- GPU tier (skipped without CUDA) ------------------------------------------------------------------

@requires_cuda
def test_solutions_pass_gpu_correctness_smoke(graded):
    r = graded("lab02", "solutions", cpu=False,
               only=("triton_matmul[audit]", "bf16-64x64x64]", "fp16-257x129x200]", "cuda_smem_tiled[fp32-33x47x5]",
                     "cuda_register_blocked[fp32-257x129x200]", "cuda_register_blocked[audit]"))
    assert r.tier == "gpu"
    assert not [c for c in r.checks if c.status == "fail"], describe(r)
    assert sum(c.group == "correctness" for c in r.checks) >= 5, describe(r)
