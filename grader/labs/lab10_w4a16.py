"""Lab 10 spec: W4A16 -- 4-bit weights, 16-bit activations. Quantization (RTN, GPTQ, AWQ), int32 packing in
the GPTQ and AWQ layouts, and a Triton GEMM that reads packed weights and dequantizes them in registers.

Two student files: quantize.py (plain PyTorch; checked exactly where the answer is an integer) and
w4a16_gemm.py (the Triton kernel; checked against dequantize-then-matmul in fp64 and timed against a
dense bf16 torch.matmul). Every params dict names its entry in params["op"] (checked at import).

How the quantizers are checked exactly. RTN, GPTQ and AWQ are deterministic algorithms, but a float
computation that lands within an ulp of a rounding boundary (x.5 in code units) may round either way in
fp32 vs fp64, and for GPTQ one flipped code changes every later row. The input generator therefore builds
weights whose every rounding decision is at least MARGIN (0.05 code units) from a boundary: for RTN by
nudging the group minimum (which sets the zero point) and each weight that falls within the margin; for
GPTQ by running GPTQ in fp64 while generating and nudging each row, just before it is quantized, by the
same rule (its corrections from earlier rows are known by then). fp32 implementations stay within 1e-4
code units of fp64 here (measured over orders and inverses, see tests/test_lab10.py), so any correct
implementation of the algorithm as specified gives the reference's integers, and comparing codes with
integer equality is fair. A GPTQ without error compensation returns RTN's codes and fails; the
reference GPTQ's output error on these inputs is below 0.65x RTN's (worst of 40 seeds; the tests assert
< 0.8x).

AWQ's answer is a scale vector (the best point of a grid search) and the loss curve over the grid.
Losses barely move when a code flips (the rounding error of a weight on a boundary is +-s/2 either
way), so they are compared at rtol 1e-3; the generator redraws inputs whose best and second-best grid
points are within 0.1% of each other, so the argmin is unambiguous.

The quantizers run on the CPU in both tiers (quantization is an offline step; `call` moves the inputs to
the CPU and the outputs back): AWQ's loss needs matmuls, and on a GPU those would be cuBLAS kernels that
the GEMM's kernel audit forbids. The GEMM entry runs under a guard that rejects dense matmul ops
(aten::mm and friends) inside w4a16_matmul: blocked_ops would block them in the whole student process,
AWQ included.
"""

from __future__ import annotations

import functools
import math
import random

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .. import REPO_ROOT
from ..inputs import realistic
from ..loader import import_file
from ..spec import DTYPES, Benchmark, Case, EntryPoint, LabSpec, SpeedTier, Tolerance

PATH = "stage2_llm/lab10_w4a16"
QUANT_FILE = "quantize.py"
GEMM_FILE = "w4a16_gemm.py"
GROUP = 128
MAX_Q = 15
MARGIN = 0.05                     # code units between any rounding decision and a boundary (x.5)
AWQ_GAP = 1e-3                    # relative gap between the best and second-best AWQ grid losses
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
GPTQ_ORDER = tuple(range(8))
OUTLIER_CHANNELS = 1 / 64         # fraction of input channels whose activations are scaled up
OUTLIER_SCALE = (10.0, 30.0)      # by a factor drawn from this range
LATENT_NOISE = 0.2                # independent part of each activation channel (see _calibration)

QUANT_ENTRIES = ("rtn_quantize", "dequantize", "pack_gptq", "unpack_gptq", "pack_awq", "unpack_awq",
                 "gptq_quantize", "awq_search")
ENTRIES = {
    "rtn_quantize": EntryPoint("rtn_quantize", (QUANT_FILE,), "python",
                               "rtn_quantize(w, group_size) -> (q, scales, zeros) in quantize.py"),
    "dequantize": EntryPoint("dequantize", (QUANT_FILE,), "python",
                             "dequantize(q, scales, zeros, group_size) -> w_hat in quantize.py"),
    "pack_gptq": EntryPoint("pack_gptq", (QUANT_FILE,), "python",
                            "pack_gptq(q, zeros) -> (qweight (K/8, N), qzeros (G, N/8)) in quantize.py"),
    "unpack_gptq": EntryPoint("unpack_gptq", (QUANT_FILE,), "python",
                              "unpack_gptq(qweight, qzeros) -> (q, zeros) in quantize.py"),
    "pack_awq": EntryPoint("pack_awq", (QUANT_FILE,), "python",
                           "pack_awq(q, zeros) -> (qweight (K, N/8), qzeros (G, N/8)), interleaved"),
    "unpack_awq": EntryPoint("unpack_awq", (QUANT_FILE,), "python",
                             "unpack_awq(qweight, qzeros) -> (q, zeros) in quantize.py"),
    "gptq_quantize": EntryPoint("gptq_quantize", (QUANT_FILE,), "python",
                                "gptq_quantize(w, h, scales, zeros, group_size, damp) -> q in quantize.py"),
    "awq_search": EntryPoint("awq_search", (QUANT_FILE,), "python",
                             "awq_search(w, x, group_size, n_grid) -> (scales, losses) in quantize.py"),
    "w4a16_matmul": EntryPoint("w4a16_matmul", (GEMM_FILE,), "triton",
                               "w4a16_matmul(x, qweight, scales, qzeros, group_size) in w4a16_gemm.py"),
}

# ---- the guard around the GEMM ----------------------------------------------------------------------

# Dense products the GEMM must not hand to a library (cuBLAS, MKL, torch's int4 kernels), whatever the
# Python spelling (x @ w, F.linear, einsum, a 1x1 convolution all end in one of these).
DENSE_MATMUL_OPS = frozenset({
    "mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "vdot", "matmul", "linear",
    "_addmm_activation", "einsum", "tensordot", "convolution", "_convolution", "_int_mm", "_scaled_mm",
    "_weight_int4pack_mm", "_weight_int4pack_mm_for_cpu", "_weight_int8pack_mm", "_mixed_dtypes_linear",
})


class NoDenseMatmul(TorchDispatchMode):
    """Inside w4a16_matmul, a dense matmul op raises: dequantizing W into memory and calling torch.matmul
    is what this lab replaces (and reads 4x the bytes the kernel should)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if name in DENSE_MATMUL_OPS:
            raise RuntimeError(f"lab10: aten::{name} is not allowed in w4a16_matmul (a dense matmul on "
                               "dequantized weights is what this lab replaces); compute the product in "
                               "your Triton kernel")
        return func(*args, **(kwargs or {}))


def _guarded(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with NoDenseMatmul():
            return fn(*args, **kwargs)
    return run


_MODULES: dict[str, object] = {}


def load_entry(name, files):
    f = ENTRIES[name].files[0]
    key = str(files[f])
    if key not in _MODULES:
        _MODULES[key] = import_file(files[f], REPO_ROOT / PATH)
    fn = getattr(_MODULES[key], name)
    return _guarded(fn) if name == "w4a16_matmul" else fn


# ---- reference quantization (fp64; also used to build inputs) ---------------------------------------

def rtn_grid(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales (G, N), zeros (G, N)) of RTN, in w's float dtype: mn = min(min, 0), mx = max(max, 0),
    s = (mx - mn) / 15 (1 where that is 0), z = clamp(round(-mn / s), 0, 15)."""
    K, N = w.shape
    wg = w.reshape(K // group, group, N)
    mn, mx = wg.amin(1).clamp(max=0), wg.amax(1).clamp(min=0)
    s = (mx - mn) / MAX_Q
    s = torch.where(s > 0, s, torch.ones_like(s))
    return s, torch.round(-mn / s).clamp(0, MAX_Q)


def _rows(t: torch.Tensor, group: int) -> torch.Tensor:
    return t.repeat_interleave(group, 0)


def rtn_codes(w, s, z, group):
    return (torch.round(w / _rows(s, group)) + _rows(z, group)).clamp(0, MAX_Q)


def dequant(q, s, z, group):
    return (q.double() - _rows(z, group).double()) * _rows(s, group).double()


def pack(q: torch.Tensor, dim: int, order) -> torch.Tensor:
    """Codes -> int32 words, built in int64 and wrapped to int32 (two's complement) at the end."""
    q = q.to(torch.int64).movedim(dim, -1)
    q = q.reshape(*q.shape[:-1], q.shape[-1] // 8, 8)
    word = sum(q[..., src] << (4 * j) for j, src in enumerate(order))
    word = torch.where(word >= 2**31, word - 2**32, word)
    return word.to(torch.int32).movedim(-1, dim).contiguous()


def unpack(word: torch.Tensor, dim: int, order) -> torch.Tensor:
    w = word.to(torch.int64).movedim(dim, -1) & 0xFFFFFFFF       # the bits, as a non-negative integer
    q = torch.empty(*w.shape, 8, dtype=torch.int64, device=w.device)
    for j, dst in enumerate(order):
        q[..., dst] = (w >> (4 * j)) & 0xF
    return q.reshape(*w.shape[:-1], -1).movedim(-1, dim).to(torch.int32).contiguous()


def _upper_inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    H = h.double().clone()
    H.diagonal().add_(damp * H.diagonal().mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)


def gptq(w, h, s, z, group, damp, margin: float | None = None):
    """GPTQ on a fixed grid, fp64, rows in order. With `margin`, also nudge each row just before it is
    quantized so that every decision is >= margin code units from a boundary (input generation only);
    returns (codes, the original weights with the same nudges applied)."""
    W = w.double().clone()
    W_orig = w.double().clone()
    U = _upper_inverse_cholesky(h, damp)
    S, Z = _rows(s.double(), group), _rows(z.double(), group)
    Q = torch.empty_like(W)
    for k in range(W.shape[0]):
        if margin is not None:
            shift = _nudge(W[k] / S[k] + Z[k], margin) * S[k]
            W[k] += shift
            W_orig[k] += shift
        q = (torch.round(W[k] / S[k]) + Z[k]).clamp(0, MAX_Q)
        e = (W[k] - (q - Z[k]) * S[k]) / U[k, k]
        W[k + 1:] -= U[k, k + 1:, None] * e[None, :]
        Q[k] = q
    return Q.to(torch.int32), W_orig


def _nudge(u: torch.Tensor, margin: float) -> torch.Tensor:
    """Shift (in code units) moving every u within `margin` of a rounding boundary b in -0.5..15.5 to
    distance `margin`, on its own side; 0 elsewhere (outside the grid u is clamped: no boundary there)."""
    b = torch.floor(u) + 0.5
    d = u - b
    near = (d.abs() < margin) & (b >= -0.5) & (b <= MAX_Q + 0.5)
    return torch.where(near, torch.where(d >= 0, margin - d, -margin - d), torch.zeros_like(u))


def awq(w, x, group, n_grid, dtype=torch.float64):
    """AWQ's scale search as quantize.py specifies it, in `dtype`: (best scales, losses)."""
    w, x = w.to(dtype), x.to(dtype)
    a = x.abs().mean(0).clamp(min=1e-6)
    y = x @ w
    den = y.pow(2).sum()
    losses, cands = [], []
    for i in range(n_grid + 1):
        s = a.pow(i / n_grid)
        s = s / s.mean()
        ws = w * s[:, None]
        sc, z = rtn_grid(ws, group)
        w_hat = (rtn_codes(ws, sc, z, group) - _rows(z, group)) * _rows(sc, group) / s[:, None]
        losses.append((x @ (w_hat - w)).pow(2).sum() / den)
        cands.append(s)
    losses = torch.stack(losses)
    return cands[int(torch.argmin(losses))], losses


def layer_error(x, w, w_hat) -> float:
    """||x (w_hat - w)||^2 / ||x w||^2 in fp64: the quantity GPTQ and AWQ minimize (tests, notebook)."""
    x, w = x.double(), w.double()
    return float((x @ (w_hat.double() - w)).pow(2).sum() / (x @ w).pow(2).sum())


# ---- inputs ---------------------------------------------------------------------------------------

def _weights(K, N, gen) -> torch.Tensor:
    """(K, N) fp64 weights: realistic rows of W^T, i.e. each output channel its own scale and offset."""
    return realistic((N, K), gen, "fp64").t().contiguous()


def _with_rtn_margin(w: torch.Tensor, group: int) -> torch.Tensor:
    """The same weights, moved (by < MARGIN steps) so every RTN decision is >= MARGIN from a boundary.

    The zero point z = round(t), t = -15 mn / (mx - mn), is a decision too: when t is near k + 0.5 the
    group minimum is lowered to put t at k + 0.5 + MARGIN (it stays the minimum). The group's extremes
    then sit at codes z - t and 15 + z - t, inside the margin; every other weight near a boundary moves
    to MARGIN on its own side, which keeps it between the extremes, so the grid does not change."""
    K, N = w.shape
    G = K // group
    wg = w.reshape(G, group, N).clone()
    imin, imax = wg.argmin(1, keepdim=True), wg.argmax(1, keepdim=True)
    mn, mx = wg.amin(1).clamp(max=0), wg.amax(1).clamp(min=0)
    t = MAX_Q * -mn / (mx - mn)
    fix = ((t - t.floor() - 0.5).abs() < MARGIN) & (mn < 0)
    t_new = torch.where(fix, t.floor() + 0.5 + MARGIN, t)
    mn_new = torch.where(fix, -t_new * mx / (MAX_Q - t_new), mn)
    wg.scatter_(1, imin, torch.where(fix[:, None], mn_new[:, None], wg.gather(1, imin)))
    s, z = (mx - mn_new) / MAX_Q, torch.round(t_new)
    extreme = torch.zeros_like(wg, dtype=torch.bool).scatter_(1, imin, True).scatter_(1, imax, True)
    shift = _nudge(wg / s[:, None] + z[:, None], MARGIN) * s[:, None]
    wg = torch.where(extreme, wg, wg + shift)
    out = wg.reshape(K, N)
    s2, z2 = rtn_grid(out, group)
    if not (torch.equal(z2, z) and torch.allclose(s2, s, rtol=1e-12, atol=0)):
        raise RuntimeError("lab10 spec: the RTN margin construction changed the grid")
    return out


def _calibration(n_tok, K, gen) -> torch.Tensor:
    """(n_tok, K) fp64 activations shaped like an LLM's: correlated channels (a rank-K/4 latent mixed into
    all K channels, plus 20% independent noise) and outlier channels (K/64 of them scaled 10-30x). The
    correlations are what GPTQ's error feedback exploits, the outliers what AWQ's scaling protects; with
    i.i.d. channels GPTQ would only fit the noise of the sampled Hessian."""
    r = max(1, K // 4)
    mix = torch.randn(r, K, generator=gen, dtype=torch.float64) / math.sqrt(r)
    x = realistic((n_tok, r), gen, "fp64") @ mix + LATENT_NOISE * realistic((n_tok, K), gen, "fp64")
    n_out = max(1, int(K * OUTLIER_CHANNELS))
    idx = torch.randperm(K, generator=gen)[:n_out]
    lo, hi = OUTLIER_SCALE
    x[:, idx] *= torch.empty(n_out, dtype=torch.float64).uniform_(lo, hi, generator=gen)
    return x


def _random_words(shape, gen) -> torch.Tensor:
    """int32 words with all 32 bits uniform: every nibble value in every position, the sign bit set in half."""
    return torch.randint(-2**31, 2**31, shape, generator=gen, dtype=torch.int64).to(torch.int32)


def _codes(shape, gen) -> torch.Tensor:
    q = torch.randint(0, MAX_Q + 1, shape, generator=gen, dtype=torch.int32)
    if shape[0] >= 16:
        q[:8] = MAX_Q          # whole words of 0xF: the GPTQ and AWQ words are 0xFFFFFFFF = -1
        q[8:16] = 0
        q[15] = MAX_Q          # GPTQ words 0xF0000000: only the top nibble, the sign bit, set
    return q


def _padded_rows(x: torch.Tensor, gen) -> torch.Tensor:
    """Same values inside wider rows whose tail is NaN: reading past column K shows."""
    pad = 3 + int(torch.randint(0, 29, (1,), generator=gen))
    wide = torch.full((x.shape[0], x.shape[1] + pad), float("nan"), dtype=x.dtype)
    wide[:, :x.shape[1]] = x
    return wide[:, :x.shape[1]]


def make_inputs(p, gen):
    op, K, g = p["op"], p["K"], p["group"]
    G = K // g
    if op == "rtn_quantize":
        return {"w": _with_rtn_margin(_weights(K, p["N"], gen), g).float()}
    if op == "dequantize":
        N = p["N"]
        return {"q": _codes((K, N), gen), "scales": realistic((G, N), gen, "fp32").abs() * 0.02 + 1e-3,
                "zeros": _codes((G, N), gen)}
    if op in ("pack_gptq", "pack_awq"):
        return {"q": _codes((K, p["N"]), gen), "zeros": _codes((G, p["N"]), gen)}
    if op == "unpack_gptq":
        return {"qweight": _random_words((K // 8, p["N"]), gen), "qzeros": _random_words((G, p["N"] // 8), gen)}
    if op == "unpack_awq":
        return {"qweight": _random_words((K, p["N"] // 8), gen), "qzeros": _random_words((G, p["N"] // 8), gen)}
    if op == "gptq_quantize":
        w = _with_rtn_margin(_weights(K, p["N"], gen), g)
        s, z = rtn_grid(w, g)
        s = s.float()
        if p["hessian"] == "identity":
            h = torch.eye(K, dtype=torch.float32)
        else:
            x = _calibration(p["n_tok"], K, gen)
            h = (x.t() @ x).float()
            _, w = gptq(w, h, s, z, g, p["damp"], margin=MARGIN)
        return {"w": w.float(), "h": h, "scales": s, "zeros": z.to(torch.int32)}
    if op == "awq_search":
        for _ in range(20):
            w = _weights(K, p["N"], gen).float()
            x = _calibration(p["n_tok"], K, gen).float()
            _, losses = awq(w, x, g, p["n_grid"], dtype=torch.float32)
            best2 = losses.sort().values[:2]
            if best2[1] - best2[0] > AWQ_GAP * best2[0]:
                return {"w": w, "x": x}
        raise RuntimeError("lab10 spec: no AWQ input with an unambiguous best grid point in 20 draws")
    if op == "w4a16_matmul":
        M, N, dt = p["M"], p["N"], p["dtype"]
        x = realistic((M, K), gen, dt)
        if p.get("layout") == "p":
            x = _padded_rows(x, gen)
        scales = (realistic((G, N), gen, "fp32").abs() * 0.01 + 2e-3).to(DTYPES[dt])
        return {"x": x, "qweight": _random_words((K // 8, N), gen), "scales": scales,
                "qzeros": _random_words((G, N // 8), gen)}
    raise KeyError(op)


def _on_cpu(fn, inputs, *names, **kwargs):
    """Call a quantizer with CPU copies of the inputs; return its outputs on the inputs' device."""
    dev = inputs[names[0]].device
    out = fn(*(inputs[n].cpu() for n in names), **kwargs)
    if isinstance(out, (tuple, list)):
        return tuple(o.to(dev) if isinstance(o, torch.Tensor) else o for o in out)
    return out.to(dev) if isinstance(out, torch.Tensor) else out


def call(fn, inputs, p):
    op, g = p["op"], p["group"]
    if op == "rtn_quantize":
        return _on_cpu(fn, inputs, "w", group_size=g)
    if op == "dequantize":
        return _on_cpu(fn, inputs, "q", "scales", "zeros", group_size=g)
    if op in ("pack_gptq", "pack_awq"):
        return _on_cpu(fn, inputs, "q", "zeros")
    if op in ("unpack_gptq", "unpack_awq"):
        return _on_cpu(fn, inputs, "qweight", "qzeros")
    if op == "gptq_quantize":
        return _on_cpu(fn, inputs, "w", "h", "scales", "zeros", group_size=g, damp=p["damp"])
    if op == "awq_search":
        return _on_cpu(fn, inputs, "w", "x", group_size=g, n_grid=p["n_grid"])
    return fn(inputs["x"], inputs["qweight"], inputs["scales"], inputs["qzeros"], group_size=g)


# ---- references (grading process only) --------------------------------------------------------------

def reference(inputs, p):
    op, g = p["op"], p["group"]
    if op == "rtn_quantize":
        w = inputs["w"].double()
        s, z = rtn_grid(w, g)
        return rtn_codes(w, s, z, g).to(torch.int32), s, z.to(torch.int32)
    if op == "dequantize":
        return dequant(inputs["q"], inputs["scales"], inputs["zeros"], g)
    order = AWQ_ORDER if op.endswith("awq") else GPTQ_ORDER
    qdim = 1 if op.endswith("awq") else 0
    if op.startswith("pack"):
        return pack(inputs["q"], qdim, order), pack(inputs["zeros"], 1, order)
    if op.startswith("unpack"):
        return unpack(inputs["qweight"], qdim, order), unpack(inputs["qzeros"], 1, order)
    if op == "gptq_quantize":
        q, _ = gptq(inputs["w"].cpu(), inputs["h"].cpu(), inputs["scales"].cpu(), inputs["zeros"].cpu(), g,
                    p["damp"])
        return q.to(inputs["w"].device)
    if op == "awq_search":
        s, losses = awq(inputs["w"].cpu(), inputs["x"].cpu(), g, p["n_grid"])
        dev = inputs["w"].device
        return s.to(dev), losses.to(dev)
    # w4a16_matmul: dequantize, then multiply in fp64
    q = unpack(inputs["qweight"], 0, GPTQ_ORDER)
    z = unpack(inputs["qzeros"], 1, GPTQ_ORDER)
    return inputs["x"].double() @ dequant(q, inputs["scales"], z, g)


def outputs(p):
    op, K, g = p["op"], p["K"], p["group"]
    G, N = K // g, p.get("N")
    ex = "exact"
    if op == "rtn_quantize":
        return [((K, N), "int32", ex), ((G, N), "fp32", "scale"), ((G, N), "int32", ex)]
    if op == "dequantize":
        return [((K, N), "fp32", "dequant")]
    if op == "pack_gptq":
        return [((K // 8, N), "int32", ex), ((G, N // 8), "int32", ex)]
    if op == "pack_awq":
        return [((K, N // 8), "int32", ex), ((G, N // 8), "int32", ex)]
    if op in ("unpack_gptq", "unpack_awq"):
        return [((K, N), "int32", ex), ((G, N), "int32", ex)]
    if op == "gptq_quantize":
        return [((K, N), "int32", ex)]
    if op == "awq_search":
        return [((K,), "fp32", "awq_scales"), ((p["n_grid"] + 1,), "fp32", "awq_loss")]
    return [((p["M"], N), p["dtype"])]


# ---- cases ----------------------------------------------------------------------------------------

def quant(op, K, N, group=GROUP, **extra):
    return {"op": op, "K": K, "N": N, "group": group, "dtype": "int32" if op != "awq_search" else "fp32",
            **extra}


def gemm(M, K, N, dtype, group=GROUP, layout="n"):
    return {"op": "w4a16_matmul", "M": M, "K": K, "N": N, "group": group, "dtype": dtype, "layout": layout}


def _name(p):
    op = p["op"]
    base = f"{p['K']}x{p['N']}" + (f"-g{p['group']}" if p["group"] != GROUP else "")
    if op == "w4a16_matmul":
        return f"{p['dtype']}-{p['M']}x{base}" + ("-padded" if p["layout"] == "p" else "")
    if op == "gptq_quantize":
        return f"{p['hessian']}-{base}" + (f"-damp{p['damp']:g}" if p["damp"] != 0.01 else "")
    if op == "awq_search":
        return f"{base}-tok{p['n_tok']}-grid{p['n_grid']}"
    return base


BOTH = ("cpu", "gpu")
# Quantizers (both tiers, run on the CPU): K a multiple of the group (and of 8), N of 8 where it is packed.
_QUANT_SHAPES = {
    "rtn_quantize": [(256, 64, GROUP), (512, 136, GROUP), (256, 37, 64), (128, 40, 32)],
    "dequantize": [(256, 64, GROUP), (256, 40, 64)],
    "pack_gptq": [(256, 64, GROUP), (512, 136, GROUP), (128, 8, 32), (256, 24, 64)],
    "unpack_gptq": [(256, 64, GROUP), (512, 136, GROUP), (128, 8, 32)],
    "pack_awq": [(256, 64, GROUP), (512, 136, GROUP), (128, 8, 32), (256, 24, 64)],
    "unpack_awq": [(256, 64, GROUP), (512, 136, GROUP), (128, 8, 32)],
}
_GPTQ = [dict(K=256, N=64, hessian="identity", damp=0.01), dict(K=256, N=256, hessian="calib", n_tok=1024, damp=0.01),
         dict(K=256, N=128, hessian="calib", n_tok=1024, damp=0.1)]
_AWQ = [dict(K=256, N=128, n_tok=512, n_grid=20), dict(K=256, N=64, group=64, n_tok=256, n_grid=10)]
# GEMM under the interpreter: M = 1 (decode), 5, 16, 33 (past one 16-row tile and the decode bucket);
# N not a multiple of the column tile (200, 136, 72); group sizes 64 and 32; rows padded with NaN.
_GEMM_CPU = [(1, 256, 64, GROUP, "n"), (5, 256, 200, GROUP, "n"), (16, 384, 136, GROUP, "n"),
             (33, 256, 72, GROUP, "n"), (7, 256, 64, GROUP, "p"), (3, 256, 64, 64, "n"), (17, 128, 8, 32, "n")]
# On the GPU: the benchmark shapes at decode and prefill M, Llama's 11008 down-projection, N that is not a
# multiple of any column tile, small groups, padded rows, and M = 4096 (the large-prefill configs).
_GEMM_GPU = [(1, 4096, 4096, GROUP, "n"), (16, 4096, 4096, GROUP, "n"), (7, 4096, 14336, GROUP, "n"),
             (128, 4096, 14336, GROUP, "n"), (100, 11008, 4096, GROUP, "n"), (333, 4096, 4104, GROUP, "n"),
             (1, 4096, 4104, GROUP, "n"), (64, 2048, 2048, GROUP, "p"), (3, 4096, 4096, 64, "n"),
             (200, 4096, 4096, 32, "n"), (4096, 4096, 4096, GROUP, "n")]


def _cases():
    cases = []
    for op, shapes in _QUANT_SHAPES.items():
        for K, N, g in shapes:
            p = quant(op, K, N, g)
            cases.append(Case(_name(p), op, p, BOTH))
    for op, kws in (("gptq_quantize", _GPTQ), ("awq_search", _AWQ)):
        for kw in kws:
            p = quant(op, **kw)
            cases.append(Case(_name(p), op, p, BOTH))
    for M, K, N, g, layout in _GEMM_CPU:
        for dt in ("fp32", "fp16"):
            p = gemm(M, K, N, dt, g, layout)
            cases.append(Case(_name(p), "w4a16_matmul", p, ("cpu",)))
    for M, K, N, g, layout in _GEMM_GPU:
        for dt in ("fp16", "bf16"):
            p = gemm(M, K, N, dt, g, layout)
            cases.append(Case(_name(p), "w4a16_matmul", p, ("gpu",)))
    return cases


def hidden_cases(seed):
    """Shapes drawn from the grading seed: widths and batch sizes nobody has tuned for."""
    rng = random.Random(seed * 7919 + 10)
    out = []
    for op in ("pack_gptq", "unpack_awq"):
        p = quant(op, 128 * rng.randint(1, 4), 8 * rng.randint(1, 40))
        out.append(Case("seeded-" + _name(p), op, p, BOTH))
    p = gemm(rng.randint(1, 40), 128 * rng.randint(1, 3), 8 * rng.randint(1, 40), rng.choice(("fp32", "fp16")))
    out.append(Case("seeded-" + _name(p), "w4a16_matmul", p, ("cpu",)))
    for m in (rng.randint(1, 16), rng.randint(17, 3000)):
        p = gemm(m, 128 * rng.randint(8, 64), 8 * rng.randint(64, 2048), "bf16")
        out.append(Case("seeded-" + _name(p), "w4a16_matmul", p, ("gpu",)))
    return out


# ---- speed ----------------------------------------------------------------------------------------

def bytes_moved(p):
    """What the GEMM must move at least once: packed weights (K N / 2), scales (2 B) and packed zeros
    (0.5 B) per group and column, x in and y out."""
    if p["op"] != "w4a16_matmul":
        return None
    M, K, N, g = p["M"], p["K"], p["N"], p["group"]
    e = DTYPES[p["dtype"]].itemsize
    return float(K * N / 2 + (K // g) * N * (e + 0.5) + M * K * e + M * N * e)


def dense_bytes(p):
    """What the dense baseline moves: the bf16 weight (2 B per weight) plus x and y."""
    e = DTYPES[p["dtype"]].itemsize
    return float(p["K"] * p["N"] * e + p["M"] * (p["K"] + p["N"]) * e)


def flops(p):
    return float(2 * p["M"] * p["N"] * p["K"]) if p["op"] == "w4a16_matmul" else None


_DENSE: dict[tuple, torch.Tensor] = {}


def torch_dense_matmul(inputs, p):
    """What a user runs without 4-bit weights: torch.matmul(x, W) with W dense in x's dtype, (K, N)
    contiguous (cuBLAS). W is dequantized once per input set, outside the timed call."""
    qw = inputs["qweight"]
    key = (qw.data_ptr(), tuple(qw.shape), inputs["x"].dtype)
    if key not in _DENSE:
        if len(_DENSE) >= 3:                       # the benchmark rotates over 3 input sets
            _DENSE.pop(next(iter(_DENSE)))
        q, z = unpack(qw, 0, GPTQ_ORDER), unpack(inputs["qzeros"], 1, GPTQ_ORDER)
        _DENSE[key] = dequant(q, inputs["scales"], z, p["group"]).to(inputs["x"].dtype).contiguous()
    return torch.matmul(inputs["x"], _DENSE[key])


def _tiers(*pairs):
    return tuple(SpeedTier(r, f) for r, f in pairs)


# Decode reads the weights and little else: the packed format moves 0.5 + 2.5 / 128 bytes per weight
# against bf16's 2, an ideal 3.85x (3.88x counting the scales alone, the issue's 3.87x). Full marks at
# 2.5x (the target); launch latency and the tail of a ~5 us kernel cost the rest.
DECODE_TIERS = _tiers((1.5, 0.25), (2.0, 0.5), (2.25, 0.75), (2.5, 1.0))
# M = 128: still weight-bound for cuBLAS (128 FLOP per weight byte in bf16, under the ~295 ridge) but the
# dequantization is now paid by tensor-core work: full marks at 0.9x.
PREFILL_TIERS = _tiers((0.5, 0.25), (0.7, 0.5), (0.8, 0.75), (0.9, 1.0))
INFO = _tiers((0.0, 1.0))
BENCH_SHAPES = ((4096, 4096), (4096, 14336))          # (K, N): a Llama-3-8B q/o projection; up/gate


def _benchmarks():
    out = []
    for K, N in BENCH_SHAPES:
        for M in (1, 16):
            out.append(Benchmark(f"decode-bf16-M{M}-{K}x{N}", "w4a16_matmul", gemm(M, K, N, "bf16"), "torch_bf16",
                                 DECODE_TIERS, points=1.0,
                                 target_note="issue target >= 2.5x torch bf16 matmul (ideal 3.85x)"))
        out.append(Benchmark(f"prefill-bf16-M128-{K}x{N}", "w4a16_matmul", gemm(128, K, N, "bf16"), "torch_bf16",
                             PREFILL_TIERS, points=1.0, target_note="issue target >= 0.9x torch bf16 matmul"))
    for M in (512, 4096):
        out.append(Benchmark(f"prefill-bf16-M{M}-4096x14336", "w4a16_matmul", gemm(M, 4096, 14336, "bf16"),
                             "torch_bf16", INFO, points=0.0,
                             target_note="informational: compute-bound, where 4 bits stop paying"))
    return out


def sweep(entry):
    if entry != "w4a16_matmul":
        return []
    if not torch.cuda.is_available():
        return [gemm(m, 256, 64, "fp32") for m in (1, 4, 16, 33)]
    return [gemm(m, 4096, 14336, "bf16") for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)]


def hints(kind, p):
    op = p.get("op")
    if kind == "unwritten":
        return ("some outputs were never written (the grader fills them with NaN first): the grid must "
                "cover every (M, N) tile, and with split-K the last program of each tile must store y")
    if op in ("pack_gptq", "pack_awq"):
        return ("check the packing axis (GPTQ: 8 rows of K per word; AWQ and all zero points: 8 columns of "
                "N) and the nibble order (GPTQ in order; AWQ nibble j holds column 8c + [0,2,4,6,1,3,5,7][j])")
    if op in ("unpack_gptq", "unpack_awq"):
        return ("int32 >> is arithmetic: a word with 0xF in the top nibble is negative and (w >> 28) is -1, "
                "not 15 -- mask every nibble with & 0xF; AWQ's nibble order is [0,2,4,6,1,3,5,7]")
    if op == "rtn_quantize":
        return ("mn = min(min(w), 0), mx = max(max(w), 0) per group of rows and column; s = (mx - mn) / 15; "
                "z = round(-mn / s); q = clamp(round(w / s) + z, 0, 15)")
    if op == "dequantize":
        return "w_hat = (q - z) * s, with z and s repeated over the group_size rows of each group"
    if op == "gptq_quantize":
        return ("rows in order k = 0..K-1 on the given grid; damp H by damp * mean(diag(H)); U = upper "
                "Cholesky factor of H^-1; e = (w_k - w_hat_k) / U[k, k]; W[j] -= U[k, j] * e for j > k. "
                "With h = I it must equal RTN: if only the calibration cases fail, the error feedback "
                "is missing or uses the wrong row of U")
    if op == "awq_search":
        return ("a = mean |x| over tokens (clamped >= 1e-6); for alpha = i / n_grid: s = a^alpha / mean(a^alpha); "
                "loss = ||x (W_hat - W)||^2 / ||x W||^2 with W_hat = dequant(rtn(W * s)) / s; return the "
                "scales of the first smallest loss and all n_grid + 1 losses")
    if kind == "nan":
        return ("NaN/Inf: x rows are padded with NaN past column K (a K-mask or stride bug reads them), or "
                "the split-K reduction read a partial that was never written")
    return ("codes: (word >> 4 j) & 0xF for row 8 i + j; zero of column n: nibble n % 8 of qzeros[g, n // 8]; "
            "y = sum over groups of s[g] * (x_g @ (q_g - z_g)), accumulated in fp32")


SPEC = LabSpec(
    id="lab10",
    title="W4A16: 4-bit weights (RTN, GPTQ, AWQ; GPTQ/AWQ packing) and a dequantizing Triton GEMM",
    path=PATH,
    seed_topic="LLM inference: weight-only quantization (W4A16, GPTQ, AWQ) and the dequant-GEMM that "
               "turns 4x fewer weight bytes into decode speed",
    student_files=(QUANT_FILE, GEMM_FILE),
    entries=ENTRIES,
    load_entry=load_entry,
    make_inputs=make_inputs,
    call=call,
    reference=reference,
    outputs=outputs,
    tolerances={
        # Integers: codes, zero points, packed words. Equal or wrong.
        "exact": Tolerance(rtol=0.0, atol_rms=0.0),
        # fp32 (mx - mn) / 15: two roundings, <= 1.2e-7 relative; anything not computed this way is off by
        # far more (a different grid rule moves scales by percents).
        "scale": Tolerance(rtol=1e-6, atol_rms=0.0),
        # (q - z) * s in fp32: one rounding, 6e-8.
        "dequant": Tolerance(rtol=1e-6, atol_rms=0.0),
        # s = a^alpha / mean: an fp32 mean over the tokens and a pow, a few 1e-7.
        "awq_scales": Tolerance(rtol=1e-5, atol_rms=0.0),
        # Losses move ~1e-5 when fp32 rounding flips a code on a boundary (measured <= 3e-5).
        "awq_loss": Tolerance(rtol=1e-3, atol_rms=0.0),
        # GEMM: y = sum_k x_k (q - z)_k s_k. Accumulated in fp32 (sqrt(K) 2^-24 ~ 1e-6 of rms(y) at K = 4096)
        # and rounded once to the output dtype: rtol ~2u (u = 2^-11 fp16, 2^-8 bf16). A kernel that rounds
        # each dequantized weight (q - z) * s to x's dtype before the MMA (the common way) adds an error of
        # rms ~u / sqrt(3) * rms(y) per output, ~7 sigma of which is atol_rms: 2e-3 (fp16), 1.6e-2 (bf16).
        # Accumulating in fp16 (sqrt(K) u ~ 3e-2) or fp8 weights (2^-4) fail. fp32 (CPU tier): 1e-5.
        "fp32": Tolerance(rtol=1e-5, atol_rms=1e-5),
        "fp16": Tolerance(rtol=1e-3, atol_rms=2e-3),
        "bf16": Tolerance(rtol=8e-3, atol_rms=1.6e-2),
    },
    cases=_cases(),
    hidden_cases=hidden_cases,
    benchmarks=_benchmarks(),
    salt=('x',),
    baselines={"torch_bf16": torch_dense_matmul},
    flops=lambda p: flops(p),
    bytes_moved=bytes_moved,
    compute_unit=lambda p: "tensor_" + p["dtype"],
    # torch's own int4/int8 weight-only kernels do this lab's work: never allowed, in any entry.
    blocked_ops=("_weight_int4pack_mm", "_convert_weight_to_int4pack", "_weight_int4pack_mm_for_cpu",
                 "_convert_weight_to_int4pack_for_cpu", "_weight_int8pack_mm", "_dyn_quant_matmul_4bit",
                 "_dyn_quant_pack_4bit_weight", "_int_mm", "_mixed_dtypes_linear"),
    forbidden_ops=(
        r"^aten::(_weight_int4pack_mm\w*|_convert_weight_to_int4pack\w*|_weight_int8pack_mm|_dyn_quant_\w+"
        r"|_int_mm|_mixed_dtypes_linear|_scaled_mm)$",
        r"Torch-Compiled Region|CompiledFxGraph|TorchDynamo",
    ),
    # Library GEMM kernels on the GPU (only the GEMM entry launches kernels: the quantizers run on the CPU).
    # Your Triton kernel is named after its Python function and matches none of these.
    forbidden_kernels=("cublas", "cutlass", "xmma", "nvjet", r"^(ampere|volta|turing|hopper)_", r"^sm\d+_",
                       "gemmSN", "gemv", "splitKreduce", r"^triton_(per|red|poi|tem)_fused"),
    hints=hints,
    time_limit_s=300.0,          # the first GEMM call of each shape bucket autotunes (compiles) ~8 configs
    sweep=sweep,
    notebook="lab10_w4a16.ipynb",
)

for _c in SPEC.all_cases(0) + [Case(b.name, b.entry, b.params) for b in SPEC.benchmarks]:
    assert _c.params["op"] == _c.entry, f"lab10 spec: case {_c.name} has op {_c.params['op']} but entry {_c.entry}"
