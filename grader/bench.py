"""`labs bench` (size sweep + plot) and `labs profile` (torch.profiler trace with NVTX; ncu summary).

Both use the grader's one benchmark protocol (grader.runner.measure) or the student's process as the
grader runs it; neither decides a grade.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from .inputs import derive_seed, make
from .labs import get
from .runner import Context, measure, pick_tier, resolve_files
from .spec import Benchmark, SpeedTier

NCU_METRICS = ("gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,"
               "sm__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active")


def gpu_time_ms(fn, reps: int = 50, warmup_s: float = 0.2) -> float:
    """Median GPU time of one fn() call, timed the way the grader times each call (worker.do_bench_run):
    the L2 flushed and the GPU kept busy runner.HOST_SLACK_MS before each call, so the host's launch work
    stays off the clock; CUDA events around the call. In-process, for notebooks and probes: a grade uses
    runner.measure (sibling processes, the baseline interleaved, outputs re-checked)."""
    import time

    import torch

    from .runner import HOST_SLACK_MS, L2_FLUSH_BYTES, spin_cycles
    flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    hold = spin_cycles(HOST_SLACK_MS)
    t_end = time.perf_counter() + warmup_s        # an idle GPU's clock needs ~0.1 s of work to ramp up
    while time.perf_counter() < t_end:
        fn()
        torch.cuda.synchronize()
    events = []
    for _ in range(reps):
        flush.zero_()
        torch.cuda._sleep(hold)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        events.append((start, end))
    torch.cuda.synchronize()
    del flush
    return statistics.median(s.elapsed_time(e) for s, e in events)


def _label(p) -> str:
    dims = [str(v) for k, v in p.items() if isinstance(v, int) and not isinstance(v, bool)]
    return "x".join(dims)


def bench(lab: str, source: str, entry: str | None, out_dir: Path, seed: int, console) -> int:
    spec = get(lab)
    if pick_tier(False) != "gpu":
        console.print("labs bench times GPU kernels and needs CUDA; on this machine run `labs grade "
                      f"{spec.id} --cpu` for correctness (speed is not graded without a GPU).")
        return 1
    if spec.sweep is None:
        console.print(f"{spec.id} defines no sweep")
        return 1
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rich.table import Table

    from . import hardware

    ctx = Context(spec, resolve_files(spec, source), "gpu", seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = [entry] if entry else [b.entry for b in spec.benchmarks]
    entries = list(dict.fromkeys(entries))
    rows = []
    try:
        for e in entries:
            base = next((b.baseline for b in spec.benchmarks if b.entry == e), next(iter(spec.baselines)))
            for params in spec.sweep(e):
                b = Benchmark(f"sweep-{e}-{_label(params)}", e, params, base, (SpeedTier(1.0, 1.0),))
                m = measure(ctx, b, rounds=3, reps=5)
                if "error" in m:
                    console.print(f"[red]{e} {_label(params)}: {m['error']}[/]")
                    break
                stu, bas = statistics.median(m["student"]), statistics.median(m["base"])
                flops = spec.flops(params) if spec.flops else None
                nbytes = spec.bytes_moved(params) if spec.bytes_moved else None
                floor = hardware.floor_ms(ctx.env.gpu, flops, nbytes, spec.compute_unit(params))
                work, unit = (flops / 1e9, "TFLOP/s") if flops else (nbytes / 1e6, "GB/s")
                rows.append({"entry": e, "size": _label(params), "params": params, "student_ms": stu,
                             "baseline": base, "baseline_ms": bas, "unit": unit, "student_rate": work / stu,
                             "baseline_rate": work / bas, "roofline_rate": work / floor})
    finally:
        ctx.close()

    t = Table(title=f"{spec.id} sweep on {ctx.env.gpu}")
    for col in ("entry", "size", "student ms", "baseline ms", "student", "baseline", "roofline", "ratio"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["entry"], r["size"], f"{r['student_ms']:.4f}", f"{r['baseline_ms']:.4f}",
                  f"{r['student_rate']:.1f}", f"{r['baseline_rate']:.1f}", f"{r['roofline_rate']:.0f} {r['unit']}",
                  f"{r['baseline_ms'] / r['student_ms']:.2f}x")
    console.print(t)
    (out_dir / f"{spec.id}_bench.json").write_text(json.dumps({"env": ctx.env.as_dict(), "rows": rows}, indent=1))
    for e in entries:
        sub = [r for r in rows if r["entry"] == e]
        if not sub:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        x = range(len(sub))
        ax.plot(x, [r["student_rate"] for r in sub], "o-", label=f"{e} ({source})")
        ax.plot(x, [r["baseline_rate"] for r in sub], "s--", label=sub[0]["baseline"])
        ax.plot(x, [r["roofline_rate"] for r in sub], "k:", label="roofline (datasheet peak)")
        ax.set_xticks(list(x), [r["size"] for r in sub], rotation=30)
        ax.set_ylabel(sub[0]["unit"])
        ax.set_title(f"{spec.id} {e} on {ctx.env.gpu}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        png = out_dir / f"{spec.id}_{e}.png"
        fig.savefig(png, dpi=120)
        plt.close(fig)
        console.print(f"wrote {png}")
    return 0


def profile(lab: str, source: str, entry: str | None, out_dir: Path, seed: int, console) -> int:
    spec = get(lab)
    if pick_tier(False) != "gpu":
        console.print("labs profile traces GPU kernels and needs CUDA. The profiling lab (lab01) shows "
                      "torch.profiler on the CPU.")
        return 1
    b = next((b for b in spec.benchmarks if entry in (None, b.entry)), None)
    if b is None:
        console.print(f"{spec.id}: no benchmark uses entry {entry!r}")
        return 1
    out_dir.mkdir(parents=True, exist_ok=True)
    trace = out_dir / f"{spec.id}_{b.entry}_trace.json"
    args = [sys.executable, "-m", "grader.bench", spec.id, b.entry, str(source), str(seed), b.name, str(trace)]
    console.print("$ " + " ".join(args))
    r = subprocess.run(args, text=True, capture_output=True)
    console.print(r.stdout + r.stderr)
    if r.returncode:
        return r.returncode
    ncu = shutil.which("ncu")
    if ncu is None:
        console.print("ncu not found; on a machine with Nsight tools: "
                      f"ncu --metrics {NCU_METRICS} {' '.join(args[:-1])} -")
        console.print("Nsight Systems timeline: nsys profile -t cuda,nvtx -o lab " + " ".join(args[:-1]) + " -")
        return 0
    cmd = [ncu, "--metrics", NCU_METRICS, "--nvtx", "--nvtx-include", "student/", "--csv",
           "--print-units", "base"] + args[:-1] + ["-"]
    console.print("$ " + " ".join(cmd))
    r = subprocess.run(cmd, text=True, capture_output=True)
    (out_dir / f"{spec.id}_{b.entry}_ncu.csv").write_text(r.stdout)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith('"')]
    console.print("\n".join(lines[:40]) or (r.stderr[-2000:]))
    return r.returncode


def _profile_once(lab, entry, source, seed, bench_name, trace_path):
    """Run one call of the entry on the benchmark's inputs, inside an NVTX range, under torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    spec = get(lab)
    b = next(x for x in spec.benchmarks if x.name == bench_name)
    fn = spec.load_entry(entry, resolve_files(spec, source))
    inputs = make(spec, b.params, derive_seed(seed, "profile"), "cuda")
    for _ in range(3):
        spec.call(fn, inputs, b.params)
    torch.cuda.synchronize()

    def one_call():
        torch.cuda.nvtx.range_push(f"student/{entry}")
        spec.call(fn, inputs, b.params)
        torch.cuda.synchronize()
        torch.cuda.nvtx.range_pop()

    if trace_path == "-":   # under ncu: CUPTI allows one subscriber, so no torch.profiler here
        one_call()
        return
    with tprofile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        one_call()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
    prof.export_chrome_trace(trace_path)
    print(f"wrote {trace_path} (open in https://ui.perfetto.dev or chrome://tracing)")


if __name__ == "__main__":
    _profile_once(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6])
