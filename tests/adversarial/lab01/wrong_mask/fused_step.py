"""KNOWN-BAD SUBMISSION (tests/adversarial/lab01/wrong_mask): the reference fused kernel with the mask left out
of the row statistics: mean and variance over BLOCK_D lanes, padding included.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from toy_step import DECAY, EPS

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def fused_step_kernel(
    # pointers
    x_ptr, h_ptr, w_ptr, b_ptr, x_out_ptr, h_out_ptr,
    # sizes
    n_layers, dim,
    # strides (elements) between rows; columns are contiguous
    stride_x, stride_h, stride_w, stride_b, stride_x_out, stride_h_out,
    eps,
    # meta-parameters
    DECAY: tl.constexpr, BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    mask = cols < dim
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    h = tl.load(h_ptr + row * stride_h + cols, mask=mask, other=0.0).to(tl.float32)
    for i in range(n_layers):
        w = tl.load(w_ptr + i * stride_w + cols, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + i * stride_b + cols, mask=mask, other=0.0).to(tl.float32)
        h = DECAY * h + (1.0 - DECAY) * x                      # padded lanes stay 0
        mu = tl.sum(h, axis=0) / BLOCK_D                       # bug: the padded lanes count
        d = h - mu                                             # bug: padded lanes hold -mu
        var = tl.sum(d * d, axis=0) / BLOCK_D
        n = d * tl.rsqrt(var + eps) * w + b
        tanh_n = 2.0 * tl.sigmoid(2.0 * n) - 1.0               # tanh(n) = 2 sigmoid(2n) - 1
        x = x + tanh_n * tl.sigmoid(n)
    tl.store(x_out_ptr + row * stride_x_out + cols, x, mask=mask)
    tl.store(h_out_ptr + row * stride_h_out + cols, h, mask=mask)


def fused_step(x: torch.Tensor, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
               eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """x, h: (R, D) fp32; w, b: (L, D) fp32 -> (x_new, h_new), (R, D) fp32 each; see eager_step."""
    if x.dim() != 2 or h.shape != x.shape or w.dim() != 2 or b.shape != w.shape or w.shape[1] != x.shape[1]:
        raise ValueError(f"expected x, h (R, D) and w, b (L, D); got {tuple(x.shape)}, {tuple(h.shape)}, "
                         f"{tuple(w.shape)}, {tuple(b.shape)}")
    if not (x.is_cuda or INTERPRET):
        raise RuntimeError("fused_step runs a Triton kernel: use CUDA tensors, or set TRITON_INTERPRET=1 "
                           "before importing triton to run it on the CPU")
    x, h, w, b = (t if t.stride(-1) == 1 else t.contiguous() for t in (x, h, w, b))
    rows, dim = x.shape
    x_out, h_out = torch.empty_like(x), torch.empty_like(h)
    block_d = triton.next_power_of_2(dim)
    fused_step_kernel[(rows,)](
        x, h, w, b, x_out, h_out,
        w.shape[0], dim,
        x.stride(0), h.stride(0), w.stride(0), b.stride(0), x_out.stride(0), h_out.stride(0),
        eps,
        DECAY=DECAY, BLOCK_D=block_d, num_warps=min(max(block_d // 256, 1), 8),
    )
    return x_out, h_out
