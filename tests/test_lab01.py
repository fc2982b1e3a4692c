"""Lab 01 (the GPU model) on the CPU tier: the spec is sound, the solutions pass, the skeleton fails cleanly,
every known-bad submission in tests/adversarial/lab01/ is rejected for the right reason, the given files
(launcher, toy step, Transformer block, profile target) work, and the solution kernels compile for sm_90
(nvcc for the .cu file, Triton's compiler for the fused step: the interpreter never compiles it).

Full solution and skeleton runs are graded once per session (the `graded` fixture in conftest.py); each
exploit grades only the checks it needs (`only=`).
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from grader import REPO_ROOT, cuda
from grader.inputs import make
from grader.labs import get
from grader.loader import import_file
from tests.conftest import check, describe, exploit_dir, requires_cuda

LAB = "lab01"
SPEC = get(LAB)
M = importlib.import_module("grader.labs.lab01_gpu_model")
LAB_DIR = REPO_ROOT / SPEC.path
SOL_DIR = REPO_ROOT / "solutions" / SPEC.path
CUDA_ENTRIES = [n for n, e in SPEC.entries.items() if e.kind == "cuda"]
PY_ENTRIES = [n for n, e in SPEC.entries.items() if e.kind != "cuda"]
CPU_CASES = [c for c in SPEC.all_cases(0) if "cpu" in c.tiers]
if str(LAB_DIR) not in sys.path:
    sys.path.insert(0, str(LAB_DIR))          # the lab's given modules (toy_step, transformer_block, ...)


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


def load_solution(name):
    return import_file(SOL_DIR / name, LAB_DIR)


# ---- the spec -----------------------------------------------------------------------------------------

def test_cases_cover_tails_ragged_widths_and_two_calls():
    cases = SPEC.all_cases(0)
    copy_n = {c.params["n"] for c in cases if c.entry == "copy_vectorized"}
    reduce_n = {c.params["n"] for c in cases if c.entry == "reduce_sum_shfl"}
    for sizes in (copy_n, reduce_n):
        assert {n % 4 for n in sizes} == {0, 1, 2, 3}, "every length of the float4 tail"
        assert {1, 2, 1 << 26} <= sizes and any(n < 32 and n % 4 for n in sizes) and any(n > 32 for n in sizes)
    for entry in CUDA_ENTRIES:
        mine = [c for c in cases if c.entry == entry]
        assert mine and all(c.tiers == ("gpu",) for c in mine), "CUDA kernels run on the GPU tier only"
    step_cpu = [c.params for c in CPU_CASES if c.entry == "fused_step"]
    dims = {p["dim"] for p in step_cpu}
    assert {1, 37, 100, 256, 1000} <= dims and {p["rows"] for p in step_cpu} >= {1, 64}
    assert any(p["layers"] == 1 for p in step_cpu) and any(p["calls"] == 2 for p in step_cpu)
    assert all(p["dtype"] == "fp32" for p in step_cpu)
    roof = [c.params for c in CPU_CASES if c.entry == "roofline_analysis"]
    assert {p["machine"] for p in roof} == set(M.MACHINES) and any(p["n"] == 1 for p in roof)
    gpu_step = [c.params for c in cases if c.entry == "fused_step" and "gpu" in c.tiers]
    assert max(p["dim"] for p in gpu_step) >= 2048 and max(p["layers"] for p in gpu_step) >= 8


def test_hidden_cases_change_with_the_seed():
    a, b = SPEC.hidden_cases(1), SPEC.hidden_cases(2)
    assert {c.entry for c in a} == set(SPEC.entries)
    assert [c.name for c in a] != [c.name for c in b]


def test_inputs_are_deterministic_and_not_trivial():
    for p in (M.vec("copy_vectorized", 1001), M.step(5, 100, 3, calls=2), M.roof("a100", 64)):
        x, y = make(SPEC, p, 42, "cpu"), make(SPEC, p, 42, "cpu")
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]) and torch.isfinite(x[k]).all(), k
    s = make(SPEC, M.step(5, 100, 3, calls=2), 0, "cpu")
    assert set(s) == {"x", "h", "w", "b", "x2", "h2", "w2", "b2"}
    assert not torch.equal(s["w"], s["w2"]), "the second call's weights differ too"


@pytest.mark.parametrize("seed", range(4))
def test_reduce_inputs_keep_the_sum_well_conditioned(seed):
    """A relative tolerance on a sum means something only if the sum does not cancel."""
    x = make(SPEC, M.vec("reduce_sum_shfl", 100_003), seed, "cpu")["x"].double()
    assert x.abs().sum() / x.sum().abs() < 5
    assert x.std() > 0.2


@pytest.mark.parametrize("machine", sorted(M.MACHINES))
def test_roofline_tables_cross_every_boundary(machine):
    p = M.roof(machine, 256)
    inputs = make(SPEC, p, 3, "cpu")
    floor, eff, bound = SPEC.reference(inputs, p)
    counts = torch.bincount(bound, minlength=3)
    assert (counts >= 20).all(), f"each class must be well represented: {counts.tolist()}"
    assert (inputs["flops"] == 0).sum() >= 10, "ops with no FLOPs (copies)"
    assert (eff > 1).any() and (eff < 0.1).any()
    ridge = p["peak_tflops"] * 1e3 / p["peak_gbps"]
    ai = inputs["flops"] / inputs["nbytes"]
    near = ((ai > ridge / 3) & (ai < ridge * 3)).sum()
    assert near >= 10, "intensities near the ridge point catch a ridge computed in the wrong units"


def test_roofline_reference_on_hand_computed_ops():
    """H100 datasheet: 1 GB copy -> 1e9 / 3.35e12 s = 298.5 us, memory-bound; an 8192^3 bf16 matmul ->
    1.1e12 FLOP / 989e12 = 1111.7 us, compute-bound; a 64 KB elementwise op -> 0.02 us < 4 us of launch."""
    p = M.roof("h100", 3)
    mm = 2.0 * 8192 ** 3
    inputs = {"time_us": torch.tensor([350.0, 1500.0, 5.0], dtype=torch.float64),
              "flops": torch.tensor([0.0, mm, 16384.0], dtype=torch.float64),
              "nbytes": torch.tensor([1e9, 3 * 8192 ** 2 * 2.0, 131072.0], dtype=torch.float64),
              "launches": torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)}
    floor, eff, bound = SPEC.reference(inputs, p)
    torch.testing.assert_close(floor, torch.tensor([1e9 / 3.35e12 * 1e6, mm / 989e12 * 1e6, 131072 / 3.35e12 * 1e6],
                                                   dtype=torch.float64))
    assert bound.tolist() == [1, 2, 0]
    assert abs(eff[0].item() - 298.507 / 350) < 1e-4
    sol = load_solution("roofline.py")
    for got, want in zip(sol.roofline_analysis(*(inputs[k] for k in M.ROOFLINE_INPUTS), peak_tflops=989.0,
                                               peak_gbps=3350.0, overhead_us=4.0), (floor, eff, bound)):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_step_reference_is_the_given_eager_step_in_fp64_and_the_baseline_agrees():
    p = M.step(6, 37, 3)
    inputs = make(SPEC, p, 5, "cpu")
    ref = SPEC.reference(inputs, p)
    assert all(r.dtype == torch.float64 and r.shape == (6, 37) for r in ref)
    base = SPEC.baselines["eager"](inputs, p)
    for b, r in zip(base, ref):
        torch.testing.assert_close(b.double(), r, rtol=1e-5, atol=1e-5)
    two = M.step(6, 37, 3, calls=2)
    both = SPEC.reference(make(SPEC, two, 5, "cpu"), two)
    assert len(both) == 4 == len(SPEC.outputs(two))
    assert not torch.equal(both[0], both[2])


def test_copy_and_sum_references_and_baselines():
    p = M.vec("copy_vectorized", 1001)
    inputs = make(SPEC, p, 1, "cpu")
    assert torch.equal(SPEC.reference(inputs, p), inputs["x"])
    assert torch.equal(SPEC.baselines["torch_copy"](inputs, p), inputs["x"])
    q = M.vec("reduce_sum_shfl", 1001)
    inputs = make(SPEC, q, 1, "cpu")
    ref = SPEC.reference(inputs, q)
    assert ref.shape == () and ref.dtype == torch.float64
    assert abs(SPEC.baselines["torch_sum"](inputs, q).item() - ref.item()) < 1e-5 * abs(ref.item())


def test_bytes_flops_and_tolerances():
    assert M.bytes_moved(M.vec("copy_vectorized", 1 << 26)) == 2 * 4 * (1 << 26)
    assert M.bytes_moved(M.vec("reduce_sum_shfl", 1 << 26)) == 4 * (1 << 26)
    assert M.bytes_moved(M.step(64, 256, 4)) == 4 * (4 * 64 * 256 + 2 * 4 * 256)
    assert M.flops(M.vec("copy_vectorized", 10)) == 0 and M.flops(M.vec("reduce_sum_shfl", 10)) == 10
    assert SPEC.tolerances["exact"].rtol == SPEC.tolerances["exact"].atol_rms == 0
    assert [t for _, _, t in SPEC.outputs(M.roof("h100", 5))[2:]] == ["exact"]


def test_benchmarks_and_tiers():
    by_name = {b.name: b for b in SPEC.benchmarks}
    assert set(by_name) == {"copy_vectorized-fp32-64Mi", "copy_vectorized-fp32-32Mi+3", "reduce_sum_shfl-fp32-64Mi",
                            "reduce_sum_shfl-fp32-32Mi+3", "reduce_sum_smem-fp32-64Mi", "fused_step-fp32-64x256x4"}
    full = {b.name: b.tiers[-1].min_ratio for b in SPEC.benchmarks if b.points}
    assert full == {"copy_vectorized-fp32-64Mi": 0.85, "copy_vectorized-fp32-32Mi+3": 0.85,
                    "reduce_sum_shfl-fp32-64Mi": 0.9, "reduce_sum_shfl-fp32-32Mi+3": 0.9,
                    "fused_step-fp32-64x256x4": 3.0}
    assert by_name["reduce_sum_smem-fp32-64Mi"].points == 0
    assert by_name["fused_step-fp32-64x256x4"].baseline == "eager" and by_name["fused_step-fp32-64x256x4"].points == 2
    assert {b.baseline for b in SPEC.benchmarks if b.entry == "copy_vectorized"} == {"torch_copy"}
    assert by_name["copy_vectorized-fp32-32Mi+3"].params["n"] % 4 == 3


INDUCTOR_KERNELS = ["triton_poi_fused_add_mul_rsqrt_sigmoid_tanh_0", "triton_per_fused_mean_sub_1",
                    "triton_red_fused_add_mean_2"]
OWN_KERNELS = ["fused_step_kernel", "copy_vectorized", "reduce_sum_shfl", "Memcpy DtoD (Device -> Device)",
               "void at::native::vectorized_elementwise_kernel<4, at::native::AUnaryFunctor<float, float, float, "
               "at::native::binary_internal::MulFunctor<float> >, std::array<char*, 2ul> >(int, ...)",
               "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float, "
               "float, float>, unsigned int, float, 4, 4> >(...)"]


def test_forbidden_patterns_hit_torch_compile_only():
    for k in INDUCTOR_KERNELS:
        assert any(re.search(f, k) for f in SPEC.forbidden_kernels), k
    for k in OWN_KERNELS:
        assert not any(re.search(f, k) for f in SPEC.forbidden_kernels), k
    for op in ("Torch-Compiled Region: 0/0", "TorchDynamo Cache Lookup"):
        assert any(re.search(f, op) for f in SPEC.forbidden_ops), op
    for op in ("aten::mean", "aten::copy_", "aten::sum", "aten::tanh"):
        assert not any(re.search(f, op) for f in SPEC.forbidden_ops), op
    assert not SPEC.blocked_ops, "every entry may use torch ops (a CUDA graph replays eager ops)"


# ---- the solutions ------------------------------------------------------------------------------------

def test_solutions_pass_every_cpu_check(solutions):
    r = solutions
    assert r.tier == "cpu"
    assert not [c for c in r.checks if c.status == "fail"], describe(r)
    assert r.passed and r.env["worker_restarts"] == 0
    assert r.max_score == r.score == len(CPU_CASES) * SPEC.correctness_points > 0


def test_solutions_plan(solutions):
    expected = ["files"] + [f"compile[{s}]" for s in SPEC.cuda_sources]
    expected += [f"{e}[implemented]" for e in CUDA_ENTRIES]
    for e in PY_ENTRIES:
        expected += [f"{e}[audit]"] + [f"{e}[{c.name}]" for c in CPU_CASES if c.entry == e]
    expected += [f"speed[{b.name}]" for b in SPEC.benchmarks]
    assert [c.name for c in solutions.checks] == expected


@pytest.mark.parametrize("case", [f"{c.entry}[{c.name}]" for c in CPU_CASES])
def test_solutions_case_is_well_inside_tolerance(solutions, case):
    c = check(solutions, case)
    assert c.status == "pass" and c.message.startswith("2 trial(s)"), c.message
    limit = 1e-6 if case.startswith("fused_step") else 1e-12      # fp32 kernel vs fp64; roofline: same formulas
    assert c.details["rel_err"] < limit, c.details


def test_solutions_cuda_checks_and_speed_skipped(solutions):
    for e in CUDA_ENTRIES:
        assert check(solutions, f"{e}[implemented]").status == "pass"
    c = check(solutions, "compile[gpu_kernels.cu]")
    assert c.status == ("pass" if cuda.nvcc_path() else "skip"), c.message
    speed = [c for c in solutions.checks if c.group == "speed"]
    assert len(speed) == len(SPEC.benchmarks)
    assert all(c.status == "skip" and c.max_points == 0 and "not graded: no GPU" in c.message for c in speed)


def test_solution_cuda_kernels_do_what_the_ladder_says():
    src = (SOL_DIR / "gpu_kernels.cu").read_text()
    skel = (LAB_DIR / "gpu_kernels.cu").read_text()
    for k in CUDA_ENTRIES:
        assert cuda.todo_message(src, SPEC.entries[k].symbol) is None
        assert "lab01" in (cuda.todo_message(skel, SPEC.entries[k].symbol) or ""), k
    for k in ("thread_coords", "copy_scalar", "reduce_sum_atomic"):         # given, identical in both
        assert cuda.kernel_body(src, k) == cuda.kernel_body(skel, k) and cuda.todo_message(skel, k) is None
    assert "float4" in cuda.kernel_body(src, "copy_vectorized")
    assert "__syncthreads" in cuda.kernel_body(src, "reduce_sum_smem")
    assert "__shfl_down_sync" in src and "float4" in cuda.kernel_body(src, "reduce_sum_shfl")
    assert "#include" not in src and "#include" not in skel, "NVRTC compiles the file without system headers"


@pytest.mark.skipif(cuda.nvcc_path() is None, reason="nvcc not installed")
@pytest.mark.parametrize("folder", [LAB_DIR, SOL_DIR], ids=["skeleton", "solution"])
def test_cuda_file_compiles_for_sm90(folder):
    ok, out = cuda.nvcc_compile(folder / "gpu_kernels.cu")
    assert ok, out


COMPILE_SCRIPT = textwrap.dedent('''
    import importlib.util, sys
    sys.path.insert(0, sys.argv[2])
    import triton
    from triton.backends.compiler import GPUTarget
    spec = importlib.util.spec_from_file_location("fused_step_sm90", sys.argv[1])
    F = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(F)
    sig = {k: "*fp32" for k in ("x_ptr", "h_ptr", "w_ptr", "b_ptr", "x_out_ptr", "h_out_ptr")}
    sig.update({k: "i32" for k in ("n_layers", "dim", "stride_x", "stride_h", "stride_w", "stride_b",
                                   "stride_x_out", "stride_h_out")})
    sig.update(eps="fp32", DECAY="constexpr", BLOCK_D="constexpr")
    for block in (1, 256, 4096):
        src = triton.compiler.ASTSource(fn=F.fused_step_kernel, signature=sig,
                                        constexprs={"DECAY": F.DECAY, "BLOCK_D": block})
        k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": min(max(block // 256, 1), 8)})
        assert k.asm.get("cubin")
        print("fused_step_kernel", block, "ok")
''')


def test_solution_triton_kernel_compiles_for_sm90():
    """The CPU tier runs the fused kernel in the interpreter, which never compiles it: compile it for an H100
    (Triton's bundled ptxas, no GPU needed) at the smallest, the lab's and the widest block."""
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        import triton.backends.nvidia  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"triton has no NVIDIA backend here: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(SOL_DIR / "fused_step.py"), str(LAB_DIR)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count(" ok") == 3


# ---- the skeleton -------------------------------------------------------------------------------------

def test_skeleton_fails_every_check_with_its_todo(skeleton):
    r = skeleton
    graded_checks = [c for c in r.checks if c.group in ("implemented", "audit", "correctness")]
    assert len(graded_checks) == len(CUDA_ENTRIES) + len(PY_ENTRIES) + len(CPU_CASES)
    for c in graded_checks:
        assert c.status == "fail" and c.points == 0, f"{c.name}: {c.status}: {c.message}"
        assert "NotImplementedError: lab01: " in c.message and "Traceback" not in c.message, c.message
    assert "copy_vectorized" in check(r, "copy_vectorized[implemented]").message
    assert "fused_step" in check(r, "fused_step[fp32-64x256x4]").message
    assert check(r, "files").status == "pass"
    assert check(r, "compile[gpu_kernels.cu]").status == ("pass" if cuda.nvcc_path() else "skip")
    assert r.env["worker_restarts"] == 0 and r.score == 0 and not r.passed


def test_skeleton_wrappers_reach_their_todo():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    step_mod = import_file(LAB_DIR / "fused_step.py", LAB_DIR)
    roof_mod = import_file(LAB_DIR / "roofline.py", LAB_DIR)
    x = torch.randn(3, 8)
    with pytest.raises(NotImplementedError, match="lab01: fused_step"):
        step_mod.fused_step(x, x, torch.randn(2, 8), torch.randn(2, 8))
    with pytest.raises(ValueError, match="expected x, h"):
        step_mod.fused_step(x, x, torch.randn(2, 9), torch.randn(2, 9))
    t = torch.ones(2, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="lab01: roofline_analysis"):
        roof_mod.roofline_analysis(t, t, t, t, peak_tflops=1.0, peak_gbps=1.0, overhead_us=1.0)


# ---- the given files ----------------------------------------------------------------------------------

def test_launcher_checks_inputs_before_touching_cuda():
    import cuda_launch
    assert cuda_launch.THREADS == 256 and "#define THREADS 256" in (LAB_DIR / "gpu_kernels.cu").read_text()
    with pytest.raises(TypeError, match="fp32"):
        cuda_launch._check(torch.zeros(4, dtype=torch.float16), "copy")
    with pytest.raises(ValueError, match="CUDA tensor"):
        cuda_launch._check(torch.zeros(4), "copy")
    with pytest.raises(ValueError, match="unknown copy kernel"):
        cuda_launch.copy(torch.zeros(4), kernel="reduce_sum_shfl")


def test_eager_step_launches_16_ops_per_layer():
    from torch.profiler import ProfilerActivity, profile

    from toy_step import StepShape, eager_step
    s = StepShape(rows=4, dim=8, layers=3)
    args = (torch.randn(4, 8), torch.randn(4, 8), torch.randn(3, 8), torch.randn(3, 8))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        eager_step(*args)
    ops = [e for e in prof.events() if e.name.startswith("aten::") and e.name != "aten::select"
           and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
    assert len(ops) == s.launches == 48, sorted(e.name for e in ops)


def test_transformer_block_runs_annotated_and_costs_add_up():
    from torch.profiler import ProfilerActivity, profile

    from transformer_block import SUBLAYERS, BlockConfig, TransformerBlock, block_costs, sublayer_costs
    cfg = BlockConfig(dim=64, n_heads=4)
    block = TransformerBlock(cfg)
    x = torch.randn(2, 5, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert set(SUBLAYERS) <= {e.name for e in prof.events()}
    costs = sublayer_costs(cfg, 2, 5, 4)
    assert costs["fc1"][0] == 2 * 10 * 64 * 256 + 10 * 256
    assert costs["qkv"][1] == 4 * (10 * 64 + 64 * 192 + 192 + 10 * 192)
    assert block_costs(cfg, 2, 5, 4) == (sum(f for f, _ in costs.values()), sum(b for _, b in costs.values()))
    with pytest.raises(ValueError):
        BlockConfig(dim=65, n_heads=4)


def test_profile_target_needs_cuda_and_says_so():
    if torch.cuda.is_available():
        pytest.skip("this checks the CPU-only message")
    proc = subprocess.run([sys.executable, str(LAB_DIR / "profile_target.py"), "copy"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "needs CUDA" in proc.stderr


# ---- known-bad submissions ----------------------------------------------------------------------------

def grade_exploit(name, *only, cpu=True):
    from grader.runner import grade
    r = grade(LAB, exploit_dir(LAB, name), cpu=cpu, only=list(only))
    assert r.tier == ("cpu" if cpu else "gpu")
    return r


EXPLOITS = {"stale_graph_inputs": "fused_step.py", "static_output_buffer": "fused_step.py",
            "wrong_mask": "fused_step.py", "torch_compile": "fused_step.py", "half_precision": "fused_step.py",
            "roofline_units": "roofline.py", "drops_tail": "gpu_kernels.cu"}


def test_every_exploit_folder_is_complete():
    root = exploit_dir(LAB, ".")
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == sorted(EXPLOITS)
    for name, f in EXPLOITS.items():
        readme = (root / name / "README.md").read_text().strip().splitlines()
        assert len(readme) == 2 and "GRADING_THREATS.md row" in readme[0] and "Caught" in readme[1], name
        src = (root / name / f).read_text()
        assert "KNOWN-BAD SUBMISSION" in src.splitlines()[0]
        if f.endswith(".py"):
            compile(src, str(root / name / f), "exec")


def test_stale_graph_inputs_fail_fresh_inputs_and_the_second_call():
    r = grade_exploit("stale_graph_inputs", "fused_step[fp32-9x300x3-twice]", "fused_step[fp32-64x256x4]")
    assert_rejected(check(r, "fused_step[fp32-9x300x3-twice]"), "trial 1/2", "output 2:", "copy all four inputs")
    assert_rejected(check(r, "fused_step[fp32-64x256x4]"), "elements wrong")   # the audit's inputs replayed


def test_static_output_buffer_passes_single_calls_fails_twice():
    r = grade_exploit("static_output_buffer", "fused_step[fp32-5x100x3]", "fused_step[fp32-64x256x4-twice]")
    assert check(r, "fused_step[fp32-5x100x3]").status == "pass"
    assert_rejected(check(r, "fused_step[fp32-64x256x4-twice]"), "output 0:", "return clones")


def test_wrong_mask_passes_powers_of_two_fails_ragged_widths():
    r = grade_exploit("wrong_mask", "fused_step[fp32-64x256x4]", "fused_step[fp32-5x100x3]",
                      "fused_step[fp32-33x37x2]")
    assert check(r, "fused_step[fp32-64x256x4]").status == "pass"
    for case in ("fp32-5x100x3", "fp32-33x37x2"):
        assert_rejected(check(r, f"fused_step[{case}]"), "elements wrong", "padded lanes")


def test_torch_compile_fails_the_audit_and_scores_nothing():
    r = grade_exploit("torch_compile", "fused_step[fp32-5x100x3]")
    assert_rejected(check(r, "fused_step[audit]"), "Torch-Compiled Region")
    c = check(r, "fused_step[fp32-5x100x3]")
    assert c.points == 0 and c.max_points == 1 and "kernel audit" in c.message, c.message


def test_half_precision_fails_the_fp32_tolerance():
    r = grade_exploit("half_precision", "fused_step[fp32-5x100x3]")
    assert_rejected(check(r, "fused_step[fp32-5x100x3]"), "elements wrong", "tolerance 1e-05", "fp16/bf16")


def test_roofline_units_fail_every_table():
    r = grade_exploit("roofline_units", "roofline_analysis[h100-256ops]", "roofline_analysis[cpu-256ops]")
    for case in ("h100-256ops", "cpu-256ops"):
        assert_rejected(check(r, f"roofline_analysis[{case}]"), "output 0:", "peak_gbps * 1e9")


def test_drops_tail_compiles_and_passes_what_the_cpu_tier_can_see():
    """Row 15: the CPU tier only compiles CUDA C and looks for TODOs, so a kernel that drops its tail passes
    there; the GPU tier catches it (test below)."""
    r = grade_exploit("drops_tail", "[implemented]")
    for e in CUDA_ENTRIES:
        assert check(r, f"{e}[implemented]").status == "pass"


@requires_cuda
def test_drops_tail_fails_ragged_lengths_on_gpu():
    r = grade_exploit("drops_tail", "copy_vectorized[fp32-n5]", "copy_vectorized[fp32-n67108864]",
                      "reduce_sum_shfl[fp32-n5]", "reduce_sum_shfl[fp32-n67108864]", cpu=False)
    assert_rejected(check(r, "copy_vectorized[fp32-n5]"), "never written")
    assert check(r, "copy_vectorized[fp32-n67108864]").status == "pass"
    assert_rejected(check(r, "reduce_sum_shfl[fp32-n5]"), "elements wrong")
    assert check(r, "reduce_sum_shfl[fp32-n67108864]").status == "pass"


@requires_cuda
def test_stale_graph_inputs_fail_on_gpu():
    """On the GPU the graph always reads the addresses of the first call it saw (freed since, maybe reused): one
    of the two live input sets of a -twice case may sit there by the allocator's luck, never both."""
    r = grade_exploit("stale_graph_inputs", "fused_step[fp32-64x256x4-twice]", cpu=False)
    assert_rejected(check(r, "fused_step[fp32-64x256x4-twice]"), "elements wrong")
