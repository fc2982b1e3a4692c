"""Known-bad lab02 submissions (tests/adversarial/lab02/<exploit>/): the grader must reject each one, for
the right reason. Each folder's README.md names the GRADING_THREATS.md row it exercises.

Every test grades only the checks it needs (`only=`), on the CPU tier unless marked GPU. Tests marked
`xfail(strict=True, reason="grader bug: ...")` document holes the grader has today: when one is fixed the
test starts passing, strict xfail turns that into a failure, and the mark should be removed.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import pytest

import grader.runner
from grader.labs import get
from grader.runner import grade
from tests.conftest import check, describe, exploit_dir, requires_cuda

LAB = "lab02"
HANG_LIMIT_S = 10.0          # per-call limit for the hang test (the spec's 180 s would make CI wait 3 minutes)


def grade_exploit(name: str, *only: str, cpu: bool = True):
    r = grade(LAB, exploit_dir(LAB, name), cpu=cpu, only=list(only))
    assert r.tier == ("cpu" if cpu else "gpu")
    return r


def assert_rejected(c, *needles: str):
    """`c` failed, scored nothing, and its message contains every needle (case-insensitive)."""
    assert c.status == "fail", f"{c.name} was not rejected: {c.status}: {c.message}"
    assert c.points == 0
    for n in needles:
        assert n.lower() in c.message.lower(), f"{c.name}: expected {n!r} in the message: {c.message}"


def test_every_exploit_folder_is_complete():
    root = exploit_dir(LAB, ".")
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert len(names) >= 13
    for n in names:
        d = root / n
        assert (d / "triton_matmul.py").is_file(), n
        readme = (d / "README.md").read_text().strip().splitlines()
        assert len(readme) == 2 and "GRADING_THREATS.md row" in readme[0], f"{n}/README.md: {readme}"
        compile((d / "triton_matmul.py").read_text(), str(d / "triton_matmul.py"), "exec")


# ---- rejected today -----------------------------------------------------------------------------------

def test_calls_torch_matmul_fails_audit_and_scores_nothing():
    r = grade_exploit("calls_torch_matmul", "triton_matmul[audit]", "fp32-64x64x64", "fp16-33x47x5")
    # aten::mm is blocked in the student's process (spec.blocked_ops): the call itself fails, audited or not
    assert_rejected(check(r, "triton_matmul[audit]"), "aten::mm is not allowed")
    for case in ("fp32-64x64x64", "fp16-33x47x5"):
        assert_rejected(check(r, f"triton_matmul[{case}]"), "aten::mm is not allowed")
    assert r.score == 0 and not r.passed


def test_unwritten_output_is_rejected_as_never_written():
    r = grade_exploit("unwritten_output", "fp32-64x64x64", "fp32-257x129x200")
    # fp32-64x64x64 is also the first call in a fresh student process (the import must not eat the poison)
    c = check(r, "triton_matmul[fp32-64x64x64]")
    assert_rejected(c, "1024/4096 elements wrong", "first bad element at [32, 32]", "got nan", "never written")
    # one program short of 45 tiles: only C[256, 128] of the last tile is inside the output
    assert_rejected(check(r, "triton_matmul[fp32-257x129x200]"), "1/33153 elements wrong",
                    "first bad element at [256, 128]", "never written")


@requires_cuda
def test_unwritten_output_says_never_written_on_gpu():
    # Shapes of several tiles under any autotune config: at 64 x 64 the GPU's pick can be one 64 x 64 (or
    # larger) tile, and "one program short" then still launches that one (seen on the H200, 2026-11-29).
    r = grade_exploit("unwritten_output", "triton_matmul[fp16-1024x1024x1024]", "triton_matmul[bf16-257x129x200]",
                      cpu=False)
    for case in ("fp16-1024x1024x1024", "bf16-257x129x200"):
        assert_rejected(check(r, f"triton_matmul[{case}]"), "never written")


def test_wrong_edge_mask_passes_even_sizes_fails_odd_ones():
    r = grade_exploit("wrong_edge_mask", "fp32-64x64x64", "fp32-257x129x200", "fp16-33x47x5")
    assert check(r, "triton_matmul[fp32-64x64x64]").status == "pass"    # BLOCK_SIZE_K divides K = 64
    assert_rejected(check(r, "triton_matmul[fp32-257x129x200]"), "elements wrong")
    assert_rejected(check(r, "triton_matmul[fp16-33x47x5]"), "elements wrong")


def test_writes_into_inputs_is_caught_although_output_is_right():
    r = grade_exploit("writes_into_inputs", "fp32-64x64x64", "fp16-50x70x90-ss")
    for case in ("fp32-64x64x64", "fp16-50x70x90-ss"):
        assert_rejected(check(r, f"triton_matmul[{case}]"), "input 'b'", "modified")


def test_cached_result_fails_on_the_second_trial():
    # shapes the audit (fp32-64x64x64) does not call first, so trial 1 computes and trial 2 replays
    r = grade_exploit("cached_result", "fp16-64x64x64", "fp32-257x129x200")
    for case in ("fp16-64x64x64", "fp32-257x129x200"):
        assert_rejected(check(r, f"triton_matmul[{case}]"), "trial 2/2", "elements wrong")


def test_nan_wildcard_never_passes():
    r = grade_exploit("nan_wildcard", "fp32-64x64x64", "fp16-257x129x200")
    assert_rejected(check(r, "triton_matmul[fp32-64x64x64]"), "64/4096 elements wrong", "got nan")
    assert_rejected(check(r, "triton_matmul[fp16-257x129x200]"), "129/33153 elements wrong", "got nan")


LOW_PRECISION_CASES = ("fp32-64x64x64", "fp32-33x47x5", "fp16-64x64x64", "fp16-257x129x200")


@pytest.fixture(scope="module")
def lower_precision_result():
    return grade_exploit("lower_precision", *(f"[{c}]" for c in LOW_PRECISION_CASES))    # one student process


@pytest.mark.parametrize("case", LOW_PRECISION_CASES)
def test_lower_precision_is_outside_tolerance(lower_precision_result, case):
    """fp32: TF32-truncated inputs; fp16: an fp16 accumulator. Both must land outside the tolerances."""
    assert_rejected(check(lower_precision_result, f"triton_matmul[{case}]"), "elements wrong", "tolerance")


def test_patches_grader_is_still_rejected():
    r = grade_exploit("patches_grader", "fp32-64x64x64", "fp16-64x64x64")
    for case in ("fp32-64x64x64", "fp16-64x64x64"):
        assert_rejected(check(r, f"triton_matmul[{case}]"), "elements wrong")
    # and the patches stayed in the student's process
    import torch
    assert torch.allclose is not None and not torch.allclose(torch.zeros(2), torch.ones(2))
    assert grader.runner.compare.__module__ == "grader.compare"


def test_crashes_fail_one_check_each_and_grading_goes_on():
    r = grade_exploit("crashes", "1x96x128", "33x47x5")
    assert check(r, "triton_matmul[audit]").status == "pass"
    assert_rejected(check(r, "triton_matmul[fp32-1x96x128]"), "student process died", "fp32-1x96x128")   # SIGSEGV
    assert_rejected(check(r, "triton_matmul[fp32-33x47x5]"), "student process died", "fp32-33x47x5")     # os._exit
    for case in ("fp16-1x96x128", "fp16-33x47x5"):          # each runs after a crash, in a fresh process
        c = check(r, f"triton_matmul[{case}]")
        assert c.status == "pass", c.message
    assert r.env["worker_restarts"] == 2


def test_hangs_are_killed_at_the_time_limit_and_grading_goes_on(monkeypatch):
    spec = dataclasses.replace(get(LAB), time_limit_s=HANG_LIMIT_S)
    monkeypatch.setattr(grader.runner, "get", lambda lab: spec)     # the grading process only
    t0 = time.perf_counter()
    r = grade_exploit("hangs", "1x96x128")
    elapsed = time.perf_counter() - t0
    assert check(r, "triton_matmul[audit]").status == "pass"        # the audit's case does not hang
    hung = check(r, "triton_matmul[fp32-1x96x128]")
    assert_rejected(hung, "timed out", "killed")
    assert HANG_LIMIT_S <= hung.seconds < HANG_LIMIT_S + 30, hung.seconds
    ok = check(r, "triton_matmul[fp16-1x96x128]")
    assert ok.status == "pass", ok.message
    assert r.env["worker_restarts"] == 1
    assert elapsed < 90


def test_returns_subclass_or_non_tensor_is_rejected():
    r = grade_exploit("returns_subclass", "fp32-64x64x64", "fp16-64x64x64")
    assert_rejected(check(r, "triton_matmul[fp32-64x64x64]"), "returned LazyTensor", "plain")
    assert_rejected(check(r, "triton_matmul[fp16-64x64x64]"), "returned ndarray", "plain")


def test_background_thread_result_is_read_when_the_call_returns():
    # The output is read (after a sync) as soon as the call returns; what a thread writes later is too late.
    # (Under the interpreter the thread's launch also fails: the audit sees no kernel of the student's.)
    r = grade_exploit("background_thread", "triton_matmul[audit]", "fp32-64x64x64", "fp16-33x47x5")
    for case in ("fp32-64x64x64", "fp16-33x47x5"):
        assert_rejected(check(r, f"triton_matmul[{case}]"), "never written")
    assert_rejected(check(r, "triton_matmul[audit]"))


def test_gc_reference_hunt_finds_nothing_useful():
    r = grade_exploit("gc_reference_hunt", "fp32-64x64x64", "fp16-33x47x5")
    for case in ("fp32-64x64x64", "fp16-33x47x5"):
        assert_rejected(check(r, f"triton_matmul[{case}]"), "elements wrong")


# ---- not rejected today: the audit runs in the student's process ---------------------------------------

def _assert_audit_rejects(r):
    rejected = [c for c in r.checks if (c.group == "audit" and c.status == "fail")
                or (c.group == "correctness" and c.points < c.max_points)]
    assert any(c.group == "correctness" for c in r.checks), describe(r)
    assert rejected, f"a submission that calls a library got full credit:\n{describe(r)}"


def test_profiler_aware_matmul_is_rejected():
    _assert_audit_rejects(grade_exploit("profiler_aware_matmul", "triton_matmul[audit]", "fp32-64x64x64"))


def test_numpy_matmul_is_rejected():
    # NumPy's BLAS runs no torch op and no GPU kernel the deny-list knows: the audit requires that the
    # call launch a @triton.jit kernel defined in the student's own file.
    r = grade_exploit("numpy_matmul", "triton_matmul[audit]", "fp32-64x64x64")
    _assert_audit_rejects(r)
    audit = check(r, "triton_matmul[audit]")
    assert audit.status == "fail" and "none of the Triton kernels defined in triton_matmul.py" in audit.message, audit.message
    assert check(r, "triton_matmul[fp32-64x64x64]").points == 0


def test_patches_profiler_is_rejected():
    _assert_audit_rejects(grade_exploit("patches_profiler", "triton_matmul[audit]", "fp32-64x64x64"))


def test_leaked_processes_do_not_outlive_grading(tmp_path, monkeypatch):
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("KERNEL_LABS_TEST_PIDFILE", str(pidfile))   # read by the exploit in the student's process
    pids: list[int] = []
    try:
        r = grade_exploit("leaks_process", "fp16-64x64x64")
        assert check(r, "triton_matmul[fp16-64x64x64]").status == "pass"
        pids = [int(p) for p in pidfile.read_text().split()]
        assert pids, "the exploit did not start its process"
        time.sleep(0.5)
        alive = [p for p in pids if _alive(p)]
        assert not alive, f"processes started by the submission still run after grading: {alive}"
    finally:
        for p in pids:          # processes this test caused: end them by pid
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


# ---- GPU only (run by the lead on the H100) -----------------------------------------------------------

@requires_cuda
def test_cublas_via_torch_fails_the_gpu_kernel_audit():
    r = grade_exploit("cublas_via_torch", "triton_matmul[audit]", "triton_matmul[bf16-64x64x64]", cpu=False)
    audit = check(r, "triton_matmul[audit]")
    assert_rejected(audit)
    # Blocked before cuBLAS runs (aten::mm's CUDA kernel is replaced in the student's process); where an op
    # is not blocked, the audit must name the library kernel instead.
    blocked = "aten::mm is not allowed" in audit.message
    assert blocked or audit.details.get("kernels"), f"caught, but neither blocked nor a kernel named: {audit.message}"
    assert check(r, "triton_matmul[bf16-64x64x64]").points == 0


@pytest.fixture(scope="module")
def solution_speed_4096():
    """The solution's own speed check on triton-bf16-4096, for exploits to be compared against."""
    r = grade(LAB, "solutions", cpu=False, only=["speed[triton-bf16-4096]"])
    c = check(r, "speed[triton-bf16-4096]")
    assert "student_ms" in c.details, c.message
    return c


@requires_cuda
def test_side_stream_work_is_timed(solution_speed_4096):
    r = grade_exploit("side_stream", "triton_matmul[bf16-64x64x64]", "speed[triton-bf16-4096]", cpu=False)
    assert check(r, "triton_matmul[bf16-64x64x64]").status == "pass"
    c = check(r, "speed[triton-bf16-4096]")
    # Either outcome gains nothing: the archive copy of a timed output runs on the current stream, so it
    # can race the unsynchronized side stream and re-checking finds a wrong result (seen on the H100,
    # 2026-11-27: "timed call #22 returned a wrong result"), or the work is inside the batch and timed.
    if c.status == "fail" and "returned a wrong result" in c.message:
        assert c.points == 0, c.message
        return
    assert "student_ms" in c.details, c.message
    assert c.details["student_ms"] >= c.details["floor_ms"], c.message
    # the side-stream kernel is the solution's kernel: it must not look meaningfully faster than it
    assert c.details["student_ms"] >= 0.8 * solution_speed_4096.details["student_ms"], (c.message,
                                                                                       solution_speed_4096.message)


@requires_cuda
def test_background_thread_gains_nothing(solution_speed_4096):
    # A daemon thread launches the kernel after the call returned. Whether a given call's output is read
    # before or after the thread's kernel is a race (the correctness check may pass or fail); the speed
    # check must not credit it: a timed output re-checked wrong, an invalid timing (batch wall time far
    # above the event times), or a time no better than the solution's.
    r = grade_exploit("background_thread", "speed[triton-bf16-4096]", cpu=False)
    c = check(r, "speed[triton-bf16-4096]")
    if c.status == "fail" and ("returned a wrong result" in c.message or "invalid timing" in c.message):
        assert c.points == 0, c.message
        return
    assert "student_ms" in c.details, c.message
    assert c.details["student_ms"] >= 0.8 * solution_speed_4096.details["student_ms"], (c.message,
                                                                                       solution_speed_4096.message)


@requires_cuda
def test_patched_timer_is_caught(solution_speed_4096):
    r = grade_exploit("patches_timer", "speed[triton-bf16-4096]", cpu=False)
    c = check(r, "speed[triton-bf16-4096]")
    caught = c.status == "fail" and "invalid timing" in c.message
    honest = "student_ms" in c.details and c.details["student_ms"] >= 1.5 * solution_speed_4096.details["student_ms"]
    assert caught or honest, f"2x the work reported as {c.message} vs solution {solution_speed_4096.message}"


@requires_cuda
def test_side_stream_work_overlapping_the_flush_reads_stale_salt():
    # The side stream starts while the grader still flushes and spins before the call, before the salt
    # (runner.SALT_TIMED_INPUTS, on by default) lands on the timing stream: its rows are computed from the
    # previous call's values, and the re-check of a timed output fails
    r = grade_exploit("overlaps_flush", "triton_matmul[bf16-64x64x64]", "speed[triton-bf16-4096]", cpu=False)
    assert check(r, "triton_matmul[bf16-64x64x64]").status == "pass"
    assert_rejected(check(r, "speed[triton-bf16-4096]"), "returned a wrong result")


@requires_cuda
@pytest.mark.xfail(strict=True, reason="the hole the salt closes: without it, side-stream work that waits for "
                   "nothing overlaps the grader's flush and spin unseen (H100, 2026-11-28). Strict: if this "
                   "passes, the exploit or the protocol has changed")
def test_without_the_salt_overlapping_the_flush_would_gain(monkeypatch, solution_speed_4096):
    monkeypatch.setattr(grader.runner, "SALT_TIMED_INPUTS", False)
    r = grade_exploit("overlaps_flush", "speed[triton-bf16-4096]", cpu=False)
    c = check(r, "speed[triton-bf16-4096]")
    # three quarters of the work inside the events: a gain shows as a time well under the solution's
    gained = c.status == "pass" and c.details["student_ms"] < 0.9 * solution_speed_4096.details["student_ms"]
    assert not gained, f"{c.message} vs solution {solution_speed_4096.message}"


@requires_cuda
def test_persisting_l2_is_rejected():
    r = grade_exploit("persisting_l2", "triton_matmul[bf16-64x64x64]", "speed[triton-bf16-4096]", cpu=False)
    assert check(r, "triton_matmul[bf16-64x64x64]").status == "pass"
    assert_rejected(check(r, "speed[triton-bf16-4096]"), "invalid timing", "L2 set aside")
