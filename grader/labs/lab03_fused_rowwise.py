"""Lab 03 spec: memory-bound fusion in Triton -- softmax, RMSNorm forward/backward, LayerNorm forward.

Every op here reads a row, reduces it to one or two numbers and rewrites it: a handful of FLOPs per byte,
far below an H100's ridge point (~989e12 / 3.35e12 ~ 295 FLOP/byte for bf16), so the only thing that
matters for speed is moving each byte once. The speed grade is therefore mostly against a device copy
that moves exactly the bytes the op must move ("copy"), and partly against what a user would otherwise
run (torch eager); torch.compile is reported for information.

The four entries take different inputs, and the spec's functions (make_inputs, reference, outputs,
bytes_moved) see only a case's params, so every params dict names its op in params["op"] (always equal
to the case's entry; checked at import).
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from .. import REPO_ROOT
from ..inputs import realistic
from ..loader import import_file
from ..spec import DTYPES, Benchmark, Case, EntryPoint, LabSpec, SpeedTier, Tolerance

PATH = "stage1_foundations/lab03_fused_rowwise"
STUDENT_FILE = "rowwise.py"
OPS = ("softmax", "rmsnorm_fwd", "layernorm_fwd", "rmsnorm_bwd")
EPS = {"softmax": 0.0, "rmsnorm_fwd": 1e-6, "layernorm_fwd": 1e-5, "rmsnorm_bwd": 1e-6}

ENTRIES = {
    "softmax": EntryPoint("softmax", (STUDENT_FILE,), "triton",
                          "softmax(x) in rowwise.py: one program per row; online max/sum for wide rows"),
    "rmsnorm_fwd": EntryPoint("rmsnorm_fwd", (STUDENT_FILE,), "triton",
                              "rmsnorm_fwd(x, weight, eps) in rowwise.py"),
    "layernorm_fwd": EntryPoint("layernorm_fwd", (STUDENT_FILE,), "triton",
                                "layernorm_fwd(x, weight, bias, eps) in rowwise.py"),
    "rmsnorm_bwd": EntryPoint("rmsnorm_bwd", (STUDENT_FILE,), "triton",
                              "rmsnorm_bwd(dy, x, weight, eps) -> (dx, dw) in rowwise.py; dw via per-program "
                              "partial sums"),
}

_MODULES: dict[str, object] = {}


def load_entry(name, files):
    path = files[STUDENT_FILE]
    key = str(path)
    if key not in _MODULES:              # one import per file: the four entries share their module
        _MODULES[key] = import_file(path, REPO_ROOT / PATH)
    return getattr(_MODULES[key], name)


# ---- inputs ---------------------------------------------------------------------------------------

def _padded_rows(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Same values, but each row sits in a wider row whose tail holds NaN: a kernel that reads past
    column N (a missing or wrong mask) picks the NaN up, and one that assumes stride N reads garbage."""
    n = x.shape[-1]
    pad = 3 + int(torch.randint(0, 29, (1,), generator=gen))
    wide = torch.full(x.shape[:-1] + (n + pad,), float("nan"), dtype=x.dtype)
    wide[..., :n] = x
    return wide[..., :n]


def make_inputs(p, gen):
    shape, dt, n = tuple(p["shape"]), p["dtype"], p["shape"][-1]
    layout = p.get("layout", "n")

    def rows():
        x = realistic(shape, gen, dt)
        return _padded_rows(x, gen) if layout == "p" else x

    op = p["op"]
    if op == "softmax":
        return {"x": rows()}
    if op == "rmsnorm_fwd":
        return {"x": rows(), "weight": realistic((n,), gen, dt)}
    if op == "layernorm_fwd":
        return {"x": rows(), "weight": realistic((n,), gen, dt), "bias": realistic((n,), gen, dt)}
    if op == "rmsnorm_bwd":
        return {"x": rows(), "weight": realistic((n,), gen, dt), "dy": rows()}
    raise KeyError(op)


def perturb(inputs, p, gen):
    """Fresh values for one timed call (LabSpec.perturb): x (and dy) plus a random column vector. No
    row-wise op here is invariant to it, and an old answer cannot be turned into the new one for less
    than the op itself costs. New tensors, contiguous (the benchmarks' inputs are)."""
    out = dict(inputs)
    n = p["shape"][-1]
    for k in ("x", "dy"):
        if k in inputs:
            t = inputs[k]
            v = torch.randn(n, generator=gen).to(t.dtype)     # drawn on the CPU: both processes get the same
            # non_blocking: a blocking host-to-device copy would also synchronize the stream every timed call
            out[k] = t + v.to(t.device, non_blocking=True)
    return out


def call(fn, inputs, p):
    op = p["op"]
    if op == "softmax":
        return fn(inputs["x"])
    if op == "rmsnorm_fwd":
        return fn(inputs["x"], inputs["weight"], eps=p["eps"])
    if op == "layernorm_fwd":
        return fn(inputs["x"], inputs["weight"], inputs["bias"], eps=p["eps"])
    return fn(inputs["dy"], inputs["x"], inputs["weight"], eps=p["eps"])


# ---- references (fp64, grading process only) ------------------------------------------------------

def reference(inputs, p):
    op, eps = p["op"], p["eps"]
    x = inputs["x"].double()
    if op == "softmax":
        z = x - x.amax(dim=-1, keepdim=True)
        return z.exp() / z.exp().sum(dim=-1, keepdim=True)
    w = inputs["weight"].double()
    if op == "rmsnorm_fwd":
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * w
    if op == "layernorm_fwd":
        xc = x - x.mean(dim=-1, keepdim=True)
        return xc * torch.rsqrt(xc.pow(2).mean(dim=-1, keepdim=True) + eps) * w + inputs["bias"].double()
    # rmsnorm_bwd: y = xhat * w with xhat = x * rstd, rstd = (mean(x^2) + eps)^-1/2
    dy = inputs["dy"].double()
    rstd = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    xhat = x * rstd
    g = dy * w
    dx = rstd * (g - xhat * (g * xhat).mean(dim=-1, keepdim=True))
    dw = (dy * xhat).reshape(-1, x.shape[-1]).sum(dim=0)
    return dx, dw


def outputs(p):
    shape, dt = tuple(p["shape"]), p["dtype"]
    if p["op"] == "rmsnorm_bwd":
        return [(shape, dt), ((shape[-1],), dt)]      # dx in x's dtype, dw in weight's (= x's here)
    return [(shape, dt)]


# ---- cases ----------------------------------------------------------------------------------------

def rowwise(op, shape, dtype, layout="n"):
    return {"op": op, "shape": list(shape), "dtype": dtype, "layout": layout, "eps": EPS[op]}


def _name(p):
    lay = "-padded" if p["layout"] == "p" else ""
    return f"{p['dtype']}-{'x'.join(str(s) for s in p['shape'])}{lay}"


# Small shapes run on both tiers. Widths 1, 37, 1000 and 4097 are not powers of two (except 1): under
# the interpreter rows up to 1024 fit one block and 4097 loops over five blocks, the last holding one
# column; on a GPU everything up to 16384 fits one block. "padded" rows sit in wider rows whose tail is
# NaN (catches loads without a mask); the 3-D shape checks that leading dimensions are flattened.
# rmsnorm_bwd starts at width 2: at width 1, dx = w * dy * eps / (x^2 + eps)^1.5 is ~1e-6 of its terms,
# so no fp32 kernel can get it to a relative tolerance.
_SMALL = [((3, 1), "n"), ((5, 37), "n"), ((4, 1000), "n"), ((6, 4097), "n"), ((7, 300), "p"), ((2, 3, 96), "n")]
_LARGE = [((4096, 4096), "n"), ((1024, 16384), "n"), ((64, 16385), "n"), ((32, 50257), "n"),
          ((3, 131072), "n"), ((1000, 4000), "p"), ((4, 77, 2048), "n")]


def _cases():
    cases = []
    for op in OPS:
        for shape, layout in _SMALL:
            if op == "rmsnorm_bwd" and shape[-1] == 1:
                shape = shape[:-1] + (2,)
            for dt, tiers in (("fp32", ("cpu",)), ("fp16", ("cpu", "gpu")), ("bf16", ("gpu",))):
                p = rowwise(op, shape, dt, layout)
                cases.append(Case(_name(p), op, p, tiers))
        for shape, layout in _LARGE:
            for dt in ("bf16", "fp16", "fp32") if shape == (32, 50257) else ("bf16",):
                p = rowwise(op, shape, dt, layout)
                cases.append(Case(_name(p), op, p, ("gpu",)))
    return cases


def hidden_cases(seed):
    """Shapes drawn from the grading seed: an instructor's secret seed gives widths nobody has tuned for."""
    rng = random.Random(seed * 7919 + 3)
    out = []
    for op in OPS:
        small = rowwise(op, (rng.randint(1, 9), rng.randint(2, 3000)), rng.choice(("fp32", "fp16")))
        out.append(Case("seeded-" + _name(small), op, small, ("cpu", "gpu")))
        big = rowwise(op, (rng.randint(1, 3000), rng.randint(2, 70000)), "bf16")
        out.append(Case("seeded-" + _name(big), op, big, ("gpu",)))
    return out


# ---- speed ----------------------------------------------------------------------------------------

def bytes_moved(p):
    """What the op must move at least once: the rows in and out, plus the (N,) vectors."""
    e = DTYPES[p["dtype"]].itemsize
    rows, n = math.prod(p["shape"][:-1]), p["shape"][-1]
    vectors = {"softmax": 0, "rmsnorm_fwd": 1, "layernorm_fwd": 2, "rmsnorm_bwd": 2}[p["op"]]  # w, b / w, dw
    row_tensors = 3 if p["op"] == "rmsnorm_bwd" else 2                                           # dy, x, dx / x, y
    return float(e * (row_tensors * rows * n + vectors * n))


def flops(p):
    """Rough FLOPs per call (exp counted as one): ~5 per element for softmax and the norms, ~10 for the
    backward. At 2 bytes per bf16 element that is 1-2 FLOP/byte, two orders of magnitude under the ridge.
    Not given to LabSpec: the report shows GB/s only when a spec sets no FLOPs."""
    per = {"softmax": 5, "rmsnorm_fwd": 4, "layernorm_fwd": 7, "rmsnorm_bwd": 10}[p["op"]]
    return float(per * math.prod(p["shape"]))


_COPY_BUFFERS: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def copy(inputs, p):
    """A device-to-device copy of bytes_moved / 2 bytes: it reads and writes exactly the op's bytes, so
    copy_time / student_time is the fraction of achievable bandwidth the kernel reaches."""
    half = int(bytes_moved(p)) // 2
    if half not in _COPY_BUFFERS:
        _COPY_BUFFERS.clear()
        src = torch.empty(half, dtype=torch.uint8, device=inputs["x"].device)
        _COPY_BUFFERS[half] = (src, torch.empty_like(src))
    src, dst = _COPY_BUFFERS[half]
    return dst.copy_(src)


def eager_rmsnorm(x, w, eps):
    """What model code runs without a fused kernel (HF LlamaRMSNorm): 8 kernels, fp32 intermediates,
    36 bytes of traffic per bf16 element against the 4 a fused kernel moves."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return w * h.to(x.dtype)


def eager_rmsnorm_bwd(dy, x, w, eps):
    """The same backward written as torch ops, in fp32 (what autograd through eager_rmsnorm does)."""
    xf, g = x.float(), dy.float() * w.float()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    xhat = xf * rstd
    dx = rstd * (g - xhat * (g * xhat).mean(-1, keepdim=True))
    dw = (dy.float() * xhat).reshape(-1, x.shape[-1]).sum(0)
    return dx.to(x.dtype), dw.to(w.dtype)


def eager(inputs, p):
    op, eps, x = p["op"], p["eps"], inputs["x"]
    if op == "softmax":
        return torch.softmax(x, dim=-1)                 # one fused kernel (cunn_SoftMaxForward*)
    if op == "rmsnorm_fwd":
        return eager_rmsnorm(x, inputs["weight"], eps)
    if op == "layernorm_fwd":
        return F.layer_norm(x, (x.shape[-1],), inputs["weight"], inputs["bias"], eps)   # one fused kernel
    return eager_rmsnorm_bwd(inputs["dy"], x, inputs["weight"], eps)


_COMPILED: dict[str, object] = {}


def compiled(inputs, p):
    """torch.compile of the eager function, compiled on first use in the grading process (Inductor writes
    its own fused Triton kernel; the first call takes tens of seconds, inside the baseline's warm-up)."""
    op = p["op"]
    if op not in _COMPILED:
        fns = {"softmax": lambda x: torch.softmax(x, dim=-1), "rmsnorm_fwd": eager_rmsnorm,
               "layernorm_fwd": lambda x, w, b, eps: F.layer_norm(x, (x.shape[-1],), w, b, eps),
               "rmsnorm_bwd": eager_rmsnorm_bwd}
        _COMPILED[op] = torch.compile(fns[op], dynamic=False)
    fn, x = _COMPILED[op], inputs["x"]
    if op == "softmax":
        return fn(x)
    if op == "rmsnorm_fwd":
        return fn(x, inputs["weight"], p["eps"])
    if op == "layernorm_fwd":
        return fn(x, inputs["weight"], inputs["bias"], p["eps"])
    return fn(inputs["dy"], x, inputs["weight"], p["eps"])


def torch_rms_norm(inputs, p):
    """F.rms_norm (torch >= 2.4); recent releases dispatch it to a fused CUDA kernel."""
    x = inputs["x"]
    return F.rms_norm(x, (x.shape[-1],), inputs["weight"], p["eps"])


def hints(kind, p):
    """Advice for a failed comparison, by the failure kind grader.compare names (for lab03's ops)."""
    if kind == "unwritten":
        return ("some outputs were never stored: the grid must cover every row, and a row wider than one "
                "block must loop to n_cols (range(0, n_cols, BLOCK_SIZE)), storing its partial last block")
    if kind == "nan":
        return ("NaN/Inf: a load without a mask (padded rows hold NaN past column N), `other=` missing, or "
                "exp of (-inf) - (-inf) in an online softmax whose first block was empty")
    if p.get("op") == "rmsnorm_bwd":
        return ("dx = rstd * (g - xhat * mean(g * xhat)) with g = dy * w; dw sums dy * xhat over all rows: "
                "every program's partial row must be stored, and all of them added")
    return ("masked lanes must not count: other=-inf for a max, 0.0 for a sum, divide by n_cols (not "
            "BLOCK_SIZE), zero the padded lanes of x - mean in LayerNorm; in the online softmax rescale "
            "l by exp(m_old - m_new) whenever the max grows")


def _tiers(*pairs):
    return tuple(SpeedTier(r, f) for r, f in pairs)


# copy: full marks at 85% of the bandwidth a device copy of the same bytes reaches (the target).
COPY_TIERS = _tiers((0.5, 0.25), (0.7, 0.5), (0.8, 0.75), (0.85, 1.0))
# rmsnorm_bwd also writes and re-reads dw_partial (n_programs x N fp32, ~4% of the traffic at 4096 rows),
# launches a second (sum) kernel, and does two dependent row reductions per row: 75% for full marks.
COPY_TIERS_BWD = _tiers((0.4, 0.25), (0.55, 0.5), (0.65, 0.75), (0.75, 1.0))
# eager with several kernels (HF-style RMSNorm, forward and backward): fusion alone gives >= 1.5x.
EAGER_TIERS_UNFUSED = _tiers((1.0, 0.25), (1.25, 0.5), (1.5, 1.0))
# torch.softmax and F.layer_norm are already single fused kernels that read the row from HBM once and
# write it once, so the 1.5x is out of reach for anyone: full marks for matching them (softmax:
# within 5%, the protocol's noise). Expected, not yet measured: calibrate on the GPU.
EAGER_TIERS_SOFTMAX = _tiers((0.75, 0.25), (0.85, 0.5), (0.9, 0.75), (0.95, 1.0))
EAGER_TIERS_LAYERNORM = _tiers((0.75, 0.25), (0.85, 0.5), (0.95, 0.75), (1.0, 1.0))
# informational: always "pass", no points; the ratio is in the report.
INFO = _tiers((0.0, 1.0))

EAGER_TIERS = {"softmax": EAGER_TIERS_SOFTMAX, "rmsnorm_fwd": EAGER_TIERS_UNFUSED,
               "layernorm_fwd": EAGER_TIERS_LAYERNORM, "rmsnorm_bwd": EAGER_TIERS_UNFUSED}
BENCH_ROWS, BENCH_WIDTHS, BENCH_BWD_WIDTH = 4096, (4096, 8192, 16384), 8192


def _benchmarks():
    out = []
    for op in ("softmax", "rmsnorm_fwd", "layernorm_fwd", "rmsnorm_bwd"):
        widths = (BENCH_BWD_WIDTH,) if op == "rmsnorm_bwd" else BENCH_WIDTHS
        for n in widths:
            p = rowwise(op, (BENCH_ROWS, n), "bf16")
            tag = f"{op}-bf16-{BENCH_ROWS}x{n}"
            bwd = op == "rmsnorm_bwd"
            out.append(Benchmark(f"{tag}-copy", op, p, "copy", COPY_TIERS_BWD if bwd else COPY_TIERS, points=1,
                                 target_note=f"solution >= {0.75 if bwd else 0.85:.2f}x a device copy of the "
                                             "same bytes"))
            out.append(Benchmark(f"{tag}-eager", op, p, "eager", EAGER_TIERS[op], points=0.5,
                                 target_note="fused kernel vs torch eager"))
    p = rowwise("rmsnorm_fwd", (BENCH_ROWS, 8192), "bf16")
    out.append(Benchmark(f"rmsnorm_fwd-bf16-{BENCH_ROWS}x8192-compiled", "rmsnorm_fwd", p, "compiled", INFO,
                         points=0, target_note="informational: torch.compile(eager RMSNorm)"))
    out.append(Benchmark(f"rmsnorm_fwd-bf16-{BENCH_ROWS}x8192-F.rms_norm", "rmsnorm_fwd", p, "F.rms_norm", INFO,
                         points=0, target_note="informational: torch.nn.functional.rms_norm"))
    return out


def sweep(entry):
    if not torch.cuda.is_available():
        return [rowwise(entry, (8, n), "fp32") for n in (37, 256, 1000, 4097)]
    return [rowwise(entry, (BENCH_ROWS, n), "bf16") for n in (1024, 2048, 4096, 8192, 16384, 32768, 65536)]


SPEC = LabSpec(
    id="lab03",
    title="Fused row-wise kernels in Triton (softmax, RMSNorm fwd/bwd, LayerNorm)",
    path=PATH,
    seed_topic="CUDA & Triton: Triton for fused operators; online softmax, the lead-in to FlashAttention",
    student_files=(STUDENT_FILE,),
    entries=ENTRIES,
    load_entry=load_entry,
    make_inputs=make_inputs,
    call=call,
    reference=reference,
    outputs=outputs,
    # Every kernel computes in fp32 and rounds once on store, so the output's own rounding (unit roundoff
    # u = 2^-11 fp16, 2^-8 bf16) dominates: rtol = 2.5u leaves room for one extra rounding of an
    # intermediate (e.g. x * rstd rounded before * w, as HF's eager RMSNorm does) and nothing more.
    # atol_rms covers entries that cancel to near zero (LayerNorm's + bias, dx's two terms, dw's sum
    # over rows with dy of either sign): they are judged against the output's rms, at u.
    # fp32: exp/rsqrt via hardware approximations (~2^-22 relative), exp(x - m) with |x - m| up to ~30
    # (~30 * 2^-24 absolute in the exponent), fp32 sums over up to 1e5 terms: a few 1e-6 at most;
    # 1e-5 accepts those and rejects anything computed in fp16/bf16 (>= 5e-4).
    tolerances={"fp32": Tolerance(rtol=1e-5, atol_rms=1e-5),
                "fp16": Tolerance(rtol=1.25e-3, atol_rms=5e-4),
                "bf16": Tolerance(rtol=1e-2, atol_rms=4e-3)},
    cases=_cases(),
    hidden_cases=hidden_cases,
    benchmarks=_benchmarks(),
    salt=('x',),
    baselines={"copy": copy, "eager": eager, "compiled": compiled, "F.rms_norm": torch_rms_norm},
    perturb=perturb,
    bytes_moved=bytes_moved,
    compute_unit=lambda p: "fp32",
    # The ops that would do the work, and torch.compile (Inductor would write the kernel for you).
    blocked_ops=("_softmax", "_log_softmax", "_safe_softmax", "native_layer_norm", "native_layer_norm_backward",
                 "_fused_rms_norm", "_fused_rms_norm_backward"),
    forbidden_ops=(
        r"^aten::(_?softmax|_?log_softmax|_safe_softmax|_masked_softmax|_softmax_backward_data|special_softmax"
        r"|special_log_softmax|logsumexp)$",
        r"^aten::(layer_norm|native_layer_norm|native_layer_norm_backward|rms_norm|_fused_rms_norm"
        r"|_fused_rms_norm_backward|group_norm|native_group_norm|batch_norm|native_batch_norm|instance_norm"
        r"|var|var_mean|std|std_mean|norm|linalg_vector_norm)$",
        r"Torch-Compiled Region|CompiledFxGraph|TorchDynamo",
    ),
    # GPU kernel names of the same ops. Only library names: your own Triton kernels are named after their
    # Python functions (softmax_kernel, rmsnorm_fwd_kernel, ...) and never match these.
    forbidden_kernels=(
        r"at::native::.*softmax",                                 # cunn_SoftMaxForward*, softmax_warp_forward
        r"at::native::.*(layer_?norm|rms_?norm|group_?norm|batch_?norm|RowwiseMoments|GammaBeta|welford)",
        r"^triton_(per|red|poi|tem)_fused",                       # Inductor-generated kernels
        r"cuApply(Layer|RMS)Norm", r"cudnn",                      # apex, cuDNN
    ),
    hints=hints,          # not read by grader.runner yet (it prints grader.compare's GEMM-flavoured advice)
    time_limit_s=120.0,
    sweep=sweep,
    notebook="lab03_fused_rowwise.ipynb",
)

for _c in SPEC.all_cases(0) + [Case(b.name, b.entry, b.params) for b in SPEC.benchmarks]:
    assert _c.params["op"] == _c.entry, f"lab03 spec: case {_c.name} has op {_c.params['op']} but entry {_c.entry}"
