#!/bin/bash
# The wall-clock bound (issue 5; BENCHMARKS.md, "The H200, session 9"): for known-bad lab02 timing exploits
# and the solutions' speed checks, what each call reports against what the grader's own clock leaves for
# it, with the harness's cost measured by null batches (runner.measure; session 9's first call also printed
# the model they replaced). From the repository root, $OUT set:
#   EXPLOITS="patches_timer background_thread" ITEMS="lab01 lab02 lab10 lab03:softmax" bash tools/gpu_checks/wall_bound.sh
# An item LAB:TEXT grades only LAB's speed checks whose name contains TEXT. Items that would not finish
# before DEADLINE_S are skipped. Everything lands in $OUT/wall.tgz; one line per speed check is printed.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 COLUMNS=230
W=/tmp/wallw; mkdir -p $W
DEADLINE_S=${DEADLINE_S:-560}
declare -A EST=([x]=45 [lab01]=115 [lab02]=125 [lab03]=400 [lab04]=240 [lab05]=195 [lab06]=115 [lab10]=65)
T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
summary() {
python3 - "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["labs"][0]
for c in r["checks"]:
    d = c.get("details", {})
    if c["group"] != "speed" or "wall_per_call_ms" not in d:
        if c["group"] == "speed":
            print(f"{r['lab']} {c['status']} {c['name']} :: {c['message'][:160]}")
        continue
    n = d.get("null_per_call_ms", {})
    rep, wall, gap = d["reported_per_call_ms"], d["wall_per_call_ms"], d.get("baseline_host_gap_ms", 0)
    print(f"{r['lab']} {c['status']:4} {c['points']:4.2f} {c['name'][6:-1][:40]:40} rep {rep:8.4f} wall {wall:8.4f} "
          f"rep/wall {rep / wall if wall > 0 else 0:5.3f} gap {gap:6.4f} short {wall - rep:+.4f} allowed "
          f"{(1 - 0.9) * wall + 0.03 + gap:.4f} | null s {n.get('student', 0):.4f} b {n.get('base', 0):.4f}"
          + ("  first: " + ",".join(d["first_run"]["why"]) if d.get("first_run") else "")
          + ("" if c["status"] == "pass" else "  :: " + c["message"][:140]))
PY
}
python3 -m tests.exploits build lab02 > /dev/null
run() {   # tag, then the grade's arguments
  local tag=$1; shift
  local est=${EST[${tag%%[:_]*}]:-${EST[x]}}
  [[ $tag == lab*_* ]] && est=130          # a subset of a lab's speed checks
  local now=$(( $(date +%s) - T0 ))
  if (( now + est > DEADLINE_S )); then echo "SKIPPED $tag at ${now}s"; return; fi
  local t=$(date +%s)
  timeout $(( DEADLINE_S - now )) python3 -m grader grade "$@" --no-progress --json $W/$tag.json > $W/$tag.log 2>&1
  echo "== $tag rc=$? $(( $(date +%s) - t ))s"
  [ -f $W/$tag.json ] && summary $W/$tag.json || tail -3 $W/$tag.log
  tar czf $OUT/wall.tgz -C $W .
}
for x in ${EXPLOITS:-}; do
  run x_$x lab02 --submission tests/.built_exploits/lab02/$x -k "speed[triton-bf16-4096]"
done
for item in ${ITEMS:-}; do
  lab=${item%%:*}; k=speed; [[ $item == *:* ]] && k="speed[${item#*:}"
  run ${item//[:\[]/_} $lab --solutions -k "$k"
done
