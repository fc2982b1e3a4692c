"""Lab 01: one workload to point Nsight Systems or Nsight Compute at (given).

    python profile_target.py copy   [--kernel copy_vectorized] [--source gpu_kernels.cu] [--n 67108864]
    python profile_target.py reduce [--kernel reduce_sum_shfl] [--source gpu_kernels.cu] [--n 67108864]
    python profile_target.py block  [--batch 8] [--seq 1024] [--dim 1024] [--heads 16]
    python profile_target.py step   [--fused] [--source fused_step.py]

Each run warms up, then repeats the workload `--reps` times inside an NVTX range named "target"
(the block's sub-layers carry their own ranges). Typical command lines (README.md explains the metrics):

    nsys profile -t cuda,nvtx,osrt -o lab01_block python profile_target.py block
    nsys stats --report cuda_gpu_kern_sum,nvtx_sum lab01_block.nsys-rep
    ncu -k regex:copy_vectorized -c 1 --metrics dram__throughput.avg.pct_of_peak_sustained_elapsed,\
sm__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active \
        python profile_target.py copy --reps 1
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
for _p in (HERE, HERE.parent.parent):          # the lab's given modules; the repository (grader.cuda)
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from transformer_block import BlockConfig, TransformerBlock, annotate  # noqa: E402


def _import(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def workload(args):
    """A zero-argument function running the chosen work once, on the GPU."""
    if args.what in ("copy", "reduce"):
        import cuda_launch
        x = torch.randn(args.n, device="cuda")
        source = Path(args.source or HERE / "gpu_kernels.cu")
        if args.what == "copy":
            return lambda: cuda_launch.copy(x, kernel=args.kernel or "copy_vectorized", source=source)
        return lambda: cuda_launch.reduce_sum(x, kernel=args.kernel or "reduce_sum_shfl", source=source)
    if args.what == "block":
        cfg = BlockConfig(dim=args.dim, n_heads=args.heads)
        block = TransformerBlock(cfg).to("cuda", torch.bfloat16)
        x = torch.randn(args.batch, args.seq, args.dim, device="cuda", dtype=torch.bfloat16)
        return lambda: block(x)
    from toy_step import StepShape, eager_step
    s = StepShape()
    x, h = torch.randn(s.rows, s.dim, device="cuda"), torch.randn(s.rows, s.dim, device="cuda")
    w, b = torch.randn(s.layers, s.dim, device="cuda"), torch.randn(s.layers, s.dim, device="cuda")
    fn = _import(Path(args.source or HERE / "fused_step.py")).fused_step if args.fused else eager_step
    return lambda: fn(x, h, w, b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("copy", "reduce", "block", "step"))
    ap.add_argument("--kernel", help="copy: copy_scalar | copy_vectorized; reduce: reduce_sum_atomic | "
                                     "reduce_sum_smem | reduce_sum_shfl")
    ap.add_argument("--source", help="your gpu_kernels.cu (copy, reduce) or fused_step.py (step --fused)")
    ap.add_argument("--n", type=int, default=1 << 26, help="floats, copy and reduce (default 64 Mi = 256 MB)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--fused", action="store_true", help="step: run your fused_step instead of eager_step")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_target.py profiles GPU work and needs CUDA", file=sys.stderr)
        return 1
    fn = workload(args)
    for _ in range(2):                       # compile, autotune, allocate: outside the range
        fn()
    torch.cuda.synchronize()
    with annotate("target"):
        for _ in range(args.reps):
            fn()
        torch.cuda.synchronize()
    print(f"profile_target: {args.what} x {args.reps} done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
