"""Lab 10 (W4A16: RTN, GPTQ, AWQ, int32 packing, the dequantizing Triton GEMM) on the CPU tier: the spec is
sound (inputs that keep every rounding decision off its boundary, references, tolerances, the guard and
audit patterns), the solutions pass and the kernel compiles for sm_90, the skeleton fails cleanly, and
every known-bad submission in tests/adversarial/lab10/ is rejected for the right reason. GPU-tier tests
at the end run on a CUDA machine only.

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
import torch.nn.functional as F

from grader import REPO_ROOT
from grader.compare import compare
from grader.inputs import make
from grader.labs import get
from grader.loader import import_file
from tests.conftest import check, describe, exploit_dir, requires_cuda

LAB = "lab10"
SPEC = get(LAB)
L = importlib.import_module("grader.labs.lab10_w4a16")     # references, input builders, baselines
ENTRIES = tuple(SPEC.entries)
CPU_CASES = [c for c in SPEC.all_cases(0) if "cpu" in c.tiers]
GPU_CASES = [c for c in SPEC.all_cases(0) if "gpu" in c.tiers]
SOLUTION_DIR = REPO_ROOT / "solutions" / SPEC.path
SKELETON_DIR = REPO_ROOT / SPEC.path
# What each entry's skeleton TODO names (the function to write).
TODO_OF = {"rtn_quantize": "rtn_quantize", "dequantize": "dequantize", "pack_gptq": "pack_nibbles",
           "pack_awq": "pack_nibbles", "unpack_gptq": "unpack_nibbles", "unpack_awq": "unpack_nibbles",
           "gptq_quantize": "gptq_quantize", "awq_search": "awq_search", "w4a16_matmul": "w4a16_gemm_kernel"}


@pytest.fixture(scope="module")
def solutions(graded):
    return graded(LAB, "solutions", cpu=True)


@pytest.fixture(scope="module")
def skeleton(graded):
    return graded(LAB, "student", cpu=True)


@pytest.fixture(scope="module")
def sol_quantize():
    return import_file(SOLUTION_DIR / "quantize.py")


def assert_rejected(c, *needles: str):
    assert c.status == "fail", f"{c.name} was not rejected: {c.status}: {c.message}"
    assert c.points == 0
    for n in needles:
        assert n.lower() in c.message.lower(), f"{c.name}: expected {n!r} in: {c.message}"


def case(entry, name):
    return next(c for c in SPEC.all_cases(0) if c.entry == entry and c.name == name)


# ---- the spec: cases ----------------------------------------------------------------------------------

def test_every_case_names_its_entry():
    for c in SPEC.all_cases(12345) + list(SPEC.benchmarks):
        assert c.params["op"] == c.entry, c.name


def test_quantizers_run_on_both_tiers_with_groups_and_ragged_widths():
    for e in L.QUANT_ENTRIES:
        cases = [c for c in SPEC.cases if c.entry == e]
        assert cases and all(c.tiers == ("cpu", "gpu") for c in cases), e
    groups = {c.params["group"] for c in SPEC.cases if c.entry in ("rtn_quantize", "pack_gptq", "pack_awq")}
    assert groups == {32, 64, 128}
    assert any(c.params["N"] % 8 for c in SPEC.cases if c.entry == "rtn_quantize"), "RTN needs no multiple of 8"
    gptq = {c.params["hessian"] for c in SPEC.cases if c.entry == "gptq_quantize"}
    assert gptq == {"identity", "calib"}


def test_gemm_cases_cover_decode_prefill_edges_and_dtypes():
    cpu = [c.params for c in CPU_CASES if c.entry == "w4a16_matmul"]
    assert {p["dtype"] for p in cpu} == {"fp32", "fp16"}, "the interpreter mishandles bf16"
    ms = {p["M"] for p in cpu}
    assert 1 in ms and max(ms) > 16 and any(1 < m < 16 for m in ms)        # decode, and past its bucket
    assert any(p["N"] % 32 for p in cpu), "N not a multiple of the column tile"
    assert {32, 64, 128} <= {p["group"] for p in cpu} and any(p["layout"] == "p" for p in cpu)
    gpu = [c.params for c in GPU_CASES if c.entry == "w4a16_matmul"]
    assert {p["dtype"] for p in gpu} == {"fp16", "bf16"}
    shapes = {(p["K"], p["N"]) for p in gpu}
    assert set(L.BENCH_SHAPES) <= shapes and (11008, 4096) in shapes
    assert {1, 16, 128, 4096} <= {p["M"] for p in gpu}
    assert any(p["N"] % 128 for p in gpu) and {32, 64} <= {p["group"] for p in gpu}


def test_hidden_cases_depend_on_the_seed():
    a, b = SPEC.hidden_cases(1), SPEC.hidden_cases(2)
    assert [c.name for c in a] != [c.name for c in b]
    for c in a + b:
        p = c.params
        assert p["K"] % p["group"] == 0 and (p.get("N") or 8) % 8 == 0


# ---- the spec: inputs that keep rounding decisions off their boundaries -------------------------------

def _distance_to_boundaries(u: torch.Tensor) -> torch.Tensor:
    """Code-space distance to the nearest rounding boundary that matters (-0.5 .. 15.5)."""
    inside = (u > -0.5 - L.MARGIN) & (u < L.MAX_Q + 0.5 + L.MARGIN)
    return (u - torch.floor(u) - 0.5).abs()[inside]


@pytest.mark.parametrize("name", ["256x64", "512x136", "256x37-g64", "128x40-g32"])
def test_rtn_inputs_keep_every_decision_off_the_boundary(name):
    c = case("rtn_quantize", name)
    for seed in range(3):
        w = make(SPEC, c.params, seed, "cpu")["w"].double()
        g = c.params["group"]
        s, z = L.rtn_grid(w, g)
        u = w / L._rows(s, g) + L._rows(z, g)
        assert _distance_to_boundaries(u).min() > L.MARGIN * 0.999
        mn = w.reshape(-1, g, w.shape[1]).amin(1).clamp(max=0)
        t = -mn / s                                              # the zero point's own rounding
        assert ((t - t.floor() - 0.5).abs() > L.MARGIN * 0.999).all()


def test_inputs_are_deterministic():
    for c in (case("gptq_quantize", "calib-256x256"), case("awq_search", "256x128-tok512-grid20"),
              case("rtn_quantize", "512x136"), case("w4a16_matmul", "fp16-7x256x64-padded")):
        a, b = make(SPEC, c.params, 99, "cpu"), make(SPEC, c.params, 99, "cpu")
        for k in a:                                   # bit for bit: the two processes must agree exactly
            assert torch.equal(a[k].contiguous().view(torch.uint8), b[k].contiguous().view(torch.uint8)), k


def _gptq_fp32_code_space(w, h, s, z, g, damp, inverse):
    """Textbook GPTQ, one row at a time, in fp32: returns u = W[k] / s + z just before each rounding."""
    K = w.shape[0]
    W, H = w.float().clone(), h.float().clone()
    H.diagonal().add_(damp * H.diagonal().mean())
    Hinv = torch.linalg.inv(H) if inverse == "inv" else torch.cholesky_inverse(torch.linalg.cholesky(H))
    U = torch.linalg.cholesky(Hinv, upper=True)
    S, Z = L._rows(s.float(), g), L._rows(z.float(), g)
    out = torch.empty_like(W)
    for k in range(K):
        out[k] = W[k] / S[k] + Z[k]
        q = torch.round(out[k]).clamp(0, 15)
        e = (W[k] - (q - Z[k]) * S[k]) / U[k, k]
        W[k + 1:] -= torch.outer(U[k, k + 1:], e)
    return out


@pytest.mark.parametrize("name", ["calib-256x256", "calib-256x128-damp0.1"])
def test_gptq_inputs_leave_fp32_implementations_far_from_every_boundary(name, sol_quantize):
    """The claim the exact GPTQ check rests on: fp32 runs (either inverse, any lazy-batch block size) stay
    within 1e-3 code units of the fp64 run, 50x inside the margin, so they give the reference's codes."""
    c = case("gptq_quantize", name)
    p, g = c.params, c.params["group"]
    inp = make(SPEC, p, 7, "cpu")
    ref = SPEC.reference(inp, p)
    W, H = inp["w"].double().clone(), inp["h"].double()
    U = L._upper_inverse_cholesky(H, p["damp"])
    S, Z = L._rows(inp["scales"].double(), g), L._rows(inp["zeros"].double(), g)
    u64 = torch.empty_like(W)
    for k in range(W.shape[0]):                       # the reference's code space, recorded
        u64[k] = W[k] / S[k] + Z[k]
        e = (W[k] - (torch.round(u64[k]).clamp(0, 15) - Z[k]) * S[k]) / U[k, k]
        W[k + 1:] -= torch.outer(U[k, k + 1:], e)
    assert _distance_to_boundaries(u64).min() > L.MARGIN * 0.999
    for inverse in ("chol", "inv"):
        u32 = _gptq_fp32_code_space(inp["w"], inp["h"], inp["scales"], inp["zeros"], g, p["damp"], inverse)
        assert (u32.double() - u64).abs().max() < 1e-3, inverse
    for block in (1, 64, 10_000):
        q = sol_quantize.gptq_quantize(inp["w"], inp["h"], inp["scales"], inp["zeros"], g, p["damp"], block)
        assert torch.equal(q, ref), block


def _output_error(inp, q, g):
    """||X (W_hat - W)||^2 / ||X W||^2 through the Hessian: trace(E^T H E) / trace(W^T H W)."""
    w, h = inp["w"].double(), inp["h"].double()
    e = L.dequant(q, inp["scales"], inp["zeros"], g) - w
    return float((e * (h @ e)).sum() / (w * (h @ w)).sum())


def test_gptq_reference_is_rtn_for_identity_and_beats_it_on_outlier_data():
    c = case("gptq_quantize", "identity-256x64")
    inp = make(SPEC, c.params, 0, "cpu")
    rtn = L.rtn_codes(inp["w"].double(), inp["scales"].double(), inp["zeros"].double(), 128).to(torch.int32)
    assert torch.equal(SPEC.reference(inp, c.params), rtn)
    for name in ("calib-256x256", "calib-256x128-damp0.1"):
        c = case("gptq_quantize", name)
        g = c.params["group"]
        for seed in range(2):
            inp = make(SPEC, c.params, seed, "cpu")
            rtn = L.rtn_codes(inp["w"].double(), inp["scales"].double(), inp["zeros"].double(), g)
            gptq, base = _output_error(inp, SPEC.reference(inp, c.params), g), _output_error(inp, rtn, g)
            assert gptq < 0.8 * base, (name, seed, gptq / base)
            assert (SPEC.reference(inp, c.params) != rtn).float().mean() > 0.05, "GPTQ must move many codes"


@pytest.mark.parametrize("name", ["256x128-tok512-grid20", "256x64-g64-tok256-grid10"])
def test_awq_grid_starts_at_rtn_and_beats_it(name):
    c = case("awq_search", name)
    p = c.params
    for seed in range(2 if p["K"] * p["N"] <= 256 * 64 else 1):
        inp = make(SPEC, p, seed, "cpu")
        s, losses = SPEC.reference(inp, p)
        w = inp["w"].double()
        sc, z = L.rtn_grid(w, p["group"])
        rtn = L.layer_error(inp["x"], w, L.dequant(L.rtn_codes(w, sc, z, p["group"]), sc, z, p["group"]))
        assert abs(float(losses[0]) - rtn) < 1e-9 * rtn, "alpha = 0 is RTN"
        assert float(losses.min()) < 0.7 * rtn, "AWQ helps on outlier channels"
        best2 = losses.sort().values[:2]
        assert best2[1] - best2[0] > 0.5 * L.AWQ_GAP * best2[0], "unambiguous argmin"
        assert s.shape == (p["K"],) and abs(float(s.mean()) - 1) < 1e-12


# ---- the spec: references -----------------------------------------------------------------------------

def test_pack_reference_layouts_on_known_words():
    seq = torch.arange(8, dtype=torch.int32)
    # GPTQ: 8 rows of one column, in order -> 0x76543210; AWQ: 8 columns of one row, interleaved.
    assert int(L.pack(seq[:, None], 0, L.GPTQ_ORDER)) == 0x76543210
    assert int(L.pack(seq[None, :], 1, L.AWQ_ORDER)) == 0x75316420
    assert int(L.pack(torch.full((8, 1), 15, dtype=torch.int32), 0, L.GPTQ_ORDER)) == -1
    top = torch.zeros(8, 1, dtype=torch.int32)
    top[7] = 15
    assert int(L.pack(top, 0, L.GPTQ_ORDER)) == 0xF0000000 - 2**32           # only the sign nibble
    assert L.unpack(torch.tensor([[-1]], dtype=torch.int32), 1, L.AWQ_ORDER).tolist() == [[15] * 8]
    assert L.unpack(torch.tensor([[0x75316420]], dtype=torch.int32), 1, L.AWQ_ORDER).tolist() == [list(range(8))]


def test_pack_reference_round_trips_every_nibble_value():
    gen = torch.Generator().manual_seed(3)
    words = L._random_words((64, 16), gen)
    for dim, order in ((0, L.GPTQ_ORDER), (1, L.GPTQ_ORDER), (1, L.AWQ_ORDER)):
        codes = L.unpack(words, dim, order)
        assert codes.min() == 0 and codes.max() == 15
        assert torch.equal(L.pack(codes, dim, order), words)
    q = L._codes((32, 16), gen)
    assert (q[:8] == 15).all() and torch.equal(L.unpack(L.pack(q, 0, L.GPTQ_ORDER), 0, L.GPTQ_ORDER), q)
    assert (L.pack(q, 0, L.GPTQ_ORDER)[1] == 0xF0000000 - 2**32).all()


def test_gemm_reference_matches_an_independent_loop():
    p = L.gemm(2, 128, 16, "fp32", group=64)
    inp = make(SPEC, p, 5, "cpu")
    qw, qz, s, x = inp["qweight"].tolist(), inp["qzeros"].tolist(), inp["scales"].double(), inp["x"].double()
    w = torch.empty(128, 16, dtype=torch.float64)
    for k in range(128):
        for n in range(16):
            q = ((qw[k // 8][n] & 0xFFFFFFFF) >> (4 * (k % 8))) & 0xF
            z = ((qz[k // 64][n // 8] & 0xFFFFFFFF) >> (4 * (n % 8))) & 0xF
            w[k, n] = (q - z) * float(s[k // 64, n])
    torch.testing.assert_close(SPEC.reference(inp, p), x @ w, rtol=1e-12, atol=1e-12)


# ---- the spec: tolerances -----------------------------------------------------------------------------

def _gemm_problem(dtype):
    p = L.gemm(16, 4096, 256, dtype)
    inp = make(SPEC, p, 11, "cpu")
    q, z = L.unpack(inp["qweight"], 0, L.GPTQ_ORDER), L.unpack(inp["qzeros"], 1, L.GPTQ_ORDER)
    w = L.dequant(q, inp["scales"], z, 128)
    return p, inp, w, SPEC.reference(inp, p)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_tolerances_admit_weights_rounded_to_the_activation_dtype(dtype):
    """The common kernel: each dequantized weight rounded to x's dtype, fp32 accumulation, one rounding."""
    p, inp, w, ref = _gemm_problem(dtype)
    dt = inp["x"].dtype
    out = (inp["x"].float() @ w.to(dt).float()).to(dt)
    assert compare(out, ref, SPEC.tolerances[dtype]).ok


def test_tolerances_reject_fp16_accumulation_and_fp8_weights():
    p, inp, w, ref = _gemm_problem("fp16")
    x = inp["x"].float()
    acc = torch.zeros(16, 256, dtype=torch.float16)
    for k0 in range(0, 4096, 16):                   # an MMA loop whose accumulator is fp16
        acc += (x[:, k0:k0 + 16] @ w[k0:k0 + 16].float()).half()
    assert not compare(acc, ref, SPEC.tolerances["fp16"]).ok
    w8 = w.float().to(torch.float8_e4m3fn).float()
    assert not compare((x @ w8).half(), ref, SPEC.tolerances["fp16"]).ok


def test_bytes_and_the_ideal_speedup():
    p = L.gemm(1, 4096, 4096, "bf16")
    weight_bytes = L.bytes_moved(p) - 2 * (4096 + 4096)
    assert weight_bytes == 4096 * 4096 * (0.5 + 2.5 / 128)
    ratio = L.dense_bytes(p) / L.bytes_moved(p)
    assert 3.83 < ratio < 3.86                                  # 2 / (0.5 + 2.5/128) = 3.85
    assert round(2 / (0.5 + 2 / 128), 2) == 3.88                # scales only: the issue's ~3.87
    assert L.flops(p) == 2 * 4096 * 4096 and L.bytes_moved(L.quant("pack_gptq", 256, 64)) is None


def test_benchmarks_and_tiers_follow_the_issue():
    names = {b.name for b in SPEC.benchmarks}
    for K, N in L.BENCH_SHAPES:
        assert {f"decode-bf16-M1-{K}x{N}", f"decode-bf16-M16-{K}x{N}", f"prefill-bf16-M128-{K}x{N}"} <= names
    for b in SPEC.benchmarks:
        assert b.baseline == "torch_bf16" and b.params["dtype"] == "bf16"
        full = b.tiers[-1]
        if b.name.startswith("decode"):
            assert (full.min_ratio, full.fraction, b.points) == (2.5, 1.0, 1.0)
        elif b.params["M"] == 128:
            assert (full.min_ratio, full.fraction, b.points) == (0.9, 1.0, 1.0)
        else:
            assert b.points == 0 and b.tiers[0].min_ratio == 0.0, "informational"


def test_dense_baseline_computes_the_product():
    """A baseline's output is never checked by the grader: check here that it does the same work."""
    p = L.gemm(5, 256, 64, "fp32")
    inp = make(SPEC, p, 2, "cpu")
    torch.testing.assert_close(SPEC.baselines["torch_bf16"](inp, p).double(), SPEC.reference(inp, p),
                               rtol=1e-5, atol=1e-4)


# ---- the spec: what the GEMM may not call -------------------------------------------------------------

LIBRARY_KERNELS = [
    "nvjet_tst_128x64_64x8_1x1_v_bz_coopA_NTN", "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64",
    "void gemv2T_kernel_val<int, int, __nv_bfloat16, __nv_bfloat16, float, 128, 16, 4, 4, false, false>",
    "void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8>",
    "ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_stages_64x4_tn", "void splitKreduce_kernel<32, 16, int>",
    "triton_tem_fused_mm_0",
]
ALLOWED_KERNELS = ["w4a16_gemm_kernel", "Memcpy DtoH (Device -> Pageable)", "Memset (Device)",
                   "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>"]


def test_forbidden_kernel_patterns_hit_library_kernels_only():
    def hit(name):
        return [f for f in SPEC.forbidden_kernels if re.search(f, name, re.I)]
    for k in LIBRARY_KERNELS:
        assert hit(k), f"not forbidden: {k}"
    for k in ALLOWED_KERNELS:
        assert not hit(k), f"{k} is forbidden by {hit(k)}"


def test_guard_rejects_dense_matmul_and_nothing_else():
    x, w = torch.randn(3, 8), torch.randn(8, 5)
    for fn in (lambda: x @ w, lambda: F.linear(x, w.t()), lambda: torch.einsum("mk,kn->mn", x, w),
               lambda: torch.mm(x, w), lambda: (x[None] @ w[None])[0]):
        with pytest.raises(RuntimeError, match="not allowed in w4a16_matmul"), L.NoDenseMatmul():
            fn()
    with L.NoDenseMatmul():
        y = (x[:, :, None] * w[None]).sum(1) + torch.empty(3, 5).zero_()
    torch.testing.assert_close(y, x @ w)


def test_quantizers_get_cpu_tensors_and_return_on_the_input_device():
    seen = {}

    def fake(q, zeros):
        seen["device"] = (q.device.type, zeros.device.type)
        return q[::8].clone(), zeros[:, ::8].clone()
    p = L.quant("pack_gptq", 256, 64)
    out = SPEC.call(fake, make(SPEC, p, 0, "cpu"), p)
    assert seen["device"] == ("cpu", "cpu") and all(o.device.type == "cpu" for o in out)


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


def test_solutions_audit_and_speed_on_the_cpu_tier(solutions):
    for e in ENTRIES:
        c = check(solutions, f"{e}[audit]")
        assert c.status == "pass" and "no forbidden op" in c.message, c.message
    speed = [c for c in solutions.checks if c.group == "speed"]
    assert len(speed) == len(SPEC.benchmarks)
    assert all(c.status == "skip" and c.max_points == 0 and "not graded: no GPU" in c.message for c in speed)


def test_solution_gemm_is_well_inside_tolerance(solutions):
    for c in solutions.checks:
        if c.entry == "w4a16_matmul" and c.group == "correctness":
            limit = 1e-6 if "[fp32" in c.name or "-fp32-" in c.name else 5e-4
            assert c.details["rel_err"] < limit, (c.name, c.details)


COMPILE_SCRIPT = textwrap.dedent('''
    import importlib.util, sys
    import triton
    from triton.backends.compiler import GPUTarget
    spec = importlib.util.spec_from_file_location("w4a16_sm90", sys.argv[1])
    G = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(G)
    sig = dict(x_ptr="*D", qweight_ptr="*i32", scales_ptr="*D", qzeros_ptr="*i32", y_ptr="*D",
               partial_ptr="*fp32", tile_lock_ptr="*i32", M="i32", N="i32", K="i32",
               stride_xm="i32", stride_xk="constexpr", stride_qwk="i32", stride_qwn="constexpr",
               stride_sg="i32", stride_sn="constexpr", stride_qzg="i32", stride_qzn="constexpr",
               stride_ym="i32", stride_yn="constexpr", M_BUCKET="i32")
    aligned = ("x_ptr", "qweight_ptr", "scales_ptr", "qzeros_ptr", "y_ptr", "partial_ptr", "tile_lock_ptr",
               "N", "K", "stride_xm", "stride_qwk", "stride_sg", "stride_ym", "M_BUCKET")
    picks = [G.DECODE_CONFIGS[0], G.DECODE_CONFIGS[-1], G.SMALL_PREFILL_CONFIGS[0], G.LARGE_PREFILL_CONFIGS[0]]
    for cfg in picks:
        for dt in ("bf16", "fp16"):
            s = {k: v.replace("D", dt) for k, v in sig.items()}
            consts = dict(cfg.kwargs, GROUP_SIZE=128, stride_xk=1, stride_qwn=1, stride_sn=1,
                          stride_qzn=1, stride_yn=1)
            for k in ("GROUP_SIZE", *cfg.kwargs):
                s[k] = "constexpr"
            names = list(s)
            attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned}
            src = triton.compiler.ASTSource(fn=G.w4a16_gemm_kernel, signature=s, constexprs=consts, attrs=attrs)
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
            ptx = k.asm["ptx"]
            assert k.asm.get("cubin") and "mma" in ptx and "cp.async" in ptx, cfg
            assert k.metadata.shared <= 232448, (cfg, k.metadata.shared)
            print(cfg.kwargs, dt, "ok")
''')


def _ptx_prmt(a: int, b: int, sel: int) -> int:
    """PTX prmt.b32 (default mode): byte k of the result is byte sel[k] of {b, a} (a = bytes 0-3)."""
    src = (b << 32) | a
    out = 0
    for k in range(4):
        idx = (sel >> (4 * k)) & 0x7
        assert not (sel >> (4 * k)) & 0x8, "sign-replicate selectors are not used"
        out |= ((src >> (8 * idx)) & 0xFF) << (8 * k)
    return out


def _ptx_lop3(a: int, b: int, c: int, lut: int) -> int:
    out = 0
    for bit in range(32):
        i = (((a >> bit) & 1) << 2) | (((b >> bit) & 1) << 1) | ((c >> bit) & 1)
        out |= ((lut >> i) & 1) << bit
    return out


def test_fixed_configs_are_the_sweeps_winners(monkeypatch):
    """On a GPU with groups of 128 the solution launches one config per shape (decode and M <= 256), not the
    autotuner's per-process pick. On a 132-SM card the rule must give what the sweeps measured fastest
    (BENCHMARKS.md: decode, session 5; M = 128 and 256 on the H200, session 8), and step aside (None) on the
    CPU, for other groups and past small prefill."""
    G = import_file(SOLUTION_DIR / "w4a16_gemm.py", str(SKELETON_DIR))
    cpu = torch.device("cpu")
    assert G._fixed_config(cpu, 128, 4096, 4096, 128) is None
    monkeypatch.setattr(G, "INTERPRET", False)
    monkeypatch.setattr(G, "_FIXED", {})
    monkeypatch.setattr(G.torch.cuda, "get_device_properties",
                        lambda device: type("Props", (), {"multi_processor_count": 132})())
    gpu = torch.device("cuda", 0)

    def row(M, N, group=128):
        c = G._fixed_config(gpu, M, N, 4096, group)
        if c is None:
            return None
        kw = c[0].kwargs
        return (kw["BLOCK_M"], kw["BLOCK_N"], kw["BLOCK_K"], kw["SPLIT_K"], c[0].num_warps, c[0].num_stages)
    assert row(1, 4096) == row(16, 4096) == (16, 128, 128, 8, 2, 3)     # 32 tiles x 8 <= 4 x 132
    assert row(1, 14336) == (16, 128, 128, 4, 2, 3)                     # 112 x 4 = 448 <= 528
    assert row(128, 4096) == row(100, 4096) == (64, 128, 128, 4, 4, 3)  # 2 x 32 tiles x 4 = 256 <= 264
    assert row(256, 4096) == (64, 128, 128, 2, 4, 3)                    # 4 x 32 x 2 = 256
    assert row(128, 14336) == row(256, 14336) == (128, 128, 128, 1, 8, 3)   # 224 64-row tiles: no split
    assert row(257, 4096) is None and row(128, 4096, group=64) is None
    assert G._fixed_config(gpu, 128, 4096, 4096, 128) is G._fixed_config(gpu, 128, 4096, 4096, 128)  # cached


def test_nibble_ptx_matches_its_meaning():
    """The solution's inline PTX runs only on a GPU: model prmt and lop3 bit by bit and check that, for
    words with every nibble value (0xF in the top bits too), the two 16-bit halves are MAGIC + the low
    nibble of byte BYTE of each word (fp16 MAGIC 0x6400 = 1024, bf16 0x4300 = 128)."""
    G = import_file(SOLUTION_DIR / "w4a16_gemm.py", str(SKELETON_DIR))
    gen = torch.Generator().manual_seed(7)
    words = [w & 0xFFFFFFFF for w in torch.randint(-2**31, 2**31 - 1, (64,), generator=gen).tolist()]
    words += [0xFFFFFFFF, 0x0, 0xF0F0F0F0, 0x0F0F0F0F, 0x87654321]
    for magic in (0x4300, 0x6400):
        for byte in range(4):
            asm = G._magic_pair_asm(byte, magic * 0x10001)
            sel, mask, magic2, lut = (int(v) for v in re.search(
                r"prmt\.b32 t, \$1, \$2, (\d+); lop3\.b32 \$0, t, (\d+), (\d+), (\d+);", asm).groups())
            for a, b in zip(words, reversed(words)):
                out = _ptx_lop3(_ptx_prmt(a, b, sel), mask, magic2, lut)
                want_lo, want_hi = magic | ((a >> (8 * byte)) & 0xF), magic | ((b >> (8 * byte)) & 0xF)
                assert (out & 0xFFFF, out >> 16) == (want_lo, want_hi), (hex(a), hex(b), byte, hex(out))
            # and the odd nibbles through the shifted word (arithmetic shift, as int32 >> 4 in Triton)
            for a in words:
                signed = a - (1 << 32) if a >> 31 else a
                hi = (signed >> 4) & 0xFFFFFFFF
                out = _ptx_lop3(_ptx_prmt(hi, hi, sel), mask, magic2, lut)
                assert out & 0xFFFF == magic | ((a >> (8 * byte + 4)) & 0xF)


def test_streamk_experiment_is_correct_under_the_interpreter():
    # tools/gpu_checks/lab10_streamk.py (instructor experiment, next GPU session): a persistent split-K
    # kernel whose tiles are split over 1..k_tiles programs; every split must sum to the reference
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "gpu_checks" / "lab10_streamk.py"), "check"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count(": ok ") >= 20 and "WRONG" not in proc.stdout, proc.stdout


def test_swapab_experiment_is_correct_under_the_interpreter():
    # tools/gpu_checks/lab10_swapab.py (instructor experiment, next GPU session): y^T = W^T x^T, the
    # dequantized weights as the MMA's A operand; ragged M and N, uneven split-K, fp16 and fp32
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "gpu_checks" / "lab10_swapab.py"), "check"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count(": ok ") == 9 and "WRONG" not in proc.stdout, proc.stdout


def test_solution_kernel_compiles_for_sm90():
    """The interpreter never compiles a kernel: compile the first and last decode config (nibble-plane dots
    with split-K, one dot on small groups) and the first prefill configs for an H100 (Triton's bundled
    ptxas, no GPU needed) with the specialization a run gets, and check they use tensor cores and
    pipelined (cp.async) loads within the 227 KB of shared memory."""
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        import triton.backends.nvidia  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"triton has no NVIDIA backend here: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(SKELETON_DIR), env.get("PYTHONPATH", "")])   # w4a16_helpers (given)
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, str(SOLUTION_DIR / "w4a16_gemm.py")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count(" ok") == 8


def test_decode_k_loop_stays_under_the_instruction_budget():
    """HBM delivers ~6e12 packed weights/s and an H100 issues ~0.93e12 warp-instructions/s: a decode K loop
    above ~0.155 warp-instructions per weight cannot run at HBM speed (tools/sass_count.py). The solution's
    first decode config counts ~0.10 on sm_90 (PRMT + LOP3 nibble pairs); guard it at 0.12, no spills."""
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"triton has no NVIDIA backend here: {exc}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "sass_count.py"), "--first", "1"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    row = proc.stdout.strip().splitlines()[-1].split()
    ipw = float(row[10])                  # BM BN BK SK nib w s regs smem CTA/SM instr/wt ...
    assert 0.02 < ipw <= 0.12 and "stack" not in proc.stdout, proc.stdout


# ---- the skeleton -------------------------------------------------------------------------------------

def test_skeleton_fails_every_check_with_its_todo(skeleton):
    r = skeleton
    graded_checks = [c for c in r.checks if c.group in ("audit", "correctness")]
    assert len(graded_checks) == len(ENTRIES) + len(CPU_CASES)
    for c in graded_checks:
        assert c.status == "fail" and c.points == 0, f"{c.name}: {c.status}: {c.message}"
        assert f"NotImplementedError: lab10: {TODO_OF[c.entry]} in " in c.message, f"{c.name}: {c.message}"
        assert "Traceback" not in c.message
    assert check(r, "files").status == "pass"
    assert r.env["worker_restarts"] == 0 and r.score == 0 and not r.passed


def test_skeleton_imports_and_keeps_the_given_parts():
    os.environ["TRITON_INTERPRET"], before = "1", os.environ.get("TRITON_INTERPRET")
    try:
        qz = import_file(SKELETON_DIR / "quantize.py")
        gm = import_file(SKELETON_DIR / "w4a16_gemm.py", SKELETON_DIR)
    finally:
        if before is None:
            os.environ.pop("TRITON_INTERPRET")
        else:
            os.environ["TRITON_INTERPRET"] = before
    x, w = torch.randn(4, 128), torch.randn(128, 8)
    assert float(qz.layer_error(x, w, w)) == 0.0
    with pytest.raises(NotImplementedError, match="lab10: pack_nibbles"):
        qz.pack_awq(torch.zeros(128, 8, dtype=torch.int32), torch.zeros(1, 8, dtype=torch.int32))
    qweight, qzeros = torch.zeros(16, 8, dtype=torch.int32), torch.zeros(1, 1, dtype=torch.int32)
    with pytest.raises(NotImplementedError, match="lab10: w4a16_gemm_kernel"):
        gm.w4a16_matmul(x, qweight, torch.ones(1, 8), qzeros)
    with pytest.raises(ValueError, match="qweight must be int32"):       # the wrapper checks first
        gm.w4a16_matmul(x, qweight[:8], torch.ones(1, 8), qzeros)
    src = (SKELETON_DIR / "quantize.py").read_text()
    assert re.findall(r'raise NotImplementedError\("lab10: (\w+)', src) == [
        "rtn_quantize", "dequantize", "pack_nibbles", "unpack_nibbles", "gptq_quantize", "awq_search"]


def test_skeleton_shares_the_given_gemm_code_with_the_solution():
    """int4_to_float and the split-K epilogue live in the given w4a16_helpers.py (imported by both files, so
    `labs release` never sees solution text); the workspace and the wrapper are given: identical in both
    files (but for the skeleton's raise line); only the configs and the kernel body differ."""
    def given(text):
        helpers = [line for line in text.splitlines() if line.startswith("from w4a16_helpers import")]
        assert helpers, "w4a16_gemm.py must import the given helpers"
        wrapper = text.split("def _pick(M: int):")[1]
        return helpers, re.sub(r"    raise NotImplementedError\(.*?\)\n", "", wrapper, flags=re.S)
    assert given((SKELETON_DIR / "w4a16_gemm.py").read_text()) == given((SOLUTION_DIR / "w4a16_gemm.py").read_text())


# ---- known-bad submissions ----------------------------------------------------------------------------

def grade_exploit(name, *only):
    from grader.runner import grade
    r = grade(LAB, exploit_dir(LAB, name), cpu=True, only=list(only))
    assert r.tier == "cpu"
    return r


def test_every_exploit_folder_is_complete():
    root = exploit_dir(LAB, ".")
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert set(names) >= {"dequant_then_matmul", "int4pack_library", "awq_sequential_nibbles",
                          "sign_extended_unpack", "gptq_no_error_feedback", "awq_rtn_only",
                          "ignores_zero_points", "half_precision", "cached_output"}
    for n in names:
        readme = (root / n / "README.md").read_text().strip().splitlines()
        assert len(readme) == 2 and "GRADING_THREATS.md row" in readme[0] and "Caught" in readme[1], n
        files = [f for f in SPEC.student_files if (root / n / f).is_file()]
        assert len(files) == 1, f"{n}: one broken student file, graded on its own entries"
        src = (root / n / files[0]).read_text()
        assert src.startswith('"""KNOWN-BAD SUBMISSION')
        compile(src, str(root / n / files[0]), "exec")


GEMM_CASES = ("fp32-5x256x200]", "fp16-1x256x64]")


@pytest.mark.parametrize("name,needle", [("dequant_then_matmul", "aten::mm is not allowed in w4a16_matmul"),
                                         ("int4pack_library", "_convert_weight_to_int4pack_for_cpu is not allowed")])
def test_library_gemm_is_rejected_by_the_guard_or_the_blocked_ops(name, needle):
    r = grade_exploit(name, "w4a16_matmul[audit]", *GEMM_CASES)
    assert_rejected(check(r, "w4a16_matmul[audit]"), needle)
    for c in GEMM_CASES:
        assert_rejected(check(r, f"w4a16_matmul[{c}"), needle)


def test_awq_sequential_nibbles_fails_awq_layout_only():
    r = grade_exploit("awq_sequential_nibbles", "pack_awq[256x64]", "unpack_awq[512x136]", "pack_gptq[256x64]",
                      "unpack_gptq[512x136]")
    assert_rejected(check(r, "pack_awq[256x64]"), "elements wrong", "nibble order")
    assert_rejected(check(r, "unpack_awq[512x136]"), "elements wrong")
    assert check(r, "pack_gptq[256x64]").status == "pass" and check(r, "unpack_gptq[512x136]").status == "pass"


def test_sign_extended_unpack_fails_on_negative_words():
    r = grade_exploit("sign_extended_unpack", "unpack_gptq[256x64]", "unpack_awq[128x8-g32]", "pack_gptq[256x64]")
    for c in ("unpack_gptq[256x64]", "unpack_awq[128x8-g32]"):
        assert_rejected(check(r, c), "elements wrong", "arithmetic")
        assert re.search(r"got -\d+, expected 1?\d", check(r, c).message), check(r, c).message
    assert check(r, "pack_gptq[256x64]").status == "pass"


def test_gptq_without_error_feedback_passes_identity_fails_calibration():
    r = grade_exploit("gptq_no_error_feedback", "gptq_quantize[identity", "gptq_quantize[calib-256x128")
    assert check(r, "gptq_quantize[identity-256x64]").status == "pass"
    assert_rejected(check(r, "gptq_quantize[calib-256x128-damp0.1]"), "elements wrong", "error feedback")


def test_awq_without_search_is_rejected():
    r = grade_exploit("awq_rtn_only", "awq_search[256x64")
    assert_rejected(check(r, "awq_search[256x64-g64-tok256-grid10]"), "output 0", "elements wrong")


def test_ignored_zero_points_fail_every_gemm_case():
    r = grade_exploit("ignores_zero_points", *GEMM_CASES)
    assert check(r, "w4a16_matmul[audit]").status == "pass"
    for c in GEMM_CASES:
        assert_rejected(check(r, f"w4a16_matmul[{c}"), "elements wrong")


def test_half_precision_fails_fp32_passes_fp16():
    r = grade_exploit("half_precision", "fp32-5x256x200]", "fp16-5x256x200]")
    assert_rejected(check(r, "w4a16_matmul[fp32-5x256x200]"), "elements wrong", "tolerance 1e-05")
    assert check(r, "w4a16_matmul[fp16-5x256x200]").status == "pass"


def test_cached_output_is_caught_by_fresh_inputs():
    r = grade_exploit("cached_output", "fp32-5x256x200]", "fp16-16x384x136]")
    for c in ("fp32-5x256x200]", "fp16-16x384x136]"):
        assert_rejected(check(r, f"w4a16_matmul[{c}"), "trial", "elements wrong")


# ---- GPU tier (run on a GPU) --------------------------------------------------------------------------

@requires_cuda
def test_gpu_solutions_pass_gemm_cases():
    from grader.runner import grade
    r = grade(LAB, "solutions", only=["w4a16_matmul[audit]", "bf16-1x4096x4096]", "bf16-16x4096x4096]",
                                      "bf16-333x4096x4104]", "fp16-3x4096x4096-g64]"])
    assert r.tier == "gpu"
    assert not [c for c in r.checks if c.status == "fail"], describe(r)
    assert len([c for c in r.checks if c.group == "correctness"]) == 4


@requires_cuda
def test_gpu_dense_baseline_computes_the_product():
    p = L.gemm(16, 4096, 4096, "bf16")
    inputs = make(SPEC, p, 0, "cuda")
    assert compare(SPEC.baselines["torch_bf16"](inputs, p), SPEC.reference(inputs, p), SPEC.tolerances["bf16"]).ok
