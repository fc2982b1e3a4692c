#!/bin/bash
# Lab 01 on the H100, from the repository root with PYTHONPATH=. and $OUT set. Expected ~6-8 minutes, most
# important first (steps 5-6 can be cut); every step has its own timeout and the script goes on after a
# failure. Logs and JSON land in $OUT.
set -x
export OUT PYTHONPATH=. PYTHONUNBUFFERED=1 COLUMNS=230
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee $OUT/lab01_gpu.txt
which ncu nsys | tee -a $OUT/lab01_gpu.txt

# (1) the solutions on the GPU tier: every case, the audit, speed
timeout 330 python3 -m grader grade lab01 --solutions --json $OUT/lab01_sol.json > $OUT/lab01_sol.log 2>&1
grep -E "speed|FAIL|points" $OUT/lab01_sol.log | cut -c1-400

# (2) the skeleton on the GPU: every graded check must fail cleanly (NotImplementedError), no crash
timeout 150 python3 -m grader grade lab01 --no-progress --json $OUT/lab01_skel.json > $OUT/lab01_skel.log 2>&1
tail -3 $OUT/lab01_skel.log
python3 - <<'EOF'
import json, os
r = json.load(open(os.path.join(os.environ["OUT"], "lab01_skel.json")))["labs"][0]
bad = [c["name"] for c in r["checks"] if c["group"] in ("correctness", "audit", "speed") and
       (c["status"] != "fail" or "NotImplementedError" not in c["message"])]
print(f"skeleton: {r['score']}/{r['max_score']}, restarts {r['env'].get('worker_restarts')}, "
      f"checks not failing with NotImplementedError: {bad}")
EOF

# (3) the notebook on the GPU, pointed at the solutions (no Jupyter kernel here: `labs notebook`)
timeout 300 python3 -m grader notebook lab01 --solutions --out $OUT/lab01_nb > $OUT/lab01_nb.log 2>&1
grep -E "^--- cell|GB/s|TFLOP|overhead|per step|busy|bound|Error|Traceback|ran top|FAILED" $OUT/lab01_nb.log | cut -c1-300 | tail -80

# (4) route (b) of the exercise, a CUDA graph of eager_step, graded like a student's submission: calibrates the
#     fused_step tiers (the reference solution is route (a), one Triton kernel)
mkdir -p $OUT/graph_submission
cat > $OUT/graph_submission/fused_step.py <<'EOF'
import torch
from toy_step import EPS, eager_step

_GRAPHS = {}


def fused_step(x, h, w, b, eps=EPS):
    if not x.is_cuda:
        return eager_step(x, h, w, b, eps)
    key = (tuple(x.shape), tuple(w.shape), x.device.index)
    if key not in _GRAPHS:
        static_in = [t.clone() for t in (x, h, w, b)]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                eager_step(*static_in, eps)
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            static_out = eager_step(*static_in, eps)
        _GRAPHS[key] = (g, static_in, static_out)
    g, static_in, static_out = _GRAPHS[key]
    for buf, t in zip(static_in, (x, h, w, b)):
        buf.copy_(t)
    g.replay()
    return tuple(t.clone() for t in static_out)
EOF
timeout 150 python3 -m grader grade lab01 --submission $OUT/graph_submission -k fused_step --json $OUT/lab01_graph.json \
    > $OUT/lab01_graph.log 2>&1
grep -E "speed|FAIL|points" $OUT/lab01_graph.log | cut -c1-400

# (5) tuning sweep: copy / sum GB/s by launch shape, and the step's latency from an idle GPU
timeout 150 python3 - <<'EOF' 2>&1 | tee $OUT/lab01_sweep.log
import statistics, sys, time
import torch
from triton.testing import do_bench
sys.path.insert(0, "stage1_foundations/lab01_gpu_model")
import cuda_launch
from grader.loader import import_file
from toy_step import eager_step
SOL = "solutions/stage1_foundations/lab01_gpu_model/"
CU = SOL + "gpu_kernels.cu"
n = 1 << 26
x = torch.randn(n, device="cuda")
dst = torch.empty_like(x)
copy_ms = do_bench(lambda: dst.copy_(x), warmup=25, rep=200, return_mode="median")
print(f"torch copy_ {8 * n / copy_ms / 1e6:.0f} GB/s; clone {8 * n / do_bench(lambda: x.clone(), rep=200, return_mode='median') / 1e6:.0f} GB/s")
print(f"torch.sum {4 * n / do_bench(lambda: torch.sum(x), rep=200, return_mode='median') / 1e6:.0f} GB/s")
print("copy GB/s: kernel threads | blocks/SM 1 2 4 8 16 32")
for k in cuda_launch.COPY_KERNELS:
    for t in (128, 256, 512, 1024):
        r = [8 * n / do_bench(lambda: cuda_launch.copy(x, k, CU, t, b), rep=100, return_mode="median") / 1e6
             for b in (1, 2, 4, 8, 16, 32)]
        print(f"{k:18s} {t:5d} | " + " ".join(f"{v:6.0f}" for v in r))
print("sum GB/s: kernel | blocks/SM 1 2 4 8 16 32")
for k in cuda_launch.REDUCE_KERNELS:
    r = [4 * n / do_bench(lambda: cuda_launch.reduce_sum(x, k, CU, b), rep=100, return_mode="median") / 1e6
         for b in (1, 2, 4, 8, 16, 32)]
    print(f"{k:18s} | " + " ".join(f"{v:6.0f}" for v in r))

def latency_us(fn, reps=200):
    for _ in range(10):
        fn()
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize(); t0 = time.perf_counter(); fn(); torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6

fused = import_file(SOL + "fused_step.py", "stage1_foundations/lab01_gpu_model").fused_step
graph = import_file(__import__("os").environ["OUT"] + "/graph_submission/fused_step.py",
                    "stage1_foundations/lab01_gpu_model").fused_step
for R, D, L in ((64, 256, 4), (64, 256, 8), (512, 1024, 8)):
    args = [torch.randn(R, D, device="cuda"), torch.randn(R, D, device="cuda"),
            torch.randn(L, D, device="cuda"), torch.randn(L, D, device="cuda")]
    e, f, g = (latency_us(lambda fn=fn: fn(*args)) for fn in (eager_step, fused, graph))
    print(f"step {R}x{D}x{L}: eager {e:.0f} us, fused (Triton) {f:.0f} us = {e / f:.1f}x, graph {g:.0f} us = {e / g:.1f}x")
a = torch.ones(1, device="cuda")
torch.cuda.synchronize(); t0 = time.perf_counter()
for _ in range(5000):
    a.add_(1.0)
torch.cuda.synchronize()
print(f"launch overhead (a.add_ back to back): {(time.perf_counter() - t0) / 5000 * 1e6:.2f} us")
EOF

# (6) the GPU-only tests of tests/test_lab01.py (known-bad submissions caught on the GPU tier)
timeout 200 python3 -m pytest tests/test_lab01.py -q -k on_gpu -p no:cacheprovider 2>&1 | tail -5 | tee $OUT/lab01_pytest_gpu.log
