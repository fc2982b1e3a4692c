"""Lab 01 spec: the GPU model -- CUDA copy and reduction kernels, a launch-bound region, roofline reading.

Five entries, three kinds of work:

- CUDA C (gpu_kernels.cu, run through the given launcher cuda_launch.py): `copy_vectorized` (graded
  against torch's device-to-device copy), `reduce_sum_smem` and `reduce_sum_shfl` (against torch.sum).
  Both move each byte once and do next to no arithmetic: their speed is bandwidth. GPU tier only; the CPU
  tier compiles the file with nvcc and checks that no LAB_TODO is left.
- `fused_step` (fused_step.py): the toy step of toy_step.py, 16 small kernels per layer in eager PyTorch,
  with the launches taken out (one fused Triton kernel, or a CUDA graph). Graded as a speedup over the
  eager step; both tiers check correctness (the Triton interpreter on the CPU).
- `roofline_analysis` (roofline.py): classify profiled ops as launch-, memory- or compute-bound from their
  times, FLOPs, bytes and launch counts. Pure tensor code, checked on both tiers.

The spec's functions see only a case's params, so every params dict names its work in params["kind"]
(checked against the entry at import).
"""

from __future__ import annotations

import functools
import random

import torch

from .. import REPO_ROOT
from ..inputs import realistic
from ..loader import import_file
from ..spec import Benchmark, Case, EntryPoint, LabSpec, SpeedTier, Tolerance

PATH = "stage1_foundations/lab01_gpu_model"
CUDA_FILE, STEP_FILE, ROOFLINE_FILE = "gpu_kernels.cu", "fused_step.py", "roofline.py"

ENTRIES = {
    "copy_vectorized": EntryPoint("copy_vectorized", (CUDA_FILE,), "cuda",
                                  "kernel 2 in gpu_kernels.cu: grid-stride float4 copy with a tail",
                                  symbol="copy_vectorized"),
    "reduce_sum_smem": EntryPoint("reduce_sum_smem", (CUDA_FILE,), "cuda",
                                  "kernel 4 in gpu_kernels.cu: shared-memory tree, one atomic per block",
                                  symbol="reduce_sum_smem"),
    "reduce_sum_shfl": EntryPoint("reduce_sum_shfl", (CUDA_FILE,), "cuda",
                                  "kernel 5 in gpu_kernels.cu: warp shuffles, float4 loads",
                                  symbol="reduce_sum_shfl"),
    "fused_step": EntryPoint("fused_step", (STEP_FILE,), "triton",
                             "fused_step(x, h, w, b) in fused_step.py: toy_step.eager_step in few launches",
                             own_kernel=False),        # a CUDA graph of the eager ops is the other valid route
    "roofline_analysis": EntryPoint("roofline_analysis", (ROOFLINE_FILE,), "python",
                                    "roofline_analysis(...) in roofline.py: floor, efficiency, bound per op"),
}
KIND = {"copy_vectorized": "copy", "reduce_sum_smem": "reduce", "reduce_sum_shfl": "reduce",
        "fused_step": "step", "roofline_analysis": "roofline"}

_TOY = import_file(REPO_ROOT / PATH / "toy_step.py")     # the given eager step: baseline and (in fp64) reference
eager_step = _TOY.eager_step


def load_entry(name, files):
    if name == "fused_step":
        return import_file(files[STEP_FILE], REPO_ROOT / PATH).fused_step
    if name == "roofline_analysis":
        return import_file(files[ROOFLINE_FILE], REPO_ROOT / PATH).roofline_analysis
    launcher = import_file(REPO_ROOT / PATH / "cuda_launch.py", REPO_ROOT / PATH)
    fn = launcher.copy if KIND[name] == "copy" else launcher.reduce_sum
    return functools.partial(fn, kernel=ENTRIES[name].symbol, source=files[CUDA_FILE])


# ---- inputs ---------------------------------------------------------------------------------------

STEP_INPUTS = ("x", "h", "w", "b")
ROOFLINE_INPUTS = ("time_us", "flops", "nbytes", "launches")


def _step_set(p, gen, suffix=""):
    shape, weights = (p["rows"], p["dim"]), (p["layers"], p["dim"])
    return {"x" + suffix: realistic(shape, gen, "fp32"), "h" + suffix: realistic(shape, gen, "fp32"),
            "w" + suffix: realistic(weights, gen, "fp32"), "b" + suffix: realistic(weights, gen, "fp32")}


def _log_uniform(n, lo, hi, gen):
    """10 ** U(lo, hi): values spread over hi - lo decades."""
    return 10.0 ** torch.empty(n, dtype=torch.float64).uniform_(lo, hi, generator=gen)


def _roofline_table(p, gen):
    """A profile of n ops that crosses every boundary: bytes from 100 B to 10 GB (floors from ~1e-5 us to
    ~1e4 us, either side of launches * overhead), intensities three decades either side of the ridge
    point, 15% of ops with no FLOPs (copies, fills), 1 to 64 launches, measured times from just under
    the floor (peaks are datasheet numbers; L2 hits can beat them) to ~30x over it."""
    n = p["n"]
    peak_flops, peak_bw = p["peak_tflops"] * 1e12, p["peak_gbps"] * 1e9
    nbytes = _log_uniform(n, 2, 10, gen)
    intensity = peak_flops / peak_bw * _log_uniform(n, -3, 3, gen)
    intensity = torch.where(torch.rand(n, generator=gen, dtype=torch.float64) < 0.15, 0.0, intensity)
    flops = intensity * nbytes
    launches = torch.randint(1, 65, (n,), generator=gen).to(torch.float64)
    floor_us = torch.maximum(flops / peak_flops, nbytes / peak_bw) * 1e6
    fixed = launches * p["overhead_us"] * torch.rand(n, generator=gen, dtype=torch.float64)
    time_us = (floor_us + fixed) * _log_uniform(n, -0.05, 1.5, gen)
    return {"time_us": time_us, "flops": flops, "nbytes": nbytes, "launches": launches}


def make_inputs(p, gen):
    kind = p["kind"]
    if kind == "copy":
        return {"x": realistic((p["n"],), gen, "fp32")}
    if kind == "reduce":
        # A mean of +-(1 to 2) under noise of std up to 4 (and x8 outliers): sum|x| / |sum x| stays under ~4,
        # so a relative tolerance on the sum is a tolerance on the accumulation error. Data centred on 0
        # would make the sum cancel and any relative test meaningless.
        sign = 1.0 if float(torch.rand((), generator=gen)) < 0.5 else -1.0
        return {"x": realistic((p["n"],), gen, "fp32") + 1.5 * sign}
    if kind == "step":
        inputs = _step_set(p, gen)
        if p.get("calls", 1) == 2:
            inputs.update(_step_set(p, gen, "2"))
        return inputs
    if kind == "roofline":
        return _roofline_table(p, gen)
    raise KeyError(kind)


def call(fn, inputs, p):
    kind = p["kind"]
    if kind in ("copy", "reduce"):
        return fn(inputs["x"])
    if kind == "roofline":
        return fn(*(inputs[k] for k in ROOFLINE_INPUTS), peak_tflops=p["peak_tflops"], peak_gbps=p["peak_gbps"],
                  overhead_us=p["overhead_us"])
    # The step is timed from an idle GPU: without this sync the grader's L2 flush (~170 us of GPU work
    # queued just before the call) would hide the CPU's launch overhead -- exactly what this exercise is
    # about. The baseline does the same. (A decode loop that samples on the host syncs every step too.)
    if inputs["x"].is_cuda:
        torch.cuda.synchronize()
    out = tuple(fn(*(inputs[k] for k in STEP_INPUTS)))
    if p.get("calls", 1) == 2:
        # A second call on a second, live input set (new addresses, new values, w and b included), after
        # the first call's outputs were returned: a CUDA graph that does not copy its inputs in, or that
        # returns its static output buffers, fails here.
        out += tuple(fn(*(inputs[k + "2"] for k in STEP_INPUTS)))
    return out


# ---- references (fp64, grading process only) ------------------------------------------------------

def _roofline_reference(inputs, p):
    t, flops, nbytes, launches = (inputs[k].double() for k in ROOFLINE_INPUTS)
    peak_flops, peak_bw = p["peak_tflops"] * 1e12, p["peak_gbps"] * 1e9
    floor_us = torch.maximum(flops / peak_flops, nbytes / peak_bw) * 1e6
    bound = torch.full(floor_us.shape, 2, dtype=torch.int64, device=floor_us.device)     # compute-bound
    bound[flops / nbytes < peak_flops / peak_bw] = 1                                     # memory-bound
    bound[launches * p["overhead_us"] > floor_us] = 0                                    # launch-bound
    return floor_us, floor_us / t, bound


def reference(inputs, p):
    kind = p["kind"]
    if kind == "copy":
        return inputs["x"].clone()
    if kind == "reduce":
        return inputs["x"].double().sum()
    if kind == "roofline":
        return _roofline_reference(inputs, p)
    out = eager_step(*(inputs[k].double() for k in STEP_INPUTS))
    if p.get("calls", 1) == 2:
        out += eager_step(*(inputs[k + "2"].double() for k in STEP_INPUTS))
    return out


def outputs(p):
    kind = p["kind"]
    if kind == "copy":
        return [((p["n"],), "fp32", "exact")]
    if kind == "reduce":
        return [((), "fp32", "sum")]
    if kind == "roofline":
        return [((p["n"],), "fp64"), ((p["n"],), "fp64"), ((p["n"],), "int64", "exact")]
    return [((p["rows"], p["dim"]), "fp32")] * (2 * p.get("calls", 1))


# ---- cases ----------------------------------------------------------------------------------------

def vec(entry, n):
    return {"kind": KIND[entry], "n": n, "dtype": "fp32"}


def step(rows, dim, layers, calls=1):
    return {"kind": "step", "rows": rows, "dim": dim, "layers": layers, "calls": calls, "dtype": "fp32"}


MACHINES = {   # name -> (peak TFLOP/s, peak GB/s, per-launch overhead us): an H100's bf16 tensor cores, an
    "h100": (989.0, 3350.0, 4.0),           # A100's, and a CPU socket's fp32 SIMD units (overhead: the
    "a100": (312.0, 2039.0, 5.0),           # dispatcher's cost per op)
    "cpu": (2.5, 120.0, 2.0),
}


def roof(machine, n):
    tflops, gbps, overhead = MACHINES[machine]
    return {"kind": "roofline", "machine": machine, "n": n, "peak_tflops": tflops, "peak_gbps": gbps,
            "overhead_us": overhead, "dtype": "fp64"}


def _name(p):
    kind = p["kind"]
    if kind in ("copy", "reduce"):
        return f"fp32-n{p['n']}"
    if kind == "step":
        return f"fp32-{p['rows']}x{p['dim']}x{p['layers']}" + ("-twice" if p["calls"] == 2 else "")
    return f"{p['machine']}-{p['n']}ops"


# Copies and sums: every n % 4 (the float4 tail), n below one float4 (1, 3), below one warp and one block,
# one past a power of two, and up to 64 Mi floats (256 MB: many grid-stride rounds per thread).
COPY_SIZES = (1, 2, 3, 5, 17, 1023, 4098, 65539, 1_000_001, (1 << 24) + 3, 1 << 26)
REDUCE_SIZES = (1, 2, 5, 31, 33, 1000, 1025, 4099, 65537, 1_000_003, (1 << 24) + 7, 1 << 26)
# The toy step: the lab's shape (64, 256, 4 layers), one row, one layer, widths that are not powers of two
# (D = 1: the variance is 0; 37, 100, 1000), and the two-call check on a second live input set.
STEP_CASES = [(step(64, 256, 4), ("cpu", "gpu")), (step(1, 256, 1), ("cpu", "gpu")),
              (step(5, 100, 3), ("cpu", "gpu")), (step(33, 37, 2), ("cpu", "gpu")), (step(7, 1, 2), ("cpu", "gpu")),
              (step(3, 1000, 4), ("cpu", "gpu")), (step(64, 256, 4, calls=2), ("cpu", "gpu")),
              (step(9, 300, 3, calls=2), ("cpu", "gpu")), (step(512, 1024, 8), ("gpu",)),
              (step(1000, 2048, 2, calls=2), ("gpu",))]
ROOFLINE_CASES = [roof("h100", 256), roof("a100", 256), roof("cpu", 256), roof("h100", 1)]


def _cases():
    cases = [Case(_name(vec("copy_vectorized", n)), "copy_vectorized", vec("copy_vectorized", n), ("gpu",))
             for n in COPY_SIZES]
    for entry in ("reduce_sum_smem", "reduce_sum_shfl"):
        cases += [Case(_name(vec(entry, n)), entry, vec(entry, n), ("gpu",)) for n in REDUCE_SIZES]
    cases += [Case(_name(p), "fused_step", p, tiers) for p, tiers in STEP_CASES]
    cases += [Case(_name(p), "roofline_analysis", p, ("cpu", "gpu")) for p in ROOFLINE_CASES]
    return cases


def hidden_cases(seed):
    """Sizes drawn from the grading seed: an instructor's secret seed gives lengths and shapes nobody has seen."""
    rng = random.Random(seed * 7919 + 1)
    out = []
    for entry in ("copy_vectorized", "reduce_sum_smem", "reduce_sum_shfl"):
        p = vec(entry, rng.randint(1, 3_000_000))
        out.append(Case("seeded-" + _name(p), entry, p, ("gpu",)))
    small = step(rng.randint(1, 48), rng.randint(1, 700), rng.randint(1, 5), calls=rng.choice((1, 2)))
    out.append(Case("seeded-" + _name(small), "fused_step", small, ("cpu", "gpu")))
    big = step(rng.randint(1, 3000), rng.randint(1, 4000), rng.randint(1, 8))
    out.append(Case("seeded-" + _name(big), "fused_step", big, ("gpu",)))
    p = roof(rng.choice(sorted(MACHINES)), rng.randint(2, 500))
    out.append(Case("seeded-" + _name(p), "roofline_analysis", p, ("cpu", "gpu")))
    return out


# ---- speed ----------------------------------------------------------------------------------------

STEP_FLOPS_PER_ELEMENT = 25     # per layer: ~6 for the update and the two means, ~6 for the norm, ~13 for tanh,
                                # sigmoid (exp counted as 1), gate and residual


def bytes_moved(p):
    """What the work must move at least once."""
    kind = p["kind"]
    if kind == "copy":
        return 8.0 * p["n"]                                   # read and write every float
    if kind == "reduce":
        return 4.0 * p["n"]
    if kind == "step":
        r, d, l = p["rows"], p["dim"], p["layers"]
        return 4.0 * p.get("calls", 1) * (4 * r * d + 2 * l * d)   # x, h in and out; w, b in
    return 8.0 * p["n"] * 7                                   # 4 inputs, 3 outputs per op


def flops(p):
    kind = p["kind"]
    if kind == "reduce":
        return float(p["n"])
    if kind == "step":
        return float(STEP_FLOPS_PER_ELEMENT * p["rows"] * p["dim"] * p["layers"] * p.get("calls", 1))
    return 0.0


def torch_copy(inputs, p):
    """What a user would call: a device-to-device copy (cudaMemcpyAsync, "Memcpy DtoD" in a trace)."""
    return inputs["x"].clone()


def torch_sum(inputs, p):
    return torch.sum(inputs["x"])


def eager(inputs, p):
    """The given eager step, timed from an idle GPU like the student's (see `call`)."""
    if inputs["x"].is_cuda:
        torch.cuda.synchronize()
    return eager_step(*(inputs[k] for k in STEP_INPUTS))


def hints(kind, p):
    """Advice for a failed comparison, by the failure kind grader.compare names."""
    work = p.get("kind")
    if work == "copy":
        if kind == "unwritten":
            return ("some floats were never written (the output starts as NaN): the grid-stride loop must "
                    "cover all n / 4 float4s (i < n4, i += gridDim.x * blockDim.x), and threads 0 to n % 4 - 1 "
                    "must copy the tail floats that start at 4 * (n / 4)")
        return ("a copy is bit-exact: check the float4 indexing (float4 index i covers floats 4i..4i+3) and "
                "where the tail starts")
    if work == "reduce":
        return ("a sum that is off: a missing __syncthreads() between tree levels (or one inside an if that "
                "not every thread reaches), the n % 4 tail floats not added, a warp's partial sum dropped "
                "(warp_sums[lane] only for lane < WARPS, 0 otherwise), or accumulation in lower precision")
    if work == "step":
        advice = ("off by ~1e-3 everywhere: the step must be computed in fp32, not fp16/bf16. Wrong only for "
                  "widths that are not powers of two: the padded lanes (cols >= dim) reached the sums -- load with "
                  "other=0.0, zero them in h - mu (tl.where), divide by dim, not BLOCK_D")
        if p.get("calls", 1) == 2:
            advice += ("; here outputs 2-3 come from a second call on a second input set: a CUDA graph must copy all "
                       "four inputs (w and b too) into its static buffers every call and return clones of its static "
                       "outputs (outputs 0-1 are overwritten by the second call if it returns them directly)")
        return advice
    if work == "roofline":
        return ("units: peak_tflops * 1e12 FLOP/s, peak_gbps * 1e9 B/s, times in us (* 1e6); floor is the max "
                "of compute and memory time; launch-bound is decided first (launches * overhead_us > floor_us), "
                "then intensity flops / nbytes against the ridge peak_flops / peak_bw")
    return ""


def _tiers(*pairs):
    return tuple(SpeedTier(r, f) for r, f in pairs)


# copy: full marks at 85% of the rate of torch's own device-to-device copy of the same bytes (the issue's
# target). A float4 grid-stride copy with a few loads in flight per thread reaches ~0.9-1.0x on an H100.
COPY_TIERS = _tiers((0.5, 0.25), (0.7, 0.5), (0.8, 0.75), (0.85, 1.0))
# sum: torch.sum's reduce kernel reads with 16-byte loads at close to the copy rate; match it within 10%.
SUM_TIERS = _tiers((0.5, 0.25), (0.7, 0.5), (0.8, 0.75), (0.9, 1.0))
# the toy step, 64 launches from an idle GPU. Eager: the CPU issues 64 ops at ~4-8 us each, 250-500 us,
# while the kernels' work is ~64 x 200 KB = 13 MB of traffic, ~4 us of HBM time. Fused: one Triton launch
# (~20-40 us of Python and driver overhead) and a few us of GPU: ~10x. A CUDA graph of the eager step: 4
# input copies, one replay, 2 output clones (~7 launches, ~40 us of CPU) but still 64 kernels back to back
# on the GPU at ~1.5-2 us each (~100-130 us): ~2.5-4x. Full marks at 3x.
STEP_TIERS = _tiers((1.5, 0.25), (2.0, 0.5), (2.5, 0.75), (3.0, 1.0))
INFO = _tiers((0.0, 1.0))     # reported only: no points

BENCH_N, BENCH_RAGGED_N = 1 << 26, (1 << 25) + 3      # 256 MB and 128 MB (+12 bytes) of fp32


def _benchmarks():
    out = []
    for n, tag in ((BENCH_N, "64Mi"), (BENCH_RAGGED_N, "32Mi+3")):
        out.append(Benchmark(f"copy_vectorized-fp32-{tag}", "copy_vectorized", vec("copy_vectorized", n),
                             "torch_copy", COPY_TIERS, points=1,
                             target_note="solution >= 0.85x torch's device-to-device copy"))
        out.append(Benchmark(f"reduce_sum_shfl-fp32-{tag}", "reduce_sum_shfl", vec("reduce_sum_shfl", n),
                             "torch_sum", SUM_TIERS, points=1, target_note="solution >= 0.9x torch.sum"))
    out.append(Benchmark(f"reduce_sum_smem-fp32-64Mi", "reduce_sum_smem", vec("reduce_sum_smem", BENCH_N),
                         "torch_sum", INFO, points=0, target_note="informational: the shared-memory rung"))
    out.append(Benchmark("fused_step-fp32-64x256x4", "fused_step", step(64, 256, 4), "eager", STEP_TIERS,
                         points=2, host_bound=True, target_note="solution (one fused Triton kernel) >= 3x the eager step"))
    return out


def sweep(entry):
    if entry in ("copy_vectorized", "reduce_sum_smem", "reduce_sum_shfl"):
        return [vec(entry, 1 << k) for k in range(16, 29, 2)]
    if entry == "fused_step":
        return [step(64, 256, layers) for layers in (1, 2, 4, 8, 16)]
    return [roof("h100", 256)]


SPEC = LabSpec(
    id="lab01",
    title="The GPU model: CUDA copy and reduction kernels, the roofline, profiling a launch-bound region",
    path=PATH,
    seed_topic="GPU fundamentals and profiling: the CUDA programming model, measured bandwidth and the "
               "roofline, torch.profiler / Nsight traces, launch-bound vs HBM-bound",
    student_files=(CUDA_FILE, STEP_FILE, ROOFLINE_FILE),
    entries=ENTRIES,
    load_entry=load_entry,
    make_inputs=make_inputs,
    call=call,
    reference=reference,
    outputs=outputs,
    tolerances={
        # a copy is bit-exact; so are the class codes of roofline_analysis
        "exact": Tolerance(rtol=0.0, atol_rms=0.0),
        # A sum of n fp32 values accumulated in fp32: each thread adds ~250 values in a chain, then ~20
        # tree levels and ~1000 block atomics; the error is ~sqrt(250) * 2^-24 ~ 1e-6 of sum|x| typically,
        # ~250 * 2^-24 ~ 1.5e-5 in the worst case, and sum|x| <= ~4 |sum x| for these inputs. For a 0-d
        # output atol_rms * rms and rtol * |ref| are the same number: together 1e-4 relative. Summing in
        # bf16 or fp16 (or loading half the data) is off by 1e-3 or more; so is dropping 1 of 4099 values.
        "sum": Tolerance(rtol=5e-5, atol_rms=5e-5),
        # The step in fp32: two 256-term means per layer, rsqrt, exp (tanh via 2 sigmoid(2n) - 1 has an
        # absolute error ~1e-7 near 0), over up to 8 layers: a few 1e-7 of the output's rms. 1e-5 as in
        # lab03; anything computed in fp16/bf16 (>= 5e-4) fails.
        "fp32": Tolerance(rtol=1e-5, atol_rms=1e-5),
        # roofline_analysis: a few fp64 divisions; 1e-6 even admits an fp32 computation (~1e-7)
        "fp64": Tolerance(rtol=1e-6, atol_rms=0.0),
    },
    cases=_cases(),
    hidden_cases=hidden_cases,
    benchmarks=_benchmarks(),
    salt=('x',),
    baselines={"torch_copy": torch_copy, "torch_sum": torch_sum, "eager": eager},
    flops=flops,
    bytes_moved=bytes_moved,
    compute_unit=lambda p: "fp32",
    # torch.compile would do the fusion for you (Inductor writes the Triton kernel, "reduce-overhead" the
    # CUDA graph): not allowed, by op name (both tiers) and by Inductor's kernel names (GPU).
    forbidden_ops=(r"Torch-Compiled Region|CompiledFxGraph|TorchDynamo",),
    forbidden_kernels=(r"^triton_(per|red|poi|tem)_fused",),
    cuda_sources=(CUDA_FILE,),
    hints=hints,
    time_limit_s=120.0,
    sweep=sweep,
    notebook="lab01_gpu_model.ipynb",
)

for _c in SPEC.all_cases(0) + [Case(b.name, b.entry, b.params) for b in SPEC.benchmarks]:
    assert _c.params["kind"] == KIND[_c.entry], f"lab01 spec: case {_c.name} has kind {_c.params['kind']}"
