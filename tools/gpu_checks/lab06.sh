#!/bin/bash
# Lab 06 on the H100, from the repo root with PYTHONPATH=. and $OUT set:
#   1. grade the solutions on the GPU tier (every check, speed included)
#   2. grade the skeleton on the GPU (must fail cleanly)
#   3. execute the notebook with LAB06_DIR=solutions (nbclient; run_nb.py where no Jupyter kernel exists)
#   4. a tuning sweep at the benchmark shape: BLOCK_N / warps / stages of both kernels, and the split count
# Worst case ~560 s (each step has its own timeout); typical much less. Logs in $OUT/lab06_*.
set -x
export PYTHONPATH=. PYTHONUNBUFFERED=1 COLUMNS=230
OUT=${OUT:-/tmp/lab06_out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$OUT/lab06_gpu.txt" 2>&1
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" >> "$OUT/lab06_gpu.txt" 2>&1

# 1. solutions, GPU tier
timeout 300 python3 -m grader grade lab06 --solutions --json "$OUT/lab06_sol.json" > "$OUT/lab06_sol.log" 2>&1
echo "solutions rc=$?"
grep -E "FAIL|speed\[" "$OUT/lab06_sol.log" | cut -c1-400
tail -2 "$OUT/lab06_sol.log"

# 2. skeleton, GPU tier
timeout 90 python3 -m grader grade lab06 --json "$OUT/lab06_skel.json" > "$OUT/lab06_skel.log" 2>&1
echo "skeleton rc=$?"
tail -2 "$OUT/lab06_skel.log"

# 3. the notebook on the solutions
timeout 150 python3 - > "$OUT/lab06_nb.log" 2>&1 <<'EOF'
import os, subprocess, sys, time
os.environ["LAB06_DIR"] = os.path.abspath("solutions/stage2_llm/lab06_paged_kv")
t0 = time.time()
try:
    import nbclient, nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    KernelSpecManager().get_kernel_spec("python3")
except Exception as exc:                       # no Jupyter kernel on this machine: run the cells as a script
    print(f"nbclient unavailable ({exc}); running labs notebook", flush=True)
    sys.exit(subprocess.call([sys.executable, "-m", "grader", "notebook", "lab06", "--solutions",
                              "--out", os.environ.get("OUT", ".")]))
path = "stage2_llm/lab06_paged_kv/lab06_paged_kv.ipynb"
nb = nbformat.read(path, as_version=4)
try:
    nbclient.NotebookClient(nb, timeout=140, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    status = "ok"
except Exception as exc:
    status = f"FAILED: {type(exc).__name__}: {str(exc)[-1500:]}"
for i, c in enumerate(nb.cells):
    for o in c.get("outputs", []) if c.cell_type == "code" else []:
        if o.get("output_type") == "stream":
            print(f"--- cell {i} ---\n{o['text'][-2500:]}")
        elif o.get("output_type") == "error":
            print(f"--- cell {i} ERROR --- {o['ename']}: {o['evalue']}")
print(f"notebook: {status} in {time.time() - t0:.0f}s")
EOF
echo "notebook rc=$?"
grep -E "^B=|notebook:|ERROR|WRONG" "$OUT/lab06_nb.log"

# 4. tuning sweep at the benchmark shape (bf16, B=32, 32/8 heads, d=128, page 16, 4096 tokens) and at B=4 x 16384
timeout 100 python3 - 2>&1 <<'EOF' | tee "$OUT/lab06_sweep.log"
import torch, triton
from triton.testing import do_bench
from grader.inputs import make
from grader.labs import get
import grader.labs.lab06_paged_kv as L
from grader.loader import import_file
SPEC = get("lab06")
pa = import_file("solutions/stage2_llm/lab06_paged_kv/paged_attention.py")
for shape in (L.BENCH_SHAPE, L.LONG_SHAPE):
    p = L.attn("paged_decode", **shape)
    x = make(SPEC, p, 0, "cuda")
    ref = SPEC.reference(x, p)
    q, kc, vc, bt, lens = L._attn_args(x)
    nbytes = L.bytes_moved(p)
    copy_ms = do_bench(lambda: L.copy(x, p), warmup=25, rep=200, return_mode="median")
    sdpa_ms = do_bench(lambda: L.gather_sdpa(x, p), warmup=25, rep=200, return_mode="median")
    print(f"\n== B={p['B']} ctx={p['ctx']}: copy {copy_ms * 1e3:.0f} us ({nbytes / copy_ms / 1e6:.0f} GB/s), "
          f"gather+SDPA {sdpa_ms * 1e3:.0f} us")
    B, H, D = q.shape
    meta = pa._meta(q, H, kc.shape[2], D, kc.shape[1])
    o = torch.empty_like(q)
    print(f"{'kernel':<14}{'BLOCK_N':>8}{'warps':>6}{'stages':>7}{'us':>8}{'GB/s':>7}{'x copy':>8}  ok")
    for bn in (32, 64, 128):
        for w in (4, 8):
            for st in (2, 3, 4):
                def run():
                    pa.paged_decode_kernel.fn[(B, kc.shape[2])](
                        q, kc, vc, bt, lens, o, q.stride(0), q.stride(1), kc.stride(0), kc.stride(1), kc.stride(2),
                        vc.stride(0), vc.stride(1), vc.stride(2), bt.stride(0), o.stride(0), o.stride(1),
                        pa._scale(None, D), bt.shape[1] * kc.shape[1], BLOCK_N=bn, num_warps=w, num_stages=st, **meta)
                try:
                    run()
                    ok = SPEC.tolerances_for(p)[0]
                    good = bool(((o.double() - ref).abs() <= ok.atol_rms * ref.pow(2).mean().sqrt() + ok.rtol * ref.abs()).all())
                    ms = do_bench(run, warmup=10, rep=100, return_mode="median")
                    print(f"{'paged_decode':<14}{bn:>8}{w:>6}{st:>7}{ms * 1e3:>8.0f}{nbytes / ms / 1e6:>7.0f}{copy_ms / ms:>8.2f}  {good}")
                except Exception as exc:
                    print(f"{'paged_decode':<14}{bn:>8}{w:>6}{st:>7}  failed: {type(exc).__name__}: {str(exc)[:80]}")
    for splits in (None, 1, 2, 3, 4, 6, 8, 16, 32):
        fn = lambda: pa.paged_decode_attention_split(q, kc, vc, bt, lens, num_splits=splits)
        out = fn()
        ms = do_bench(fn, warmup=10, rep=100, return_mode="median")
        n, tok = pa.split_plan(B, kc.shape[2], bt.shape[1] * kc.shape[1], q.device, splits)
        print(f"split num_splits={str(splits):>4} -> {n:>3} x {tok:>5} tokens: {ms * 1e3:6.0f} us "
              f"{nbytes / ms / 1e6:6.0f} GB/s {copy_ms / ms:5.2f}x copy  max err {(out.double() - ref).abs().max():.2e}")
    for name, fn in (("paged_decode (autotuned)", lambda: pa.paged_decode_attention(q, kc, vc, bt, lens)),):
        fn()
        ms = do_bench(fn, warmup=10, rep=100, return_mode="median")
        best = pa.paged_decode_kernel.best_config
        print(f"{name}: {ms * 1e3:.0f} us, {copy_ms / ms:.2f}x copy, {sdpa_ms / ms:.2f}x gather+SDPA; best {best}")
    del x, q, kc, vc
    torch.cuda.empty_cache()
EOF
echo "sweep rc=$?"
