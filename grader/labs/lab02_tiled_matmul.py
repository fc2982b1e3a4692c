"""Lab 02 spec: tiled matrix multiplication, CUDA C (fp32 ladder) and Triton (fp16/bf16)."""

from __future__ import annotations

import functools
import random

import torch

from .. import REPO_ROOT
from ..inputs import realistic, with_layout
from ..loader import import_file
from ..spec import DTYPES, Benchmark, Case, EntryPoint, LabSpec, SpeedTier, Tolerance

PATH = "stage1_foundations/lab02_tiled_matmul"
TRITON_FILE, CUDA_FILE = "triton_matmul.py", "matmul_kernels.cu"

ENTRIES = {
    "triton_matmul": EntryPoint("triton_matmul", (TRITON_FILE,), "triton",
                                "matmul(a, b) in triton_matmul.py: block-tiled, grouped ordering, autotuned"),
    "cuda_smem_tiled": EntryPoint("cuda_smem_tiled", (CUDA_FILE,), "cuda",
                                  "kernel 3 in matmul_kernels.cu: 32x32 shared-memory tiles",
                                  symbol="sgemm_smem_tiled"),
    "cuda_register_blocked": EntryPoint("cuda_register_blocked", (CUDA_FILE,), "cuda",
                                        "kernel 4 in matmul_kernels.cu: 128x128 tiles, 8x8 per thread",
                                        symbol="sgemm_register_blocked"),
}


def load_entry(name, files):
    if name == "triton_matmul":
        return import_file(files[TRITON_FILE], REPO_ROOT / PATH).matmul
    launcher = import_file(REPO_ROOT / PATH / "cuda_matmul.py", REPO_ROOT / PATH)
    return functools.partial(launcher.matmul, kernel=ENTRIES[name].symbol, source=files[CUDA_FILE])


def make_inputs(p, gen):
    a = realistic((p["M"], p["K"]), gen, p["dtype"])
    b = realistic((p["K"], p["N"]), gen, p["dtype"])
    return {"a": with_layout(a, p.get("layout_a", "n")), "b": with_layout(b, p.get("layout_b", "n"))}


def call(fn, inputs, p):
    return fn(inputs["a"], inputs["b"])


def reference(inputs, p):
    return inputs["a"].double() @ inputs["b"].double()


def cublas(inputs, p):
    if p["dtype"] != "fp32":
        return torch.matmul(inputs["a"], inputs["b"])
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False   # the fp32 baseline is true SGEMM
    try:
        return torch.matmul(inputs["a"], inputs["b"])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def mnk(M, N, K, dtype, la="n", lb="n"):
    return {"M": M, "N": N, "K": K, "dtype": dtype, "layout_a": la, "layout_b": lb}


def _name(p):
    lay = "" if (p["layout_a"], p["layout_b"]) == ("n", "n") else f"-{p['layout_a']}{p['layout_b']}"
    return f"{p['dtype']}-{p['M']}x{p['N']}x{p['K']}{lay}"


# Small shapes run on both tiers (Triton under the CPU interpreter); the CUDA kernels run on the GPU only.
# Layouts: n = row-major, t = stored transposed, s = strided view (every other column; the gaps hold NaN).
_SMALL = [mnk(64, 64, 64, "x"), mnk(1, 96, 128, "x"), mnk(257, 129, 200, "x"), mnk(33, 47, 5, "x"),
          mnk(96, 80, 136, "x", "t", "n"), mnk(72, 100, 64, "x", "n", "t"), mnk(50, 70, 90, "x", "s", "s")]
_LARGE = [mnk(1024, 1024, 1024, "x"), mnk(1000, 1500, 700, "x", "t", "t"), mnk(1, 4096, 4096, "x")]


def _cases():
    cases = []
    for base in _SMALL:
        for dt, tiers in (("fp32", ("cpu",)), ("fp16", ("cpu", "gpu")), ("bf16", ("gpu",))):
            p = dict(base, dtype=dt)
            cases.append(Case(_name(p), "triton_matmul", p, tiers))
    for base in _LARGE:
        for dt in ("fp16", "bf16"):
            p = dict(base, dtype=dt)
            cases.append(Case(_name(p), "triton_matmul", p, ("gpu",)))
    for entry in ("cuda_smem_tiled", "cuda_register_blocked"):
        for base in _SMALL + _LARGE:
            p = dict(base, dtype="fp32")
            cases.append(Case(_name(p), entry, p, ("gpu",)))
    return cases


def hidden_cases(seed):
    """Shapes drawn from the grading seed: an instructor's secret seed gives shapes nobody has seen."""
    rng = random.Random(seed * 7919 + 2)
    out = []
    for i in range(2):
        small = mnk(rng.randint(1, 160), rng.randint(1, 160), rng.randint(1, 160), "fp16")
        out.append(Case(f"seeded{i}-" + _name(small), "triton_matmul", small, ("cpu", "gpu")))
        big = mnk(rng.randint(1, 3000), rng.randint(1, 3000), rng.randint(1, 3000), "bf16")
        out.append(Case(f"seeded{i}-" + _name(big), "triton_matmul", big, ("gpu",)))
        f32 = mnk(rng.randint(1, 2000), rng.randint(1, 2000), rng.randint(1, 2000), "fp32")
        out.append(Case(f"seeded{i}-" + _name(f32), "cuda_register_blocked", f32, ("gpu",)))
    return out


def _tiers(*pairs):
    return tuple(SpeedTier(r, f) for r, f in pairs)


BENCHMARKS = [
    Benchmark("triton-bf16-4096", "triton_matmul", mnk(4096, 4096, 4096, "bf16"), "cublas",
              _tiers((0.5, 0.5), (0.75, 0.75), (0.9, 1.0)), points=3,
              target_note="solution >= 0.90x cuBLAS"),
    Benchmark("triton-bf16-8192", "triton_matmul", mnk(8192, 8192, 8192, "bf16"), "cublas",
              _tiers((0.5, 0.5), (0.75, 0.75), (0.9, 1.0)), points=3,
              target_note="solution >= 0.90x cuBLAS"),
    Benchmark("cuda-register-blocked-fp32-4096", "cuda_register_blocked", mnk(4096, 4096, 4096, "fp32"),
              "cublas", _tiers((0.25, 0.5), (0.4, 0.75), (0.5, 1.0)), points=3,
              target_note="solution >= 0.50x cuBLAS SGEMM (TF32 off)"),
    Benchmark("cuda-smem-tiled-fp32-4096", "cuda_smem_tiled", mnk(4096, 4096, 4096, "fp32"),
              "cublas", _tiers((0.08, 0.5), (0.12, 1.0)), points=1,
              target_note="32x32 shared-memory tiles: ~0.15x cuBLAS SGEMM"),
]


def sweep(entry):
    if not torch.cuda.is_available():
        return [mnk(s, s, s, "fp16" if entry == "triton_matmul" else "fp32") for s in (32, 64, 128)]
    dt = "bf16" if entry == "triton_matmul" else "fp32"
    sizes = (256, 512, 1024, 2048, 4096, 8192) if entry == "triton_matmul" else (256, 512, 1024, 2048, 4096)
    return [mnk(s, s, s, dt) for s in sizes]


SPEC = LabSpec(
    id="lab02",
    title="Tiled matrix multiplication (CUDA ladder + Triton)",
    path=PATH,
    seed_topic="CUDA & Triton: programming model, memory hierarchy, tiling",
    student_files=(CUDA_FILE, TRITON_FILE),
    entries=ENTRIES,
    load_entry=load_entry,
    make_inputs=make_inputs,
    call=call,
    reference=reference,
    outputs=lambda p: [((p["M"], p["N"]), p["dtype"])],
    # fp32: accumulation error of a K=4096 dot product is ~sqrt(K)*eps ~ 4e-6 of rms; TF32 would be ~5e-4,
    #       so 5e-5 accepts true fp32 and rejects TF32.
    # fp16/bf16: the output's own rounding is 2^-11 / 2^-8 relative; rtol is 4x that. fp16 or fp8
    #       accumulation errors grow like sqrt(K) and land far outside.
    tolerances={"fp32": Tolerance(rtol=1e-5, atol_rms=5e-5),
                "fp16": Tolerance(rtol=2e-3, atol_rms=1e-3),
                "bf16": Tolerance(rtol=1.6e-2, atol_rms=8e-3)},
    cases=_cases(),
    hidden_cases=hidden_cases,
    benchmarks=BENCHMARKS,
    salt=('a',),
    baselines={"cublas": cublas},
    flops=lambda p: 2.0 * p["M"] * p["N"] * p["K"],
    bytes_moved=lambda p: (p["M"] * p["K"] + p["K"] * p["N"] + p["M"] * p["N"]) * DTYPES[p["dtype"]].itemsize,
    compute_unit=lambda p: "fp32" if p["dtype"] == "fp32" else "tensor_" + p["dtype"],
    forbidden_ops=(r"^aten::(mm|matmul|bmm|addmm|addmv|mv|dot|baddbmm|linear|einsum|tensordot|_scaled_mm)$",),
    forbidden_kernels=("cublas", "cutlass", "xmma", "nvjet", r"^(ampere|volta|turing|hopper)_", r"^sm\d+_",
                       "gemmSN", "gemv", "splitKreduce"),
    blocked_ops=("mm", "bmm", "addmm", "addbmm", "baddbmm", "mv", "addmv", "dot", "vdot", "_scaled_mm"),
    cuda_sources=(CUDA_FILE,),
    time_limit_s=180.0,
    sweep=sweep,
    notebook="lab02_tiled_matmul.ipynb",
)
