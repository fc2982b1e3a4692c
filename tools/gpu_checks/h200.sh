#!/bin/bash
# Speed grades on a second GPU model (the H200 lent from 2026-11-28, session 7): calibration and
# reproducibility (issue 5). From the repository root with $OUT set:
#   ITEMS="lab01:1 lab02:1 ..." bash tools/gpu_checks/h200.sh
# Each item grades one lab's solutions, speed checks only (`grade LAB --solutions -k speed --json`), tagged
# with a run number; an item is skipped (and printed as SKIPPED) when it would not finish before DEADLINE_S,
# so a call always returns what it measured. Everything lands in $OUT/runs.tgz (rewritten after each item)
# and a one-line-per-benchmark summary is printed. CALIBRATE=1 first stores the ratios of every run-1
# report present in $CAL_FROM (a folder of earlier JSON reports) with `labs calibrate --from-json`.
# Session 7 (2026-11-28) ran run 1 of every lab and run 2 of lab01, lab04, lab06, lab10; session 8 run 2 of
# lab02, lab03, lab05, run 3 of lab01, and runs 3-4 of lab10 after fixing its M = 128 configs from
# `STEPS=4 SWEEP_M="128 256" lab10.sh` (BENCHMARKS.md, "The H200, session 8"). Timings: lab03 ~375 s,
# lab05 ~180 s, lab01 ~90 s, lab02 ~100 s, lab10 ~45 s (configs fixed: no autotuning at the benchmarks).
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 COLUMNS=230 TRITON_PRINT_AUTOTUNING=1   # the log shows each autotuner pick
W=/tmp/h200w; mkdir -p $W
DEADLINE_S=${DEADLINE_S:-560}
declare -A EST=([lab01]=100 [lab02]=120 [lab03]=380 [lab04]=230 [lab05]=185 [lab06]=110 [lab10]=60)
T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu --format=csv
python3 -c "import torch, triton, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'python', sys.version.split()[0])"
if [ "${CAL_FROM:-}" != "" ]; then
  for j in $CAL_FROM/*_1.json; do [ -f "$j" ] && python3 -m grader calibrate --from-json "$j"; done
  cp grader/calibration/nvidia-h200.json $W/ 2>/dev/null
fi
summary() {
python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["labs"][0]
for c in r["checks"]:
    if c["group"] != "speed":
        continue
    d = c.get("details", {})
    flags = "".join(f for f, k in (("M", "batch means"), ("2", "measured twice"), ("E", "near a tier edge")) if k in c["message"])
    print(f"{r['lab']} {c['status']:4} {c['points']:5.2f}/{c['max_points']:<5.2f} {c['name'][6:-1][:58]:58} "
          f"{d.get('ratio', 0):7.3f}x scale {d.get('tier_scale', 0):.2f} {flags:3} {d.get('student_ms', 0):.4f} vs {d.get('baseline_ms', 0):.4f} ms"
          + ("" if "tier_scale" in d else "  :: " + c["message"][:120])
          + (f"  first run {d['first_run']['ratio'] or 0:.3f}x {d['first_run']['why']}" if d.get("first_run") else "")
          + (f"  host loop {d['host_loop_ms']:.1f} ms" if "host_loop_ms" in d else ""))
print(f"{r['lab']} total {sum(c['points'] for c in r['checks']):.2f}/{sum(c['max_points'] for c in r['checks']):.2f} in {r.get('seconds', 0):.0f} s")
PY
}
for item in $ITEMS; do
  lab=${item%%:*}; tag=${item##*:}
  now=$(( $(date +%s) - T0 ))
  if (( now + ${EST[$lab]} > DEADLINE_S )); then echo "SKIPPED $item at ${now}s"; continue; fi
  t=$(date +%s)
  timeout $(( DEADLINE_S - now )) python3 -m grader grade $lab --solutions -k speed --no-progress \
      --json $W/${lab}_$tag.json > $W/${lab}_$tag.log 2>&1
  echo "== $item rc=$? $(( $(date +%s) - t ))s (est ${EST[$lab]})"
  [ -f $W/${lab}_$tag.json ] && summary $W/${lab}_$tag.json || tail -5 $W/${lab}_$tag.log
  tar czf $OUT/runs.tgz -C $W .
done
nvidia-smi --query-gpu=clocks.sm,clocks.mem,temperature.gpu --format=csv,noheader
