"""Lab 03 (fused row-wise kernels) on the CPU tier: the spec is sound, the solutions pass, the skeleton
fails cleanly, every known-bad submission in tests/adversarial/lab03/ is rejected for the right reason,
and the solution kernels compile for sm_90 (the interpreter never compiles them).

Full solution and skeleton runs are graded once per session (the `graded` fixture in conftest.py);
each exploit grades only the checks it needs (`only=`).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from grader import REPO_ROOT
from grader.inputs import make
from grader.labs import get
from grader.spec import DTYPES
from tests.conftest import check, describe, exploit_dir

LAB = "lab03"
SPEC = get(LAB)
SPEC_MODULE = importlib.import_module("grader.labs.lab03_fused_rowwise")   # rowwise(), the baselines
ENTRIES = ("softmax", "rmsnorm_fwd", "layernorm_fwd", "rmsnorm_bwd")
KERNELS = {"softmax": "softmax_kernel", "rmsnorm_fwd": "rmsnorm_fwd_kernel",
           "layernorm_fwd": "layernorm_fwd_kernel", "rmsnorm_bwd": "rmsnorm_bwd_kernel"}
CPU_CASES = [c for c in SPEC.all_cases(0) if "cpu" in c.tiers]
SOLUTION_FILE = REPO_ROOT / "solutions" / SPEC.path / "rowwise.py"


@pytest.fixture(scope="module")
def solutions(graded):
    return graded(LAB, "solutions", cpu=True)


@pytest.fixture(scope="module")
def skeleton(graded):
    return graded(LAB, "student", cpu=True)


def assert_rejected(c, *needles: str):
    assert c.status == "fail", f"{c.name} was not rejected: {c.status}: {c.message}"
    assert c.points == 0
    for n in needles:
        assert n.lower() in c.message.lower(), f"{c.name}: expected {n!r} in: {c.message}"


# ---- the spec -----------------------------------------------------------------------------------------

def test_every_op_names_its_entry():
    for c in SPEC.all_cases(12345) + [b for b in SPEC.benchmarks]:
        assert c.params["op"] == c.entry, c.name


@pytest.mark.parametrize("entry", ENTRIES)
def test_cpu_cases_cover_ragged_widths_and_layouts(entry):
    cases = [c for c in CPU_CASES if c.entry == entry]
    widths = {c.params["shape"][-1] for c in cases}
    assert {37, 1000, 4097} <= widths
    assert (1 if entry != "rmsnorm_bwd" else 2) in widths
    assert all(c.params["dtype"] in ("fp32", "fp16") for c in cases), "the interpreter mishandles bf16"
    assert {c.params["dtype"] for c in cases} == {"fp32", "fp16"}
    assert all(len(c.params["shape"]) >= 2 and c.params["shape"][0] >= 2 for c in cases)
    assert any(c.params["layout"] == "p" for c in cases) and any(len(c.params["shape"]) == 3 for c in cases)
    gpu = [c for c in SPEC.all_cases(0) if c.entry == entry and "gpu" in c.tiers]
    assert {"bf16", "fp16"} <= {c.params["dtype"] for c in gpu}
    assert max(c.params["shape"][-1] for c in gpu) > 16384, "the GPU tier must reach the looped (wide-row) path"


def test_inputs_are_deterministic_and_padded_rows_hide_nan():
    p = SPEC_MODULE.rowwise("rmsnorm_bwd", (7, 300), "fp32", "p")
    a = make(SPEC, p, 42, "cpu")
    b = make(SPEC, p, 42, "cpu")
    assert a.keys() == {"x", "weight", "dy"}
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.isfinite(a[k]).all()
    x = a["x"]
    assert x.stride(0) > x.shape[1], "padded rows must be wider than the row"
    wide = x.as_strided((x.shape[0], x.stride(0)), (x.stride(0), 1))
    assert torch.isnan(wide[:, x.shape[1]:]).all(), "the row padding holds NaN"
    assert x.std(dim=1).min() > 0.1 and (x.mean(dim=1).max() - x.mean(dim=1).min()) > 0.1   # not i.i.d. N(0,1)


def _autograd_rmsnorm(dy, x, w, eps):
    x, w = x.double().requires_grad_(), w.double().requires_grad_()
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w
    y.backward(dy.double())
    return y.detach(), x.grad, w.grad


@pytest.mark.parametrize("shape", [(5, 37), (2, 3, 96)])
def test_references_agree_with_torch_and_autograd(shape):
    n = shape[-1]
    inp = {op: make(SPEC, SPEC_MODULE.rowwise(op, shape, "fp32"), 7, "cpu") for op in ENTRIES}
    x = inp["softmax"]["x"].double()
    torch.testing.assert_close(SPEC.reference(inp["softmax"], {"op": "softmax", "eps": 0.0}),
                               torch.softmax(x, -1), rtol=1e-12, atol=1e-14)
    i = inp["layernorm_fwd"]
    p = SPEC_MODULE.rowwise("layernorm_fwd", shape, "fp32")
    torch.testing.assert_close(SPEC.reference(i, p), F.layer_norm(i["x"].double(), (n,), i["weight"].double(),
                                                                  i["bias"].double(), p["eps"]), rtol=1e-10, atol=1e-12)
    i = inp["rmsnorm_bwd"]
    p = SPEC_MODULE.rowwise("rmsnorm_bwd", shape, "fp32")
    y, dx, dw = _autograd_rmsnorm(i["dy"], i["x"], i["weight"], p["eps"])
    ref_dx, ref_dw = SPEC.reference(i, p)
    torch.testing.assert_close(ref_dx, dx, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ref_dw, dw, rtol=1e-10, atol=1e-12)
    pf = SPEC_MODULE.rowwise("rmsnorm_fwd", shape, "fp32")
    torch.testing.assert_close(SPEC.reference(i, pf), y, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("op", ENTRIES)
def test_eager_baselines_compute_the_op(op):
    """A baseline's output is never checked by the grader, so check here that it does the same work."""
    p = SPEC_MODULE.rowwise(op, (6, 300), "fp32")
    inputs = make(SPEC, p, 3, "cpu")
    got, ref = SPEC.baselines["eager"](inputs, p), SPEC.reference(inputs, p)
    for g, r in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,)):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-5)
    if op == "rmsnorm_fwd":
        torch.testing.assert_close(SPEC.baselines["F.rms_norm"](inputs, p).double(), ref, rtol=1e-4, atol=1e-5)


def test_bytes_moved_and_copy_baseline():
    p = SPEC_MODULE.rowwise("softmax", (4096, 8192), "bf16")
    assert SPEC.bytes_moved(p) == 2 * 4096 * 8192 * 2
    p = SPEC_MODULE.rowwise("rmsnorm_bwd", (4096, 8192), "bf16")
    assert SPEC.bytes_moved(p) == 2 * (3 * 4096 * 8192 + 2 * 8192)
    small = SPEC_MODULE.rowwise("layernorm_fwd", (3, 64), "fp32")
    out = SPEC.baselines["copy"](make(SPEC, small, 0, "cpu"), small)
    assert 2 * out.numel() * out.element_size() == SPEC.bytes_moved(small)   # reads and writes exactly that


def test_benchmarks_cover_each_op_against_copy_and_eager():
    names = {b.name for b in SPEC.benchmarks}
    for op in ("softmax", "rmsnorm_fwd", "layernorm_fwd"):
        for n in (4096, 8192, 16384):
            assert {f"{op}-bf16-4096x{n}-copy", f"{op}-bf16-4096x{n}-eager"} <= names
    assert {"rmsnorm_bwd-bf16-4096x8192-copy", "rmsnorm_bwd-bf16-4096x8192-eager"} <= names
    for b in SPEC.benchmarks:
        assert b.params["dtype"] == "bf16"
        if b.baseline == "copy":
            assert b.tiers[-1].fraction == 1.0 and b.tiers[-1].min_ratio == (0.75 if b.entry == "rmsnorm_bwd" else 0.85)
        if b.baseline in ("compiled", "F.rms_norm"):
            assert b.points == 0 and b.tiers[0].min_ratio == 0.0, "informational benchmarks"
    assert {"copy", "eager", "compiled", "F.rms_norm"} <= {b.baseline for b in SPEC.benchmarks}


LIBRARY_KERNELS = [
    "void at::native::(anonymous namespace)::cunn_SoftMaxForwardSmem<8, c10::BFloat16, float, c10::BFloat16, "
    "at::native::(anonymous namespace)::SoftMaxForwardEpilogue>(c10::BFloat16*, c10::BFloat16 const*, int)",
    "void at::native::(anonymous namespace)::softmax_warp_forward<c10::BFloat16, c10::BFloat16, float, 10, false, false>",
    "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::BFloat16, float, false>(int, float, ...)",
    "void at::native::(anonymous namespace)::RowwiseMomentsCUDAKernel<float, float>(long, float, float const*, ...)",
    "void at::native::(anonymous namespace)::LayerNormForwardCUDAKernel<float, float>(long, float const*, ...)",
    "triton_per_fused__softmax_0", "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0",
]
ALLOWED_KERNELS = [
    "softmax_kernel", "rmsnorm_fwd_kernel", "layernorm_fwd_kernel", "rmsnorm_bwd_kernel",
    "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<float, "
    "at::native::sum_functor<float, float, float>::operator()(at::TensorIterator&)::{lambda(float, float)#1}>, "
    "unsigned int, float, 4, 4> >(at::native::ReduceOp<float, ...>)",
    "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)",
    "Memcpy DtoD (Device -> Device)", "Memset (Device)",
]


def test_forbidden_kernel_patterns_hit_library_kernels_only():
    import re

    def hit(name):
        return [f for f in SPEC.forbidden_kernels if re.search(f, name, re.I)]
    for k in LIBRARY_KERNELS:
        assert hit(k), f"not forbidden: {k}"
    for k in ALLOWED_KERNELS:
        assert not hit(k), f"{k} is forbidden by {hit(k)}"


# ---- the solutions ------------------------------------------------------------------------------------

def test_solutions_pass_every_cpu_check(solutions):
    r = solutions
    assert r.tier == "cpu"
    assert not [c for c in r.checks if c.status == "fail"], describe(r)
    assert r.passed and r.env["worker_restarts"] == 0
    assert r.max_score == len(CPU_CASES) * SPEC.correctness_points == r.score


def test_solutions_plan(solutions):
    names = [c.name for c in solutions.checks]
    expected = ["files"]
    for e in ENTRIES:
        expected += [f"{e}[audit]"] + [f"{e}[{c.name}]" for c in CPU_CASES if c.entry == e]
    expected += [f"speed[{b.name}]" for b in SPEC.benchmarks]
    assert names == expected


@pytest.mark.parametrize("case", [f"{c.entry}[{c.name}]" for c in CPU_CASES])
def test_solutions_case_is_well_inside_tolerance(solutions, case):
    c = check(solutions, case)
    assert c.status == "pass" and c.message.startswith("2 trial(s)"), c.message
    fp32 = "[fp32" in case or "-fp32-" in case
    assert c.details["rel_err"] < (1e-6 if fp32 else 1e-3), c.details


def test_solutions_audit_sees_no_forbidden_op(solutions):
    for e in ENTRIES:
        c = check(solutions, f"{e}[audit]")
        assert c.status == "pass" and "no forbidden op" in c.message, c.message


def test_solutions_speed_is_not_graded_without_gpu(solutions):
    speed = [c for c in solutions.checks if c.group == "speed"]
    assert len(speed) == len(SPEC.benchmarks)
    assert all(c.status == "skip" and c.max_points == 0 and "not graded: no GPU" in c.message for c in speed)


COMPILE_SCRIPT = textwrap.dedent('''
    import importlib.util, sys
    import triton
    from triton.backends.compiler import GPUTarget
    spec = importlib.util.spec_from_file_location("rowwise_sm90", sys.argv[1])
    R = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(R)
    rows = dict(n_cols="i32", stride_x_row="i32", stride_y_row="i32")
    sigs = {
        "softmax_kernel": dict(x_ptr="*D", y_ptr="*D", **rows),
        "rmsnorm_fwd_kernel": dict(x_ptr="*D", w_ptr="*D", y_ptr="*D", **rows, eps="fp32"),
        "layernorm_fwd_kernel": dict(x_ptr="*D", w_ptr="*D", b_ptr="*D", y_ptr="*D", **rows, eps="fp32"),
        "rmsnorm_bwd_kernel": dict(dy_ptr="*D", x_ptr="*D", w_ptr="*D", dx_ptr="*D", dw_partial_ptr="*fp32",
                                   n_rows="i32", n_cols="i32", rows_per_program="i32", stride_dy_row="i32",
                                   stride_x_row="i32", stride_dx_row="i32", eps="fp32"),
    }
    for name, sig in sigs.items():
        for dt, n in (("bf16", 8192), ("bf16", 50257), ("fp32", 16384)):
            if name == "rmsnorm_bwd_kernel":
                block, warps, fits = R.row_config(n, values_per_thread=8, max_warps=32)
            else:
                block, warps, fits = R.row_config(n)
            s = {k: v.replace("D", dt) for k, v in sig.items()}
            s.update(BLOCK_SIZE="constexpr", ROW_FITS="constexpr")
            src = triton.compiler.ASTSource(fn=getattr(R, name), signature=s,
                                            constexprs={"BLOCK_SIZE": block, "ROW_FITS": fits})
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
            assert k.asm.get("cubin"), name
            print(name, dt, n, "ok")
''')


def test_solution_kernels_compile_for_sm90():
    """The CPU tier runs kernels in the interpreter, which never compiles them: compile both paths of each
    kernel for an H100 (Triton's bundled ptxas; no GPU needed), so type errors that only the compiler sees
    (a loop-carried scalar whose type changes, an int64 loop bound) show up here and not on the GPU."""
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        import triton.backends.nvidia  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"triton has no NVIDIA backend here: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(SOLUTION_FILE)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count(" ok") == 12


# ---- the skeleton -------------------------------------------------------------------------------------

def test_skeleton_fails_every_check_with_its_todo(skeleton):
    r = skeleton
    graded_checks = [c for c in r.checks if c.group in ("audit", "correctness")]
    assert len(graded_checks) == len(ENTRIES) + len(CPU_CASES)
    for c in graded_checks:
        assert c.status == "fail" and c.points == 0, f"{c.name}: {c.status}: {c.message}"
        assert "NotImplementedError" in c.message and "lab03" in c.message, f"{c.name}: {c.message}"
        assert KERNELS[c.entry] in c.message, f"{c.name} does not name the kernel to write: {c.message}"
        assert "Traceback" not in c.message
    assert check(r, "files").status == "pass"
    assert r.env["worker_restarts"] == 0 and r.score == 0 and not r.passed


def test_skeleton_imports_without_a_gpu_and_keeps_the_given_parts():
    """The skeleton imports, its helpers work, and each wrapper reaches its NotImplementedError (not an
    earlier error) in this very process, interpreter or not."""
    from grader.loader import import_file
    env_before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        mod = import_file(REPO_ROOT / SPEC.path / "rowwise.py", REPO_ROOT / SPEC.path)
    finally:
        if env_before is None:
            os.environ.pop("TRITON_INTERPRET")
        else:
            os.environ["TRITON_INTERPRET"] = env_before
    assert mod.row_config(37) == (64, 4, True)
    assert mod.row_config(4097)[2] is False
    x, w = torch.randn(3, 37), torch.randn(37)
    for name, args in (("softmax", (x,)), ("rmsnorm_fwd", (x, w)), ("layernorm_fwd", (x, w, w)),
                       ("rmsnorm_bwd", (x, x, w))):
        with pytest.raises(NotImplementedError, match=f"lab03: {KERNELS[name]}"):
            getattr(mod, name)(*args)


# ---- known-bad submissions ----------------------------------------------------------------------------

def grade_exploit(name, *only):
    from grader.runner import grade
    r = grade(LAB, exploit_dir(LAB, name), cpu=True, only=list(only))
    assert r.tier == "cpu"
    return r


def test_every_exploit_folder_is_complete():
    root = exploit_dir(LAB, ".")
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert set(names) >= {"calls_torch", "drops_last_block", "wrong_mask", "cached_output", "dw_not_reduced",
                          "half_precision"}
    for n in names:
        readme = (root / n / "README.md").read_text().strip().splitlines()
        assert len(readme) == 2 and "Caught" in readme[1], f"{n}/README.md: {readme}"
        src = (root / n / "rowwise.py").read_text()
        assert src.startswith('"""KNOWN-BAD SUBMISSION')
        compile(src, str(root / n / "rowwise.py"), "exec")


def test_calls_torch_fails_the_audit_and_scores_nothing():
    r = grade_exploit("calls_torch", "[audit]", "fp32-5x37", "fp16-4x1000")
    found = {"softmax": "aten::_softmax", "rmsnorm_fwd": "aten::rms_norm", "layernorm_fwd": "aten::layer_norm",
             "rmsnorm_bwd": "aten::rms_norm"}
    for e in ENTRIES:
        audit = check(r, f"{e}[audit]")
        assert_rejected(audit, "your own kernel")
        # Either the op is blocked in the student's process (spec.blocked_ops) or the audit names it.
        assert "is not allowed in this lab" in audit.message or found[e] in audit.message, audit.message
        for case in ("fp32-5x37", "fp16-4x1000"):
            c = check(r, f"{e}[{case}]")
            assert c.status == "fail" and c.points == 0 and c.max_points == 1, c.message
    assert r.score == 0 and not r.passed


def test_drops_last_block_passes_one_block_rows_fails_wide_ones():
    r = grade_exploit("drops_last_block", "fp32-4x1000", "x4097")
    for e in ENTRIES:
        assert check(r, f"{e}[fp32-4x1000]").status == "pass"     # fits one block: no loop, no bug
        for dt in ("fp32", "fp16"):
            assert_rejected(check(r, f"{e}[{dt}-6x4097]"), "elements wrong")
    assert "[0, 4096]" in check(r, "softmax[fp16-6x4097]").message, "the dropped block is column 4096"


def test_wrong_mask_passes_width_one_fails_ragged_widths():
    r = grade_exploit("wrong_mask", "-3x1]", "-3x2]", "fp32-5x37", "fp16-2x3x96", "fp32-7x300-padded")
    for e in ENTRIES:
        one = "fp32-3x2" if e == "rmsnorm_bwd" else "fp32-3x1"
        assert check(r, f"{e}[{one}]").status == "pass"            # BLOCK_SIZE == n_cols: nothing masked
        for case in ("fp32-5x37", "fp16-2x3x96", "fp32-7x300-padded"):
            assert_rejected(check(r, f"{e}[{case}]"), "elements wrong")


def test_cached_output_is_caught_by_fresh_inputs():
    r = grade_exploit("cached_output", "fp32-5x37", "fp16-4x1000")
    for e in ENTRIES:
        for case in ("fp32-5x37", "fp16-4x1000"):
            assert_rejected(check(r, f"{e}[{case}]"), "elements wrong")


def test_replays_timed_inputs_passes_every_correctness_trial():
    # Correctness checks and the audit cannot see the replay (each trial brings a new tensor); timing can.
    r = grade_exploit("replays_timed_inputs", "softmax")
    checks = [c for c in r.checks if c.entry == "softmax" and c.group in ("correctness", "audit")]
    assert checks and all(c.status == "pass" for c in checks), [(c.name, c.message) for c in checks if c.status != "pass"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (GPU-tier test: run on the course GPU, H100 or H200)")
def test_replays_timed_inputs_gets_no_speed_credit():
    # Its kernel is 4x slower than a copy of the bytes; replays would have been timed as one clone.
    from grader.runner import grade
    bench = "speed[softmax-bf16-4096x8192-copy]"
    r = grade(LAB, exploit_dir(LAB, "replays_timed_inputs"), cpu=False, only=[bench])
    c = check(r, bench)
    assert c.points < c.max_points, c.message


def test_batch_then_skip_passes_every_correctness_trial():
    r = grade_exploit("batch_then_skip", "softmax")
    checks = [c for c in r.checks if c.entry == "softmax" and c.group in ("correctness", "audit")]
    assert checks and all(c.status == "pass" for c in checks), [(c.name, c.message) for c in checks if c.status != "pass"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (GPU-tier test: run on the course GPU, H100 or H200)")
def test_batch_then_skip_is_scored_on_batch_means():
    # One call per batch computes the batch (4x slow kernel), nine hand out clones: scored on batch means.
    from grader.runner import grade
    bench = "speed[softmax-bf16-4096x8192-copy]"
    r = grade(LAB, exploit_dir(LAB, "batch_then_skip"), cpu=False, only=[bench])
    c = check(r, bench)
    assert c.points < c.max_points and "batch means" in c.message, c.message


def test_dw_not_reduced_fails_backward_only():
    r = grade_exploit("dw_not_reduced", "fp32-5x37", "fp16-6x4097")
    for case in ("fp32-5x37", "fp16-6x4097"):
        assert_rejected(check(r, f"rmsnorm_bwd[{case}]"), "output 1:", "elements wrong")
        for e in ("softmax", "rmsnorm_fwd", "layernorm_fwd"):
            assert check(r, f"{e}[{case}]").status == "pass"


def test_half_precision_fails_fp32_passes_fp16():
    r = grade_exploit("half_precision", "fp32-4x1000", "fp16-4x1000")
    for e in ENTRIES:
        assert_rejected(check(r, f"{e}[fp32-4x1000]"), "elements wrong", "tolerance 1e-05")
        assert check(r, f"{e}[fp16-4x1000]").status == "pass"
