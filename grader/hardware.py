"""What machine we are on, and the physical ceilings used for the roofline floor.

Peak rates are the vendor's dense numbers (no sparsity). They are ceilings, not targets: a measured time
below flops/peak or bytes/bandwidth is physically impossible and marks a broken measurement or a cheat.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field

import torch

# name substring -> (HBM bytes/s, {compute unit: FLOP/s})
_PEAKS = {
    "H100 SXM": (3.35e12, {"tensor_bf16": 989e12, "tensor_fp16": 989e12, "tensor_fp8": 1979e12,
                           "tensor_tf32": 495e12, "fp32": 67e12, "fp64": 67e12}),
    "H100 80GB HBM3": (3.35e12, {"tensor_bf16": 989e12, "tensor_fp16": 989e12, "tensor_fp8": 1979e12,
                                 "tensor_tf32": 495e12, "fp32": 67e12, "fp64": 67e12}),
    "H100 PCIe": (2.0e12, {"tensor_bf16": 756e12, "tensor_fp16": 756e12, "tensor_fp8": 1513e12,
                           "tensor_tf32": 378e12, "fp32": 51e12, "fp64": 51e12}),
    "H200": (4.8e12, {"tensor_bf16": 989e12, "tensor_fp16": 989e12, "tensor_fp8": 1979e12,
                      "tensor_tf32": 495e12, "fp32": 67e12, "fp64": 67e12}),
    "A100": (2.04e12, {"tensor_bf16": 312e12, "tensor_fp16": 312e12, "tensor_tf32": 156e12,
                       "fp32": 19.5e12, "fp64": 19.5e12}),
}
# Unknown cards: no GPU sold today beats these, so the floor stays a true lower bound.
_FALLBACK = (8.0e12, {"tensor_bf16": 2500e12, "tensor_fp16": 2500e12, "tensor_fp8": 5000e12,
                      "tensor_tf32": 1250e12, "fp32": 160e12, "fp64": 160e12})


def peaks(gpu_name: str):
    for key, val in _PEAKS.items():
        if key in gpu_name:
            return val
    return _FALLBACK


def floor_ms(gpu_name: str, flops: float | None, bytes_moved: float | None, unit: str) -> float:
    """The roofline floor: max(flops / peak rate, bytes / bandwidth), in ms."""
    bw, rates = peaks(gpu_name)
    t = 0.0
    if flops:
        t = max(t, flops / rates.get(unit, max(rates.values())))
    if bytes_moved:
        t = max(t, bytes_moved / bw)
    return t * 1e3


@dataclass
class Environment:
    tier: str
    gpu: str = "none"
    gpu_count: int = 0
    driver: str = ""
    cuda: str = ""
    sm_clock_mhz: str = ""
    torch: str = torch.__version__
    triton: str = ""
    cupy: str = ""
    python: str = platform.python_version()
    host: str = platform.node()
    seed: int = 0
    utc: str = ""           # when the grade started (the calibration file's "measured")
    host_loop_ms: float = 0.0   # host_loop_ms() at the start: the host CPU's speed then (lower is faster)
    extra: dict = field(default_factory=dict)

    def as_dict(self):
        return asdict(self)


def _version(mod):
    try:
        return __import__(mod).__version__
    except Exception:
        return "absent"


def host_loop_ms(n: int = 200_000, repeats: int = 3) -> float:
    """The fastest of `repeats` runs of a fixed pure-Python loop, in ms: the host CPU's speed at this moment,
    recorded next to host-bound ratios (Benchmark.host_bound). On the H200's VM the same loop took 1x-2x
    its fastest time from one process to the next, pinned to one core or not (2026-11-28)."""
    import time
    best = float("inf")
    for _ in range(repeats):
        t0, s = time.perf_counter(), 0
        for i in range(n):
            s += i
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def environment(tier: str, seed: int) -> Environment:
    import datetime
    env = Environment(tier=tier, seed=seed, triton=_version("triton"), cupy=_version("cupy"),
                      utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                      host_loop_ms=round(host_loop_ms(), 2))
    if tier == "gpu" and torch.cuda.is_available():
        env.gpu = torch.cuda.get_device_name()
        env.gpu_count = torch.cuda.device_count()
        env.cuda = torch.version.cuda or ""
        from .isolation import run_child
        try:
            q = run_child(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.max.sm",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            first = q.stdout.strip().splitlines()[0].split(", ")
            env.driver, env.sm_clock_mhz = first[0], f"{first[1]} (max {first[2]})"
        except Exception:
            pass
    if os.environ.get("TRITON_INTERPRET") == "1":
        env.extra["triton_interpret"] = True
    return env


def gpu_tier_available() -> bool:
    return torch.cuda.is_available()
