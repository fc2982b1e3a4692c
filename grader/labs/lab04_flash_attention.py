"""Lab 04 spec: FlashAttention-2 in Triton, forward (o, lse) and backward (dq, dk, dv)."""

from __future__ import annotations

import random
import sys

import torch

from .. import REPO_ROOT
from ..inputs import realistic
from ..loader import import_file
from ..spec import DTYPES, Benchmark, Case, EntryPoint, LabSpec, SpeedTier, Tolerance

PATH = "stage1_foundations/lab04_flash_attention"
FILE = "flash_attention.py"

ENTRIES = {
    "attention_fwd": EntryPoint("attention_fwd", (FILE,), "triton",
                                "attention_forward(q, k, v, causal) in flash_attention.py -> (o, lse)"),
    "attention_bwd": EntryPoint("attention_bwd", (FILE,), "triton",
                                "FlashAttention.apply(q, k, v, causal, None), then autograd with dO -> (dq, dk, dv)"),
}


def load_entry(name, files):
    mod = import_file(files[FILE], REPO_ROOT / PATH)
    if name == "attention_fwd":
        def attention_fwd(q, k, v, causal):
            return mod.attention_forward(q, k, v, causal)
        return attention_fwd

    def attention_bwd(q, k, v, do, causal):
        # The forward runs inside the timed call too: o and lse are the student's own.
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        o = mod.FlashAttention.apply(q, k, v, causal, None)
        return tuple(torch.autograd.grad(o, (q, k, v), do))
    return attention_bwd


def _shape(p, n):
    return (p["B"], p["H"], n, p["D"])


def make_inputs(p, gen):
    """q, k, v (and dO for the backward) from grader.inputs.realistic: per-row scales in [0.25, 4] and offsets,
    so score rows range from nearly flat to one-hot and a softmax without its running max overflows.
    q and k get no x8 spikes: one spiked key multiplies the bf16 rounding of every dS in its column, and the
    gradient tolerances would have to open up ~6x just to admit FlashAttention's own rounding."""
    n_kv = p.get("N_kv", p["N"])
    names = [("q", p["N"]), ("k", n_kv), ("v", n_kv)] + ([("do", p["N"])] if p.get("bwd") else [])
    out = {}
    for name, n in names:
        spikes = 0.0 if name in ("q", "k") else 1e-3
        if p.get("layout") == "bnhd":   # a (B, N, H, D) buffer seen as (B, H, N, D): strided, not contiguous
            t = realistic((p["B"], n, p["H"], p["D"]), gen, p["dtype"], outliers=spikes).transpose(1, 2)
        else:
            t = realistic(_shape(p, n), gen, p["dtype"], outliers=spikes)
        out[name] = t
    return out


def call(fn, inputs, p):
    if p.get("bwd"):
        return fn(inputs["q"], inputs["k"], inputs["v"], inputs["do"], p["causal"])
    return fn(inputs["q"], inputs["k"], inputs["v"], p["causal"])


REF_CHUNK = 4   # heads per fp64 chunk: at N=4096 one head's S is 134 MB in fp64


def _math_attention(q, k, v, causal):
    """The textbook version: S = QK^T * scale, mask, softmax, O = PV (and lse = logsumexp S)."""
    s = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if causal:
        n_q, n_kv = s.shape[-2:]
        future = torch.ones(n_q, n_kv, dtype=torch.bool, device=s.device).triu(1)
        s = s.masked_fill(future, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    return torch.matmul(torch.exp(s - lse[..., None]), v), lse


def reference(inputs, p):
    """fp64 math attention, in chunks of heads; gradients by torch.autograd on it."""
    B, H = p["B"], p["H"]
    flat = {k: t.double().reshape(B * H, t.shape[2], t.shape[3]) for k, t in inputs.items()}
    outs = []
    for i in range(0, B * H, REF_CHUNK):
        q, k, v = (flat[n][i:i + REF_CHUNK] for n in ("q", "k", "v"))
        if p.get("bwd"):
            q, k, v = (t.requires_grad_() for t in (q, k, v))
            o, _ = _math_attention(q, k, v, p["causal"])
            outs.append(torch.autograd.grad(o, (q, k, v), flat["do"][i:i + REF_CHUNK]))
        else:
            outs.append(_math_attention(q, k, v, p["causal"]))
    parts = [torch.cat(col) for col in zip(*outs)]
    return tuple(t.reshape(B, H, *t.shape[1:]) for t in parts)


# Gradients need their own tolerance: dq, dk, dv name the tolerance key "<dtype>-grad" (see the tolerances).
GRAD_TOL = {"fp32": "fp32", "fp16": "fp16-grad", "bf16": "bf16-grad"}


def outputs(p):
    n_kv = p.get("N_kv", p["N"])
    if p.get("bwd"):
        dt, g = p["dtype"], GRAD_TOL[p["dtype"]]
        return [(_shape(p, p["N"]), dt, g), (_shape(p, n_kv), dt, g), (_shape(p, n_kv), dt, g)]
    return [(_shape(p, p["N"]), p["dtype"]), ((p["B"], p["H"], p["N"]), "fp32")]


def attn(B, H, N, D, causal, dtype, bwd=False, N_kv=None, layout="bhnd"):
    p = {"B": B, "H": H, "N": N, "D": D, "causal": causal, "dtype": dtype}
    if bwd:
        p["bwd"] = True
    if N_kv is not None and N_kv != N:
        p["N_kv"] = N_kv
    if layout != "bhnd":
        p["layout"] = layout
    return p


def _name(p):
    n = f"n{p['N']}" + (f"x{p['N_kv']}" if "N_kv" in p else "")
    tags = ("-causal" if p["causal"] else "") + (f"-{p['layout']}" if "layout" in p else "")
    return f"{p['dtype']}-b{p['B']}h{p['H']}{n}d{p['D']}{tags}"


CPU, BOTH, GPU = ("cpu",), ("cpu", "gpu"), ("gpu",)


def _cases():
    """CPU tier: the interpreter runs each program in numpy, so a handful of small shapes that still hit every
    path: N < block, ragged N, N_q != N_kv, causal, D = 16..128, strided (B, N, H, D) inputs. N = 1 appears only
    in the forward: with one key the gradients are exactly zero and no relative tolerance applies.
    GPU tier: bf16 and fp16 at the block sizes the fast configs use (N = 127, 128) and beyond."""
    cases = []
    fwd_cpu = [(attn(1, 2, 17, 16, True, "fp32"), CPU), (attn(2, 2, 64, 32, False, "fp32"), CPU),
               (attn(2, 2, 100, 64, True, "fp16"), BOTH), (attn(1, 2, 1, 64, False, "fp16"), CPU),
               (attn(1, 2, 33, 64, False, "fp16", N_kv=100), BOTH),
               (attn(1, 2, 77, 32, True, "fp16", layout="bnhd"), CPU), (attn(1, 2, 50, 128, True, "fp16"), CPU)]
    bwd_cpu = [(attn(1, 2, 17, 16, True, "fp32", bwd=True), CPU),
               (attn(2, 2, 100, 64, True, "fp16", bwd=True), BOTH),
               (attn(1, 2, 64, 32, False, "fp16", bwd=True), CPU),
               (attn(1, 2, 33, 64, False, "fp16", bwd=True, N_kv=80), BOTH),
               (attn(1, 2, 50, 128, False, "fp32", bwd=True), CPU)]
    for p, tiers in fwd_cpu:
        cases.append(Case(_name(p), "attention_fwd", p, tiers))
    for p, tiers in bwd_cpu:
        cases.append(Case(_name(p), "attention_bwd", p, tiers))
    for n in (1, 127, 128, 1000, 2048):
        for d in (64, 128):
            for causal in (False, True):
                p = attn(2, 3, n, d, causal, "bf16")
                cases.append(Case(_name(p), "attention_fwd", p, GPU))
    for causal in (False, True):
        for d in (64, 128):
            p = attn(2, 3, 1000, d, causal, "fp16")
            cases.append(Case(_name(p), "attention_fwd", p, GPU))
    for p in (attn(2, 3, 1000, 128, True, "bf16", layout="bnhd"), attn(1, 4, 500, 128, False, "bf16", N_kv=2048)):
        cases.append(Case(_name(p), "attention_fwd", p, GPU))
    for n in (3, 127, 1000, 2048):
        for d in (64, 128):
            for causal in (False, True):
                p = attn(2, 3, n, d, causal, "bf16", bwd=True)
                cases.append(Case(_name(p), "attention_bwd", p, GPU))
    for p in (attn(2, 3, 1000, 128, True, "fp16", bwd=True), attn(2, 3, 1000, 64, False, "fp16", bwd=True),
              attn(2, 3, 1000, 128, True, "bf16", bwd=True, layout="bnhd"),
              attn(1, 4, 500, 128, False, "bf16", bwd=True, N_kv=2048)):
        cases.append(Case(_name(p), "attention_bwd", p, GPU))
    return cases


def hidden_cases(seed):
    """Shapes drawn from the grading seed: an instructor's secret seed gives sequence lengths nobody has seen."""
    rng = random.Random(seed * 7919 + 4)
    out = []
    for entry, bwd in (("attention_fwd", False), ("attention_bwd", True)):
        small = attn(1, 2, rng.randint(2, 90), rng.choice((32, 64)), rng.random() < 0.5, "fp16", bwd=bwd)
        out.append(Case("seeded-" + _name(small), entry, small, CPU))
        big = attn(rng.randint(1, 3), rng.randint(1, 5), rng.randint(2, 3000), rng.choice((64, 128)),
                   rng.random() < 0.5, "bf16", bwd=bwd)
        out.append(Case("seeded-" + _name(big), entry, big, GPU))
    return out


# ---- speed -----------------------------------------------------------------------------------------

def _sdpa(inputs, p, backend):
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(backend):
        if not p.get("bwd"):
            return F.scaled_dot_product_attention(inputs["q"], inputs["k"], inputs["v"], is_causal=p["causal"])
        q, k, v = (inputs[n].detach().requires_grad_() for n in ("q", "k", "v"))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=p["causal"])
        return torch.autograd.grad(o, (q, k, v), inputs["do"])


def sdpa_flash(inputs, p):
    """torch SDPA restricted to its FlashAttention-2 backend (forward, or forward + backward)."""
    from torch.nn.attention import SDPBackend
    return _sdpa(inputs, p, SDPBackend.FLASH_ATTENTION)


_CUDNN_STATE = {}


def sdpa_cudnn(inputs, p):
    """torch SDPA restricted to cuDNN's fused attention. Where this torch build or GPU has none, the flash
    backend stands in (said once on stderr) so the rest of the lab still grades."""
    from torch.nn.attention import SDPBackend
    if not _CUDNN_STATE.get("missing"):
        try:
            return _sdpa(inputs, p, SDPBackend.CUDNN_ATTENTION)
        except RuntimeError as exc:
            _CUDNN_STATE["missing"] = True
            print(f"lab04: cuDNN attention unavailable ({str(exc).splitlines()[0][:200]}); the sdpa_cudnn "
                  "benchmark uses the flash backend instead", file=sys.stderr)
    return _sdpa(inputs, p, SDPBackend.FLASH_ATTENTION)


def _tiers(*pairs):
    return tuple(SpeedTier(r, f) for r, f in pairs)


BENCH = dict(B=4, H=16, N=4096, D=128, dtype="bf16")
BENCHMARKS = [
    Benchmark("fwd-causal-bf16-b4h16n4096d128", "attention_fwd", attn(causal=True, **BENCH), "sdpa_flash",
              _tiers((0.6, 0.5), (0.8, 0.75), (1.0, 1.0)), points=3,
              target_note="full marks at SDPA flash speed (~308 TFLOP/s on an H100 SXM)"),
    # informational (always "pass", no points; the ratio is in the report). Stretch goal: 0.8x. cuDNN's
    # Hopper kernel uses TMA, wgmma pipelines and warp specialization, which a plain Triton loop does not.
    Benchmark("fwd-causal-bf16-b4h16n4096d128-vs-cudnn", "attention_fwd", attn(causal=True, **BENCH), "sdpa_cudnn",
              _tiers((0.0, 1.0)), points=0, target_note="informational; stretch goal 0.8x cuDNN"),
    Benchmark("fwd-bf16-b4h16n4096d128", "attention_fwd", attn(causal=False, **BENCH), "sdpa_flash",
              _tiers((0.6, 0.5), (0.75, 0.75), (0.9, 1.0)), points=2,
              target_note="non-causal: no diagonal, every block full"),
    Benchmark("fwd+bwd-causal-bf16-b4h16n4096d128", "attention_bwd", attn(causal=True, bwd=True, **BENCH),
              "sdpa_flash", _tiers((0.4, 0.5), (0.55, 0.75), (0.7, 1.0)), points=3,
              target_note="forward + backward (the timed call runs both), vs SDPA flash forward + backward"),
]


def flops(p):
    """Forward: two matmuls of 2*N_q*N_kv*D each per head (4*B*H*N_q*N_kv*D), half of it when causal.
    Backward: 2.5x the forward (five matmuls: S recomputed, dV, dP, dQ, dK), the FlashAttention papers'
    convention. A backward entry's timed call runs forward + backward, so it counts 3.5x."""
    fwd = 4.0 * p["B"] * p["H"] * p["N"] * p.get("N_kv", p["N"]) * p["D"] * (0.5 if p["causal"] else 1.0)
    return fwd * (3.5 if p.get("bwd") else 1.0)


def bytes_moved(p):
    """Compulsory HBM traffic: q, k, v read and o, lse written (+ dO, o read, dq, dk, dv written backward)."""
    size = DTYPES[p["dtype"]].itemsize
    nq, nkv, bh, d = p["N"], p.get("N_kv", p["N"]), p["B"] * p["H"], p["D"]
    fwd = bh * ((2 * nq + 2 * nkv) * d * size + nq * 4)
    bwd = bh * ((4 * nq + 4 * nkv) * d * size + nq * 8)
    return fwd + (bwd if p.get("bwd") else 0)


def sweep(entry):
    bwd = entry == "attention_bwd"
    if not torch.cuda.is_available():
        return [attn(1, 2, n, 32, True, "fp16", bwd=bwd) for n in (32, 64, 128)]
    return [attn(4, 16, n, 128, True, "bf16", bwd=bwd) for n in (1024, 2048, 4096, 8192, 16384)]


def hints(kind, p):
    if p.get("causal") and kind in ("values", "edge"):
        return ("causal: the diagonal block needs the mask j <= i; blocks left of it need none; blocks right of "
                "it must not be visited at all")
    if kind in ("nan", "unwritten"):
        return ("a fully masked row gives exp(-inf - -inf) = NaN: start m at -inf but make sure every row sees "
                "at least one key before the first rescale; mask loads past N with other=0")
    return ""


SPEC = LabSpec(
    id="lab04",
    title="FlashAttention-2 in Triton (forward and backward)",
    path=PATH,
    seed_topic="FlashAttention V1/V2: tiling to cut HBM traffic (重中之重)",
    student_files=(FILE,),
    entries=ENTRIES,
    load_entry=load_entry,
    make_inputs=make_inputs,
    call=call,
    reference=reference,
    outputs=outputs,
    # Set from an emulation of the kernel's roundings (P and dS rounded to the dtype before their matmuls, o
    # rounded once and reused for delta) against this reference: worst element over 3 seeds x N in {3, 127,
    # 1000, 2048} x D in {64, 128} x causal, B=2, H=3, as (|err| - rtol*|ref|) / rms(ref); tolerance ~2x that.
    # fp32 (CPU tier; lse in every case): ~4e-6 (sums of N and D fp32 terms); 1e-4 rejects TF32 or fp16
    #   products (~1e-3).
    # o: fp16 9e-4, bf16 7.8e-3 (the rounding of P, 2^-11 / 2^-8, and of o itself); an fp8 P would be ~16x.
    # dq, dk, dv: fp16 4.9e-2, bf16 0.38. Sums over N with cancellation (sum_j dS_ij = 0, so a key's common
    #   offset cancels in dq but its rounding does not), and delta = rowsum(dO * O) uses the rounded o as
    #   FlashAttention-2 and SDPA do. An element test cannot be tight here for bf16; the fp16 and fp32 cases
    #   carry the precision check of the backward, bf16 catches what is structurally wrong.
    tolerances={"fp32": Tolerance(rtol=1e-4, atol_rms=1e-4),
                "fp16": Tolerance(rtol=2e-3, atol_rms=2e-3),
                "bf16": Tolerance(rtol=1.6e-2, atol_rms=1.6e-2),
                "fp16-grad": Tolerance(rtol=4e-3, atol_rms=0.1),
                "bf16-grad": Tolerance(rtol=3e-2, atol_rms=0.75)},
    cases=_cases(),
    hidden_cases=hidden_cases,
    benchmarks=BENCHMARKS,
    salt=('q',),
    salt_scale=0.25,    # 1-4x q's RMS per row, inside realistic()'s per-row scales [0.25, 4] that the tolerances
                        # were set on; still 0.8% of o's elements out of tolerance for a call answered with
                        # another call's salt (fp32 emulation, B1 H4 N2048 d128 causal), 6.4% at 1.0
    baselines={"sdpa_flash": sdpa_flash, "sdpa_cudnn": sdpa_cudnn},
    flops=flops,
    bytes_moved=bytes_moved,
    compute_unit=lambda p: "tensor_" + p["dtype"],
    blocked_ops=("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
                 "_flash_attention_forward", "_efficient_attention_forward", "mm", "bmm", "addmm", "baddbmm",
                 "_softmax"),
    forbidden_ops=(r"^aten::_?scaled_dot_product", r"^aten::_(flash|efficient|cudnn)_attention",
                   r"^aten::_fused_sdp", r"^aten::(mm|bmm|matmul|addmm|baddbmm|addbmm|linear|einsum|tensordot|mv|dot)$",
                   r"^aten::(_?softmax|_?log_softmax|_softmax_backward_data|logsumexp)$"),
    forbidden_kernels=("flash_fwd", "flash_bwd", "fmha", "cudnn", "xmma", "cutlass", "nvjet", "gemm", "cublas",
                       r"^sm\d+_", r"^(ampere|hopper)_"),
    time_limit_s=300.0,
    sweep=sweep,
    hints=hints,
    notebook="lab04_flash_attention.ipynb",
)
