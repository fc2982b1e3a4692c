#!/bin/bash
# Lab 05 (KV cache) on the H100, from the repository root with PYTHONPATH=. and $OUT set. Most important
# first: (1)-(3) are the acceptance run (~5-6 min), (4)-(6) calibrate tiers and tolerances (~5 min; cut
# them if time is short: (6) alone is ~3 min). Every step has its own timeout; the script goes on after a
# failure. Logs in $OUT.
set -x
export OUT PYTHONPATH=. PYTHONUNBUFFERED=1 COLUMNS=230
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee $OUT/lab05_gpu.txt

# (1) the solutions on the GPU tier: every case (fp32 + bf16, 700-1500 tokens), the speed benchmark
timeout 420 python3 -m grader grade lab05 --solutions --json $OUT/lab05_sol.json > $OUT/lab05_sol.log 2>&1
grep -E "speed|FAIL|points" $OUT/lab05_sol.log | cut -c1-400
python3 - <<'EOF'
import json, os
r = json.load(open(os.path.join(os.environ["OUT"], "lab05_sol.json")))["labs"][0]
print(f"solutions: {r['score']}/{r['max_score']} on {r['env'].get('gpu')}")
for c in r["checks"]:
    d = c.get("details", {})
    if c["group"] == "correctness":       # tolerance headroom: fp32 atol_rms 1e-5, bf16 0.2
        print(f"  {c['status']:4} {c['name']:<70} rel_err {d.get('rel_err', float('nan')):.2e}  {c['seconds']:.1f}s")
    if c["group"] == "speed":
        print(f"  {c['status']:4} {c['name']}: ratio {d.get('ratio', 0):.2f}x, student {d.get('student_ms', 0):.1f} ms, "
              f"recompute {d.get('baseline_ms', 0):.1f} ms, floor {d.get('floor_ms', 0):.2f} ms, "
              f"wall/call {d.get('wall_per_call_ms', 0):.1f} ms :: {c['message'][:200]}")
EOF

# (2) the skeleton on the GPU: every graded check must fail cleanly (NotImplementedError), no crash
timeout 150 python3 -m grader grade lab05 --no-progress --json $OUT/lab05_skel.json > $OUT/lab05_skel.log 2>&1
tail -3 $OUT/lab05_skel.log
python3 - <<'EOF'
import json, os
r = json.load(open(os.path.join(os.environ["OUT"], "lab05_skel.json")))["labs"][0]
bad = [c["name"] for c in r["checks"] if c["group"] in ("correctness", "speed") and
       (c["status"] != "fail" or "NotImplementedError" not in c["message"])]
print(f"skeleton: {r['score']}/{r['max_score']}, restarts {r['env'].get('worker_restarts')}, "
      f"checks not failing with NotImplementedError: {bad}")
EOF

# (3) the notebook on the GPU, pointed at the solutions (no Jupyter kernel here: `labs notebook`)
timeout 300 python3 -m grader notebook lab05 --solutions --out $OUT/lab05_nb > $OUT/lab05_nb.log 2>&1
grep -E "^--- cell|context|WRONG|not written|same tokens|->|Error|Traceback|ran top|FAILED|points" $OUT/lab05_nb.log \
    | cut -c1-300 | tail -60

# (4) calibration: cache vs recompute by context (B=16, N=32, bf16, the benchmark model), prefill and
#     per-step decode times, the decode step against its memory floor
timeout 150 python3 - <<'EOF' 2>&1 | tee $OUT/lab05_sweep.log
import statistics, sys, time
import torch
import grader.labs.lab05_kv_cache as M
from grader.inputs import make
from grader.labs import get
from grader.loader import import_file
S = get("lab05")
kv = import_file("solutions/stage2_llm/lab05_kv_cache/kv_cache.py", "stage2_llm/lab05_kv_cache")

def secs(fn, reps=3):
    fn(); torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts)

for T in (1024, 2048, 4096):
    p = M.decode(M.BENCH_CFG, 16, T, 32, dtype="bf16", min_len=T * 3 // 4, nan_pad=False)
    inp = make(S, p, 0, "cuda")
    model = M.build_model(inp, p)
    with torch.inference_mode():
        t_gen = secs(lambda: kv.generate(model, inp["prompt"], inp["prompt_lens"], 32, forced=inp["forced"]))
        t_pre = secs(lambda: kv.generate(model, inp["prompt"], inp["prompt_lens"], 1, forced=inp["forced"]))
        t_rec = secs(lambda: M.recompute(inp, p), reps=1)
    step = (t_gen - t_pre) / 31
    floor = M.bytes_moved(p) / 32 / 3.35e12
    print(f"T={T:5d}: cache {t_gen * 1e3:7.1f} ms (prefill {t_pre * 1e3:6.1f} ms, decode {step * 1e3:5.2f} ms/step, "
          f"memory floor {floor * 1e3:.2f} ms/step), recompute {t_rec * 1e3:7.1f} ms -> {t_rec / t_gen:5.2f}x")
EOF

# (5) bf16 tolerance check: known-bad submissions must fail the GPU bf16 cases too
python3 -m tests.exploits build lab05 > /dev/null     # the known-bad submissions, built from their patches
for x in wrong_rope_offset uninitialized_cache pads_not_masked ignores_lengths; do
  timeout 120 python3 -m grader grade lab05 --submission tests/.built_exploits/lab05/$x -k "decode[bf16" --no-progress \
      --json $OUT/lab05_x_$x.json > $OUT/lab05_x_$x.log 2>&1
  python3 - "$x" <<'EOF'
import json, os, sys
r = json.load(open(os.path.join(os.environ["OUT"], f"lab05_x_{sys.argv[1]}.json")))["labs"][0]
for c in r["checks"]:
    if c["group"] == "correctness":
        print(f"{sys.argv[1]}: {c['status']} {c['name']} :: {c['message'][:160]}")
EOF
done

# (6) the GPU-only test: the no-cache submission fails the speed tier (~3 min: both processes recompute 60+ times)
timeout 300 python3 -m pytest tests/test_lab05.py -q -k "on_gpu" -p no:cacheprovider 2>&1 | tail -5 | tee $OUT/lab05_pytest_gpu.log
