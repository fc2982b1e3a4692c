"""Probe of the speed protocol's timed loop on a GPU (instructor tool; not part of grading).

(1) The persisting-L2 set-aside: can this process set it at all (driver return codes, the device's maximum)?
(2) The timed loop of grader.worker.do_bench_run, replicated call by call for lab 10's decode GEMM (the
    solution) and its torch baseline, with host timestamps: per call the event time, the host time of the
    student call and of the whole iteration, and whether the GPU had already reached the start event when the
    call returned (`start.query()`: the GPU caught up with the host, so idle time may sit inside the events).
    Variants: as graded; Python's GC off; without the per-call set-aside read; a 0.5 ms spin.

    PYTHONPATH=. python3 tools/gpu_checks/timing_probe.py [M] [K] [N]
"""
from __future__ import annotations

import ctypes
import gc
import statistics
import sys
import time

import torch

import grader.labs.lab10_w4a16 as L
from grader import runner, worker
from grader.inputs import make
from grader.labs import get
from grader.loader import import_file


def persisting_probe():
    torch.zeros(1, device="cuda")
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuCtxSetLimit.argtypes = [ctypes.c_int, ctypes.c_size_t]
    lib.cuCtxGetLimit.argtypes = [ctypes.POINTER(ctypes.c_size_t), ctypes.c_int]
    dev, v, lim = ctypes.c_int(), ctypes.c_int(), ctypes.c_size_t()
    print("cuCtxGetDevice", lib.cuCtxGetDevice(ctypes.byref(dev)), dev.value)
    for attr, name in ((38, "L2 size"), (108, "max persisting L2"), (109, "max access-policy window")):
        rc = lib.cuDeviceGetAttribute(ctypes.byref(v), attr, dev)
        print(f"  {name}: rc {rc}, {v.value} bytes")
        if attr == 108:
            max_persist = v.value
    for req in (48 << 20, max_persist, 8 << 20):
        rc = lib.cuCtxSetLimit(6, req)
        rc2 = lib.cuCtxGetLimit(ctypes.byref(lim), 6)
        print(f"  cuCtxSetLimit(persisting, {req}) -> rc {rc}; cuCtxGetLimit -> rc {rc2}, {lim.value}")
    t = time.perf_counter()
    for _ in range(1000):
        lib.cuCtxGetLimit(ctypes.byref(lim), 6)
    print(f"  cuCtxGetLimit: {(time.perf_counter() - t) * 1e3:.2f} us per call")
    l2 = worker._PersistingL2()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(100):
        l2.reset()
    print(f"  reset (set 0 + cuCtxResetPersistingL2Cache): {(time.perf_counter() - t) * 1e4:.1f} us per call; "
          f"set-aside now {l2.set_aside()}")


def timed_loop(f, sets, flush, hold, l2, batches=20, reps=10, read_l2=True, gc_off=False):
    ev, call_host, iter_host, caught, walls = [], [], [], [], []
    if gc_off:
        gc.collect()
        gc.disable()
    try:
        for b in range(batches):
            torch.cuda.synchronize()
            l2.reset()
            t_batch = time.perf_counter()
            for j in range(reps):
                i = b * reps + j
                h0 = time.perf_counter()
                flush.zero_()
                if hold:
                    torch.cuda._sleep(hold)
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                h1 = time.perf_counter()
                out = f(sets[i % len(sets)])
                h2 = time.perf_counter()
                e.record()
                caught.append(s.query())
                if read_l2:
                    l2.set_aside()
                ev.append((s, e))
                del out
                call_host.append((h2 - h1) * 1e3)
                iter_host.append((time.perf_counter() - h0) * 1e3)
            torch.cuda.synchronize()
            walls.append((time.perf_counter() - t_batch) * 1e3 / reps)
    finally:
        gc.enable()
    t = [s.elapsed_time(e) for s, e in ev]
    med = statistics.median(t)
    slow = [i % reps for i, x in enumerate(t) if x > 2 * med]
    q = lambda xs, p: sorted(xs)[int(p * (len(xs) - 1))]  # noqa: E731
    means = [statistics.fmean(t[k * reps:(k + 1) * reps]) for k in range(batches)]
    return (f"event med {med * 1e3:6.1f} us, median batch mean {statistics.median(means) * 1e3:6.1f}, p90 {q(t, .9) * 1e3:6.1f}, "
            f"max {max(t) * 1e3:7.1f}; caught up {sum(caught) / len(caught):4.0%}; slow calls at batch index "
            f"{sorted(set(slow))[:10]} ({len(slow)}); host: call med {statistics.median(call_host) * 1e3:5.0f} "
            f"p90 {q(call_host, .9) * 1e3:5.0f} max {max(call_host) * 1e3:6.0f} us, iteration med "
            f"{statistics.median(iter_host) * 1e3:5.0f} p90 {q(iter_host, .9) * 1e3:5.0f} us; wall/call "
            f"{statistics.median(walls) * 1e3:5.0f} us")


def main():
    M, K, N = (int(a) for a in (sys.argv[1:4] if len(sys.argv) >= 4 else (1, 4096, 4096)))
    print(torch.cuda.get_device_name(), torch.__version__)
    persisting_probe()
    S = get("lab10")
    G = import_file("solutions/stage2_llm/lab10_w4a16/w4a16_gemm.py", "stage2_llm/lab10_w4a16")
    p = L.gemm(M, K, N, "bf16")
    sets = [make(S, p, s, "cuda") for s in range(3)]
    flush = torch.empty(runner.L2_FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    l2 = worker._PersistingL2()
    fns = {"solution": lambda inp: G.w4a16_matmul(inp["x"], inp["qweight"], inp["scales"], inp["qzeros"]),
           "torch": lambda inp: S.baselines["torch_bf16"](inp, p)}
    hold2, hold5 = runner.spin_cycles(0.2), runner.spin_cycles(0.5)
    for f in fns.values():                      # compile, autotune, warm up
        t_end = time.perf_counter() + 0.5
        while time.perf_counter() < t_end:
            f(sets[0])
        torch.cuda.synchronize()
    print(f"M={M} K={K} N={N}; spin 0.2 ms = {hold2} cycles")
    variants = {"as graded": {}, "gc off": {"gc_off": True}, "no set-aside read": {"read_l2": False},
                "spin 0.5 ms": {"hold": hold5}, "no spin": {"hold": 0}}
    for name, kw in variants.items():
        for who, f in fns.items():
            kw2 = {"hold": hold2, **kw}
            print(f"{name:18} {who:8} {timed_loop(f, sets, flush, l2=l2, **kw2)}", flush=True)


if __name__ == "__main__":
    main()
