"""Lab 04 (FlashAttention-2 in Triton) on the CPU tier: the spec is sound (cases, reference, tolerances,
audit patterns), the solution passes and compiles for sm_90, the skeleton fails cleanly, and every
known-bad submission in tests/adversarial/lab04/ is rejected for the right reason. GPU-tier tests at the
end run on a CUDA machine only.

Full solution and skeleton runs are graded once per session (the `graded` fixture in conftest.py); each
exploit grades only the checks it needs (`only=`).
"""

from __future__ import annotations

import importlib
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from grader import REPO_ROOT
from grader.compare import compare
from grader.inputs import make
from grader.labs import get
from grader.spec import DTYPES
from tests.conftest import check, describe, exploit_dir, requires_cuda

LAB = "lab04"
SPEC = get(LAB)
SPEC_MODULE = importlib.import_module("grader.labs.lab04_flash_attention")   # attn(), _name(), baselines
ENTRIES = ("attention_fwd", "attention_bwd")
CPU_CASES = [c for c in SPEC.all_cases(0) if "cpu" in c.tiers]
GPU_CASES = [c for c in SPEC.all_cases(0) if "gpu" in c.tiers]
SOLUTION_FILE = REPO_ROOT / "solutions" / SPEC.path / "flash_attention.py"
SKELETON_FILE = REPO_ROOT / SPEC.path / "flash_attention.py"
attn = SPEC_MODULE.attn


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

@pytest.mark.parametrize("entry", ENTRIES)
def test_cpu_cases_hit_every_path(entry):
    cases = [c.params for c in CPU_CASES if c.entry == entry]
    assert {p["dtype"] for p in cases} == {"fp32", "fp16"}, "the interpreter mishandles bf16"
    assert {True, False} == {p["causal"] for p in cases}
    ns = {p["N"] for p in cases}
    assert any(n < 32 for n in ns) and any(n % 16 for n in ns if n > 32), "N below one block (32 under the interpreter), ragged N"
    assert any(p.get("N_kv", p["N"]) != p["N"] for p in cases), "N_q != N_kv"
    assert len({p["D"] for p in cases}) >= 2
    assert all(p["B"] * p["H"] * max(p["N"], p.get("N_kv", 0)) <= 400 for p in cases), "keep the interpreter fast"
    if entry == "attention_fwd":
        assert 1 in ns and any(p.get("layout") == "bnhd" for p in cases)
    else:
        assert all(p["N"] >= 2 for p in cases), "with one key every gradient is exactly 0: no relative test"
        assert all(p.get("bwd") for p in cases)


@pytest.mark.parametrize("entry", ENTRIES)
def test_gpu_cases_cover_block_edges_dtypes_and_head_dims(entry):
    cases = [c.params for c in GPU_CASES if c.entry == entry]
    assert {"bf16", "fp16"} <= {p["dtype"] for p in cases}
    assert {64, 128} <= {p["D"] for p in cases}
    assert {127, 1000, 2048} <= {p["N"] for p in cases}
    assert {True, False} == {p["causal"] for p in cases}
    assert any(p.get("layout") == "bnhd" for p in cases) and any("N_kv" in p for p in cases)
    for c in [c for c in SPEC.all_cases(12345) if c.name.startswith("seeded")]:
        assert c.params["dtype"] in (("fp16",) if "cpu" in c.tiers else ("bf16",))


def test_inputs_are_deterministic_strided_and_not_trivial():
    p = attn(2, 3, 40, 32, True, "fp16", bwd=True, layout="bnhd")
    a, b = make(SPEC, p, 42, "cpu"), make(SPEC, p, 42, "cpu")
    assert a.keys() == {"q", "k", "v", "do"}
    for k in a:
        assert torch.equal(a[k], b[k]) and torch.isfinite(a[k]).all() and a[k].shape == (2, 3, 40, 32)
        assert not a[k].is_contiguous() and a[k].stride(1) == 32, "a (B, N, H, D) buffer seen as (B, H, N, D)"
    norms = a["q"].float().norm(dim=-1)
    assert norms.max() / norms.min() > 4, "per-row scales: score rows from flat to one-hot"
    assert make(SPEC, attn(1, 2, 8, 16, False, "fp32"), 0, "cpu").keys() == {"q", "k", "v"}


def _sdpa_fp64(inputs, causal):
    q, k, v = (inputs[n].double().detach().requires_grad_() for n in ("q", "k", "v"))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return o, (q, k, v)


@pytest.mark.parametrize("params", [attn(2, 3, 37, 32, True, "fp32", bwd=True), attn(1, 3, 20, 16, False, "fp16", bwd=True,
                                                                                      N_kv=45)])
def test_reference_agrees_with_torch_sdpa_and_autograd(params):
    inputs = make(SPEC, params, 7, "cpu")
    o, leaves = _sdpa_fp64(inputs, params["causal"])
    fwd = {k: v for k, v in params.items() if k != "bwd"}
    ref_o, ref_lse = SPEC.reference({k: inputs[k] for k in ("q", "k", "v")}, fwd)
    torch.testing.assert_close(ref_o, o.detach(), rtol=1e-10, atol=1e-12)
    q, k = inputs["q"].double(), inputs["k"].double()
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if params["causal"]:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(ref_lse, torch.logsumexp(s, -1), rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(o, leaves, inputs["do"].double())
    for got, want in zip(SPEC.reference(inputs, params), grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def _emulate(inputs, p, dt, p_dtype=None):
    """The kernel's roundings in plain PyTorch: P (and dS) rounded to the input dtype before their products,
    o rounded once and reused for delta; everything else fp32."""
    q, k, v = (inputs[n].float() for n in ("q", "k", "v"))
    scale = q.shape[-1] ** -0.5
    s = q @ k.transpose(-1, -2) * scale
    if p["causal"]:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    m = s.amax(-1, keepdim=True)
    e = torch.exp(s - m)
    o = ((e.to(p_dtype or dt).float() @ v) / e.sum(-1, keepdim=True)).to(dt)
    if not p.get("bwd"):
        return o, (m + e.sum(-1, keepdim=True).log()).squeeze(-1)
    do = inputs["do"].float()
    pm = e / e.sum(-1, keepdim=True)
    dp = do @ v.transpose(-1, -2)
    ds = (pm * (dp - (o.float() * do).sum(-1, keepdim=True))).to(dt).float()
    return ((ds @ k * scale).to(dt), (ds.transpose(-1, -2) @ q * scale).to(dt),
            (pm.to(dt).float().transpose(-1, -2) @ do).to(dt))


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("bwd", [False, True])
def test_tolerances_admit_flashattention_rounding(dtype, bwd):
    dt = DTYPES[dtype]
    for seed, causal in ((0, True), (1, False)):
        p = attn(1, 4, 512, 64, causal, dtype, bwd=bwd)
        inputs = make(SPEC, p, seed, "cpu")
        for out, ref, (_, name, *key) in zip(_emulate(inputs, p, dt), SPEC.reference(inputs, p), SPEC.outputs(p)):
            c = compare(out, ref, SPEC.tolerances[key[0] if key else name])
            assert c.ok, f"{dtype} {'bwd' if bwd else 'fwd'} seed {seed}: {c.message}"


def test_tolerances_reject_an_fp8_softmax():
    """Threat 12: P rounded to fp8 (e4m3) before P @ V in a bf16 case must fail the output check."""
    p = attn(1, 4, 512, 64, True, "bf16")
    inputs = make(SPEC, p, 3, "cpu")
    o, _ = _emulate(inputs, p, torch.bfloat16, p_dtype=torch.float8_e4m3fn)
    assert not compare(o, SPEC.reference(inputs, p)[0], SPEC.tolerances["bf16"]).ok


def test_gradients_have_their_own_tolerance_keys():
    assert "bf16-grad" not in DTYPES          # a tolerance key, not a dtype the grader has to know
    assert SPEC.outputs(attn(1, 1, 8, 16, True, "bf16", bwd=True))[0][1:] == ("bf16", "bf16-grad")
    assert [o[1:] for o in SPEC.outputs(attn(1, 1, 8, 16, True, "fp32", bwd=True))] == [("fp32", "fp32")] * 3
    assert [o[1] for o in SPEC.outputs(attn(1, 1, 8, 16, True, "bf16"))] == ["bf16", "fp32"]
    for name in ("fp16", "bf16"):
        assert SPEC.tolerances[name].atol_rms < SPEC.tolerances[f"{name}-grad"].atol_rms


def test_flops_bytes_and_benchmarks():
    fwd = attn(4, 16, 4096, 128, True, "bf16")
    assert SPEC.flops(fwd) == 4 * 4 * 16 * 4096**2 * 128 / 2
    assert SPEC.flops(dict(fwd, causal=False)) == 2 * SPEC.flops(fwd)
    assert SPEC.flops(dict(fwd, bwd=True)) == 3.5 * SPEC.flops(fwd)
    assert SPEC.bytes_moved(fwd) == 64 * (4 * 4096 * 128 * 2 + 4096 * 4)
    assert SPEC.compute_unit(fwd) == "tensor_bf16"
    by_name = {b.name: b for b in SPEC.benchmarks}
    assert len(by_name) == 4
    for b in SPEC.benchmarks:
        assert {k: b.params[k] for k in ("B", "H", "N", "D", "dtype")} == SPEC_MODULE.BENCH
    full = {b.name: b.tiers[-1].min_ratio for b in SPEC.benchmarks if b.points}
    assert full == {"fwd-causal-bf16-b4h16n4096d128": 1.0, "fwd-bf16-b4h16n4096d128": 0.9,
                    "fwd+bwd-causal-bf16-b4h16n4096d128": 0.7}
    info = by_name["fwd-causal-bf16-b4h16n4096d128-vs-cudnn"]
    assert info.points == 0 and info.baseline == "sdpa_cudnn" and info.tiers[0].min_ratio == 0.0
    assert by_name["fwd+bwd-causal-bf16-b4h16n4096d128"].entry == "attention_bwd"


LIBRARY_KERNELS = [
    "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>>",
    "void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<128, 64, 128, 8>>",
    "fmha_cutlassF_bf16_aligned_64x128_rf_sm80(PyTorchMemEffAttention::AttentionKernel<...>::Params)",
    "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1_cga1x1x1_kernel0_0",
    "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel",
    "nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_NTN", "ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_32x5_tn",
    "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn_align8>(...)",
]
OUR_KERNELS = ["_attn_fwd_kernel", "_attn_bwd_preprocess_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel",
               "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>, ...>",
               "Memset (Device)"]


def test_forbidden_kernel_patterns_hit_library_kernels_only():
    def hit(name):
        return [f for f in SPEC.forbidden_kernels if re.search(f, name, re.I)]
    for k in LIBRARY_KERNELS:
        assert hit(k), f"not forbidden: {k}"
    for k in OUR_KERNELS:
        assert not hit(k), f"{k} is forbidden by {hit(k)}"
    for op in ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention",
               "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_cudnn_attention",
               "aten::_flash_attention_forward", "aten::_flash_attention_backward",
               "aten::_efficient_attention_forward", "aten::bmm", "aten::matmul", "aten::mm", "aten::softmax",
               "aten::_softmax", "aten::logsumexp", "aten::einsum"):
        assert any(re.search(f, op) for f in SPEC.forbidden_ops), op
    for op in ("aten::empty", "aten::exp", "aten::sum", "aten::mul", "aten::detach", "aten::zero_"):
        assert not any(re.search(f, op) for f in SPEC.forbidden_ops), op


# ---- the solutions ------------------------------------------------------------------------------------

def test_solutions_pass_every_cpu_check(solutions):
    r = solutions
    assert r.tier == "cpu"
    assert not [c for c in r.checks if c.status == "fail"], describe(r)
    assert r.passed and r.env["worker_restarts"] == 0
    assert r.max_score == len(CPU_CASES) * SPEC.correctness_points == r.score


def test_solutions_plan(solutions):
    expected = ["files"]
    for e in ENTRIES:
        expected += [f"{e}[audit]"] + [f"{e}[{c.name}]" for c in CPU_CASES if c.entry == e]
    expected += [f"speed[{b.name}]" for b in SPEC.benchmarks]
    assert [c.name for c in solutions.checks] == expected


@pytest.mark.parametrize("case", [f"{c.entry}[{c.name}]" for c in CPU_CASES])
def test_solutions_case_is_well_inside_tolerance(solutions, case):
    c = check(solutions, case)
    assert c.status == "pass" and c.message.startswith("2 trial(s)"), c.message
    assert c.details["rel_err"] < (1e-5 if "[fp32" in case else 3e-3), c.details


def test_solutions_audit_and_speed_on_the_cpu_tier(solutions):
    for e in ENTRIES:
        c = check(solutions, f"{e}[audit]")
        assert c.status == "pass" and "no forbidden op" in c.message, c.message
    speed = [c for c in solutions.checks if c.group == "speed"]
    assert len(speed) == len(SPEC.benchmarks)
    assert all(c.status == "skip" and c.max_points == 0 and "not graded: no GPU" in c.message for c in speed)


DETERMINISM_SCRIPT = textwrap.dedent('''
    import sys
    import torch
    from grader.inputs import make
    from grader.labs import get
    from grader.labs.lab04_flash_attention import attn
    from grader.loader import import_file
    fa = import_file(sys.argv[1])
    inputs = make(get("lab04"), attn(1, 2, 40, 32, True, "fp16", bwd=True), 5, "cpu")
    q, k, v, do = (inputs[n] for n in ("q", "k", "v", "do"))
    o, lse = fa.attention_forward(q, k, v, True)
    first = fa.attention_backward(q, k, v, o, lse, do, True)
    second = fa.attention_backward(q, k, v, o, lse, do, True)
    qa, ka, va = (t.clone().requires_grad_() for t in (q, k, v))
    fa.flash_attention(qa, ka, va, causal=True).backward(do)
    for a, b, g in zip(first, second, (qa.grad, ka.grad, va.grad)):
        assert torch.equal(a, b) and torch.equal(a, g)
    print("ok")
''')


def test_solution_is_deterministic_and_matches_its_autograd_function():
    """Two backward runs give bitwise-equal gradients (no atomics), and flash_attention(...).backward()
    gives what attention_backward gives. A subprocess: the interpreter must be on before triton is imported."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT, str(SOLUTION_FILE)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout[-2000:] + proc.stderr[-4000:]


COMPILE_SCRIPT = textwrap.dedent('''
    import importlib.util, sys
    import triton
    from triton.backends.compiler import GPUTarget
    spec = importlib.util.spec_from_file_location("fa_sm90", sys.argv[1])
    R = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(R)

    def strides(p):
        return {f"stride_{p}{c}": "i32" for c in "bhn"}   # stride_*d == 1: a constexpr, as at run time

    fwd = dict(q_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", o_ptr="*bf16", lse_ptr="*fp32")
    for p in "qkvo":
        fwd.update(strides(p))
    fwd.update(H="i32", N_Q="i32", N_KV="i32", qk_scale="fp32")
    bwd = dict(q_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", do_ptr="*bf16", lse_ptr="*fp32", delta_ptr="*fp32")
    dkdv = dict(bwd, dk_ptr="*bf16", dv_ptr="*bf16")
    dq = dict(bwd, dq_ptr="*bf16")
    for sig, last in ((dkdv, "dk"), (dq, "dq")):
        for p in ("q", "k", "v", "do", last):
            sig.update(strides(p))
        sig.update(H="i32", N_Q="i32", N_KV="i32", qk_scale="fp32", sm_scale="fp32")
    jobs = [(R._attn_fwd_kernel, fwd, R._fwd_configs()[0]), (R._attn_bwd_dkdv_kernel, dkdv, R._dkdv_configs()[0]),
            (R._attn_bwd_dq_kernel, dq, R._dq_configs()[0])]
    for kernel, sig, cfg in jobs:
        fn = kernel.fn
        for causal in (True, False):
            consts = dict(HEAD_DIM=128, CAUSAL=causal, **cfg.kwargs)
            consts.update({a: 1 for a in fn.arg_names if a.startswith("stride_") and a.endswith("d")})
            s = dict(sig, **{k: "constexpr" for k in consts})
            s = {a: s[a] for a in fn.arg_names}
            attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a, t in s.items()
                     if t.startswith("*") or t == "i32"}
            src = triton.compiler.ASTSource(fn=fn, signature=s, constexprs=consts, attrs=attrs)
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
            ptx = k.asm["ptx"]
            assert k.asm.get("cubin") and "wgmma" in ptx and "cp.async" in ptx, fn.__name__
            assert k.metadata.shared <= 232448, (fn.__name__, k.metadata.shared)
            print(fn.__name__, causal, "ok")
''')


def test_solution_kernels_compile_for_sm90():
    """The interpreter never compiles a kernel: compile the first autotune config of each kernel for an H100
    (Triton's bundled ptxas, no GPU needed) with the specialization a run gets (16-byte aligned pointers
    and strides, unit inner stride), and check it uses Hopper's wgmma with pipelined (cp.async) loads
    within the 227 KB of shared memory."""
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        import triton.backends.nvidia  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"triton has no NVIDIA backend here: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(SOLUTION_FILE)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count(" ok") == 6


# ---- the skeleton -------------------------------------------------------------------------------------

def test_skeleton_fails_every_check_with_its_todo(skeleton):
    r = skeleton
    graded_checks = [c for c in r.checks if c.group in ("audit", "correctness")]
    assert len(graded_checks) == len(ENTRIES) + len(CPU_CASES)
    for c in graded_checks:
        assert c.status == "fail" and c.points == 0, f"{c.name}: {c.status}: {c.message}"
        assert "NotImplementedError: lab04: _attn_fwd_kernel" in c.message, f"{c.name}: {c.message}"
        assert "Traceback" not in c.message
    assert check(r, "files").status == "pass"
    assert r.env["worker_restarts"] == 0 and r.score == 0 and not r.passed


def test_skeleton_imports_and_each_wrapper_names_its_kernel():
    from grader.loader import import_file
    fa = import_file(SKELETON_FILE)
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(NotImplementedError, match="lab04: _attn_fwd_kernel"):
        fa.attention_forward(q, q, q, True)
    with pytest.raises(NotImplementedError, match="lab04: _attn_fwd_kernel"):
        fa.flash_attention(q, q, q)
    with pytest.raises(NotImplementedError, match="lab04: _attn_bwd_preprocess_kernel"):
        fa.attention_backward(q, q, q, q, torch.zeros(1, 2, 8), q, True)
    src = SKELETON_FILE.read_text()
    raises = re.findall(r'raise NotImplementedError\("lab04: (\w+)', src)
    assert raises == ["_attn_fwd_kernel", "_attn_bwd_preprocess_kernel", "_attn_bwd_dkdv_kernel", "_attn_bwd_dq_kernel"]
    with pytest.raises(ValueError, match="causal attention needs N_q == N_kv"):
        fa.attention_forward(q, torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 16), True)


def test_skeleton_keeps_the_given_parts_of_the_solution():
    """Configs, wrappers, the autograd Function: identical in both files but for the skeleton's raise lines."""
    def given(text):
        configs = text.split("INTERPRET = ")[1].split("# ---- forward")[0]
        wrappers = text.split("# ---- wrappers (given)")[1]
        return configs, re.sub(r"    raise NotImplementedError\(.*?\)\n", "", wrappers, flags=re.S)
    assert given(SKELETON_FILE.read_text()) == given(SOLUTION_FILE.read_text())


# ---- known-bad submissions ----------------------------------------------------------------------------

def grade_exploit(name, *only):
    from grader.runner import grade
    r = grade(LAB, exploit_dir(LAB, name), cpu=True, only=list(only))
    assert r.tier == "cpu"
    return r


def test_every_exploit_folder_is_complete():
    root = exploit_dir(LAB, ".")
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert set(names) >= {"calls_sdpa", "torch_math", "no_diagonal_mask", "cached_output", "half_precision"}
    for n in names:
        readme = (root / n / "README.md").read_text().strip().splitlines()
        assert len(readme) == 2 and "Caught" in readme[1], f"{n}/README.md: {readme}"
        src = (root / n / "flash_attention.py").read_text()
        assert src.startswith('"""KNOWN-BAD SUBMISSION')
        compile(src, str(root / n / "flash_attention.py"), "exec")


@pytest.mark.parametrize("name,ops", [("calls_sdpa", "aten::scaled_dot_product_attention"),
                                      ("torch_math", "aten::matmul")])
def test_library_attention_fails_the_audit_and_scores_nothing(name, ops):
    r = grade_exploit(name, "[audit]", "fp32-b1h2n17d16-causal")
    for e in ENTRIES:
        audit = check(r, f"{e}[audit]")
        assert_rejected(audit, "your own kernel")
        # Either the op is blocked in the student's process (spec.blocked_ops) or the audit names it.
        assert "is not allowed in this lab" in audit.message or ops in audit.message, audit.message
        c = check(r, f"{e}[fp32-b1h2n17d16-causal]")
        assert c.status == "fail" and c.points == 0 and c.max_points == 1, c.message
    assert r.score == 0 and not r.passed


def test_no_diagonal_mask_fails_causal_cases_only():
    r = grade_exploit("no_diagonal_mask", "fp16-b2h2n100d64", "fp32-b2h2n64d32", "fp16-b1h2n33x")
    for e in ENTRIES:
        assert_rejected(check(r, f"{e}[fp16-b2h2n100d64-causal]"), "elements wrong", "diagonal")
    for case in ("attention_fwd[fp32-b2h2n64d32]", "attention_fwd[fp16-b1h2n33x100d64]",
                 "attention_bwd[fp16-b1h2n33x80d64]"):
        assert check(r, case).status == "pass", check(r, case).message


def test_cached_output_is_caught_by_fresh_inputs():
    r = grade_exploit("cached_output", "[audit]", "fp32-b1h2n17d16-causal", "fp16-b2h2n100d64-causal")
    for e in ENTRIES:
        # elementwise torch: no forbidden op, but no kernel of its own either (the own-kernel rule)
        assert_rejected(check(r, f"{e}[audit]"), "no @triton.jit kernel is defined in flash_attention.py")
        for case in ("fp32-b1h2n17d16-causal", "fp16-b2h2n100d64-causal"):
            assert_rejected(check(r, f"{e}[{case}]"), "trial", "elements wrong")


def test_half_precision_fails_fp32_passes_fp16():
    r = grade_exploit("half_precision", "fp32-b2h2n64d32", "fp32-b1h2n17d16-causal", "fp16-b2h2n100d64-causal")
    assert_rejected(check(r, "attention_fwd[fp32-b2h2n64d32]"), "elements wrong", "tolerance 0.0001")
    assert_rejected(check(r, "attention_bwd[fp32-b1h2n17d16-causal]"), "elements wrong")
    for e in ENTRIES:
        assert check(r, f"{e}[fp16-b2h2n100d64-causal]").status == "pass"


# ---- GPU tier (run on a GPU) --------------------------------------------------------------------------

@requires_cuda
def test_gpu_solutions_pass_bf16_cases():
    from grader.runner import grade
    r = grade(LAB, "solutions", only=["[audit]", "bf16-b2h3n1000d128-causal", "bf16-b2h3n2048d64]",
                                      "bf16-b2h3n127d128", "bf16-b1h4n500x2048d128"])
    assert r.tier == "gpu"
    assert not [c for c in r.checks if c.status == "fail"], describe(r)
    assert len([c for c in r.checks if c.group == "correctness"]) >= 8


@requires_cuda
@pytest.mark.parametrize("baseline", ["sdpa_flash", "sdpa_cudnn"])
def test_gpu_baselines_compute_attention(baseline):
    """A baseline's output is never checked by the grader, so check here that it does the same work."""
    for p in (attn(1, 2, 300, 128, True, "bf16"), attn(1, 2, 300, 64, False, "bf16", bwd=True)):
        inputs = make(SPEC, p, 0, "cuda")
        got = SPEC.baselines[baseline](inputs, p)
        refs = SPEC.reference(inputs, p)
        for g, ref, (_, dt) in zip(got if isinstance(got, tuple) else (got,), refs, SPEC.outputs(p)):
            assert compare(g, ref, SPEC.tolerances[dt]).ok
