"""KNOWN-BAD SUBMISSION (tests/adversarial/lab01/roofline_units): bandwidth in the wrong unit."""

from __future__ import annotations

import torch

LAUNCH_BOUND, MEMORY_BOUND, COMPUTE_BOUND = 0, 1, 2
LABELS = ("launch-bound", "memory-bound", "compute-bound")


def roofline_analysis(time_us: torch.Tensor, flops: torch.Tensor, nbytes: torch.Tensor, launches: torch.Tensor,
                      *, peak_tflops: float, peak_gbps: float, overhead_us: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N,) tensors per op -> (floor_us fp64, efficiency fp64, bound int64); see the module docstring."""
    time_us, flops, nbytes, launches = (t.to(torch.float64) for t in (time_us, flops, nbytes, launches))
    peak_flops, peak_bw = peak_tflops * 1e12, peak_gbps * 1e6  # bug: GB/s is 1e9 B/s
    floor_us = torch.maximum(flops / peak_flops, nbytes / peak_bw) * 1e6
    efficiency = floor_us / time_us
    ridge = peak_flops / peak_bw
    by_intensity = torch.where(flops / nbytes < ridge, MEMORY_BOUND, COMPUTE_BOUND)
    bound = torch.where(launches * overhead_us > floor_us, LAUNCH_BOUND, by_intensity)
    return floor_us, efficiency, bound.to(torch.int64)
