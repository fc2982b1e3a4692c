"""Lab 01: read a profile with the roofline -- is each op launch-bound, memory-bound or compute-bound?

What you write: `roofline_analysis`, which takes what a profiler measures per op (time, and the FLOPs
and bytes the op must do and move, and how many kernels it launched) and the machine's ceilings, and
says where the op's time goes. The notebook applies it to the profile of a Transformer block; the
grader checks it on seeded tables of ops for a few machines.

    floor_us, efficiency, bound = roofline_analysis(time_us, flops, nbytes, launches,
                                                    peak_tflops=989.0, peak_gbps=3350.0, overhead_us=4.0)

The model, per op (all inputs are (N,) fp64 tensors, one entry per op; every nbytes > 0, flops >= 0):

    floor_us   = max(flops / peak FLOP/s, nbytes / peak B/s), in microseconds: the roofline time of the
                 op's work, the least any kernel could take on this machine
    efficiency = floor_us / time_us: the fraction of the roofline the measured op reached
    bound      = LAUNCH_BOUND  if launches * overhead_us > floor_us   (its fixed per-launch cost is more
                               than its work: no faster kernel helps, fewer launches do: fuse, graph)
                 MEMORY_BOUND  otherwise, if flops / nbytes < ridge point (peak FLOP/s / peak B/s)
                 COMPUTE_BOUND otherwise

Units: peak_tflops is in TFLOP/s (1e12 FLOP/s), peak_gbps in GB/s (1e9 B/s), times in microseconds.
Outputs: floor_us and efficiency (N,) fp64; bound (N,) int64 holding the codes below.
"""

from __future__ import annotations

import torch

LAUNCH_BOUND, MEMORY_BOUND, COMPUTE_BOUND = 0, 1, 2
LABELS = ("launch-bound", "memory-bound", "compute-bound")


def roofline_analysis(time_us: torch.Tensor, flops: torch.Tensor, nbytes: torch.Tensor, launches: torch.Tensor,
                      *, peak_tflops: float, peak_gbps: float, overhead_us: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N,) tensors per op -> (floor_us fp64, efficiency fp64, bound int64); see the module docstring."""
    # TODO(lab01): about six lines of tensor code, no Python loop over ops.
    #   1. convert the inputs to fp64; peaks to FLOP/s and B/s (peak_tflops * 1e12, peak_gbps * 1e9).
    #   2. floor_us = elementwise max of the compute time and the memory time, in microseconds
    #      (torch.maximum); efficiency = floor_us / time_us.
    #   3. the ridge point (FLOP per byte) = peak FLOP/s / peak B/s; an op with flops = 0 (a copy) has
    #      intensity 0.
    #   4. bound: LAUNCH_BOUND where launches * overhead_us > floor_us, else MEMORY_BOUND or COMPUTE_BOUND by
    #      intensity vs ridge (torch.where, twice); return it as int64.
    raise NotImplementedError("lab01: roofline_analysis is not written yet (roofline.py)")
