"""TFLOP/s of attention forward and backward: your kernels vs torch SDPA (flash and cuDNN backends).

Given, not graded (the grader times one shape with its own protocol; this sweeps sequence lengths).

    python bench_attention.py                      # your flash_attention.py, causal, fwd and bwd
    python bench_attention.py --solutions          # the reference solution
    python bench_attention.py --no-causal --seqlens 1024 4096 --batch 2 --heads 32 --dim 64

FLOPs (the FlashAttention papers' convention): forward 4*B*H*N*N*D (half when causal), backward 2.5x that.
Times are medians of triton.testing.do_bench (L2 flushed between calls); the backward is timed alone,
from a forward run once outside the timing. Needs a CUDA GPU; `sweep(..., device="cpu")` is a toy for
the notebook (the Triton interpreter is thousands of times slower than a GPU: its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SOLUTION = HERE.parents[1] / "solutions" / HERE.parent.name / HERE.name / "flash_attention.py"
IMPLS = ("yours", "sdpa_flash", "sdpa_cudnn")


def attention_flops(B: int, H: int, N: int, D: int, causal: bool, mode: str = "fwd") -> float:
    fwd = 4.0 * B * H * N * N * D * (0.5 if causal else 1.0)
    return fwd * (2.5 if mode == "bwd" else 1.0)


def load_student(path: str | Path | None = None):
    """Import flash_attention.py from `path` (a file or a folder; default: the lab folder's)."""
    path = Path(path or HERE / "flash_attention.py")
    if path.is_dir():
        path = path / "flash_attention.py"
    spec = importlib.util.spec_from_file_location(f"flash_attention_{abs(hash(str(path))) % 10**8}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _attention_fn(impl: str, student, causal: bool):
    """impl -> f(q, k, v) returning o, differentiable."""
    if impl == "yours":
        return lambda q, k, v: student.flash_attention(q, k, v, causal)
    if impl == "math":   # the textbook version: S and P materialized (CPU toy only)
        def math(q, k, v):
            s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
            if causal:
                s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
            return torch.softmax(s.float(), -1).to(q.dtype) @ v
        return math
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backend = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION}[impl]

    def sdpa(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return sdpa


def _time_ms(fn, device: str) -> float:
    if device == "cuda":
        from triton.testing import do_bench
        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def sweep(seqlens=(1024, 2048, 4096, 8192, 16384), impls=IMPLS, B=4, H=16, D=128, causal=True,
          modes=("fwd", "bwd"), dtype=torch.bfloat16, device="cuda", student=None) -> list[dict]:
    """One row per (impl, mode, N): {"impl", "mode", "N", "ms", "tflops"} (ms = nan: not available here,
    with the reason in "error")."""
    student = student or load_student()
    rows = []
    for n in seqlens:
        g = torch.Generator(device="cpu").manual_seed(n)
        q, k, v, do = (torch.randn((B, H, n, D), generator=g).to(device=device, dtype=dtype) for _ in range(4))
        for impl in impls:
            fn = _attention_fn(impl, student, causal)
            for mode in modes:
                row = {"impl": impl, "mode": mode, "N": n, "ms": float("nan"), "tflops": float("nan")}
                try:
                    if mode == "fwd":
                        with torch.no_grad():
                            ms = _time_ms(lambda: fn(q, k, v), device)
                    else:
                        qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))
                        o = fn(qg, kg, vg)
                        ms = _time_ms(lambda: torch.autograd.grad(o, (qg, kg, vg), do, retain_graph=True), device)
                    row.update(ms=ms, tflops=attention_flops(B, H, n, D, causal, mode) / (ms * 1e-3) / 1e12)
                except (NotImplementedError, RuntimeError) as exc:
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                rows.append(row)
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict]) -> None:
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        print(f"\n{mode} TFLOP/s" + ("" if mode == "fwd" else " (backward alone, 2.5x forward FLOPs)"))
        print(f"{'N':>7}" + "".join(f"{i:>14}" for i in impls))
        for n in dict.fromkeys(r["N"] for r in rows):
            cells = []
            for i in impls:
                r = next(r for r in rows if r["impl"] == i and r["mode"] == mode and r["N"] == n)
                cells.append(f"{r['tflops']:>14.1f}" if r["tflops"] == r["tflops"] else f"{'n/a':>14}")
            print(f"{n:>7}" + "".join(cells))
    errors = {(r["impl"], r.get("error")) for r in rows if r.get("error")}
    for impl, err in sorted(errors):
        print(f"{impl}: {err}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--solutions", action="store_true", help="time the reference solution")
    ap.add_argument("--file", help="a flash_attention.py (or its folder) to time instead of the lab's")
    ap.add_argument("--seqlens", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--no-causal", dest="causal", action="store_false")
    ap.add_argument("--mode", choices=("fwd", "bwd", "both"), default="both")
    ap.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_attention.py needs a CUDA GPU (the notebook has a CPU toy version)")
        return 2
    student = load_student(SOLUTION if args.solutions else args.file)
    rows = sweep(args.seqlens, B=args.batch, H=args.heads, D=args.dim, causal=args.causal,
                 modes=("fwd", "bwd") if args.mode == "both" else (args.mode,),
                 dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float16, student=student)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, B={args.batch} H={args.heads} "
          f"D={args.dim} {args.dtype} causal={args.causal}")
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
