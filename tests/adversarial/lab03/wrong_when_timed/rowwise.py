"""KNOWN-BAD SUBMISSION, kept as a test the grader must reject (README.md beside it).

softmax detects a timed call (the worker's timing loop is on its own process's stack) and then returns
an uninitialized tensor instead of running its kernel: right in every correctness trial, free when timed.

The rest is the reference solution:
Lab 03: fused row-wise kernels in Triton -- softmax, RMSNorm (forward and backward), LayerNorm.

What you write: the bodies of the four kernels below (`softmax_kernel`, `rmsnorm_fwd_kernel`,
`layernorm_fwd_kernel`, `rmsnorm_bwd_kernel`; the skeleton's wrappers raise NotImplementedError until
you do). The wrappers (given) check inputs, flatten leading dimensions, allocate outputs, pick the block
size and launch.

    softmax(x)                         x: (..., N)       -> y: (..., N), dtype of x
    rmsnorm_fwd(x, weight, eps)        weight: (N,)      -> y = x / sqrt(mean(x^2) + eps) * weight
    layernorm_fwd(x, weight, bias, eps)                  -> y = (x - mean) / sqrt(var + eps) * weight + bias
    rmsnorm_bwd(dy, x, weight, eps)                      -> (dx: (..., N) dtype of x, dw: (N,) dtype of weight)

fp16 / bf16 / fp32 on a GPU (fp32 / fp16 under the CPU interpreter). Every kernel loads in the storage
dtype, computes in fp32 and rounds once when it stores. Checked by `labs grade lab03` against fp64
references; timed against torch eager and against a device copy of the same number of bytes.

Why fuse: each of these ops reads a row, reduces it to one or two numbers, and rewrites it. Written as
separate PyTorch ops every step is a kernel that reads and writes the whole tensor; fused, the row is read
from HBM once and written once, so the kernel runs at copy speed.

The idea, per program (one row):
    row fits in one block (N <= MAX_FUSED_SIZE):  load it once into registers, reduce, write
    wider rows: loop over column blocks, masking the last one; softmax keeps a running max m and sum l
        (online softmax: l = l * exp(m_old - m_new) + sum(exp(x - m_new))), then a second loop writes
"""

from __future__ import annotations

import functools
import math
import os

import sys

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# The widest row (in elements) that one program holds in registers; wider rows loop over blocks of
# LOOP_BLOCK_SIZE. 16384 fp32 values over 16 warps are 32 registers per thread per live row copy. The
# interpreter gets small blocks so that the CPU tier exercises both paths.
MAX_FUSED_SIZE = 1024 if INTERPRET else 16384
LOOP_BLOCK_SIZE = 1024 if INTERPRET else 8192
REDUCTION_PROGRAMS_CPU = 4   # rmsnorm_bwd programs when there is no GPU to count SMs on


def row_config(n_cols: int, values_per_thread: int = 16, max_warps: int = 16) -> tuple[int, int, bool]:
    """(BLOCK_SIZE, num_warps, row_fits) for a kernel whose programs own whole rows.

    About `values_per_thread` values per thread: a few 16-byte loads in flight per thread to cover HBM
    latency, few enough registers that the compiler does not spill. rmsnorm_bwd keeps four row-sized
    values live (x, dy, w, dw), so it asks for fewer values per thread.
    """
    if n_cols <= MAX_FUSED_SIZE:
        block, fits = triton.next_power_of_2(max(n_cols, 1)), True
    else:
        block, fits = LOOP_BLOCK_SIZE, False
    num_warps = min(max(block // (32 * values_per_thread), 4), max_warps)
    return block, num_warps, fits


# ---- softmax ---------------------------------------------------------------------------------------

@triton.jit
def softmax_kernel(
    # pointers
    x_ptr, y_ptr,
    # sizes
    n_cols,
    # strides (elements) between consecutive rows; columns are contiguous
    stride_x_row, stride_y_row,
    # meta-parameters
    BLOCK_SIZE: tl.constexpr, ROW_FITS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x_row
    y_row = y_ptr + row * stride_y_row
    cols = tl.arange(0, BLOCK_SIZE)
    if ROW_FITS:
        # masked lanes load -inf: they cannot win the max and exp(-inf) = 0 adds nothing to the sum
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        num = tl.exp(x - tl.max(x, axis=0))
        y = num / tl.sum(num, axis=0)
        tl.store(y_row + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        # pass 1, online: running max m and running sum l of exp(x - m); a new max rescales l
        m = tl.full((), float("-inf"), tl.float32)
        l = tl.full((), 0.0, tl.float32)
        for start in range(0, n_cols, BLOCK_SIZE):
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            l = l * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
        # pass 2: the row again (mostly from L2), normalized
        inv_l = 1.0 / l
        for start in range(0, n_cols, BLOCK_SIZE):
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=float("-inf")).to(tl.float32)
            y = tl.exp(x - m) * inv_l
            tl.store(y_row + start + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


# ---- RMSNorm forward -------------------------------------------------------------------------------

@triton.jit
def rmsnorm_fwd_kernel(
    x_ptr, w_ptr, y_ptr,
    n_cols,
    stride_x_row, stride_y_row,
    eps,
    BLOCK_SIZE: tl.constexpr, ROW_FITS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x_row
    y_row = y_ptr + row * stride_y_row
    cols = tl.arange(0, BLOCK_SIZE)
    if ROW_FITS:
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)     # divide by n_cols, not BLOCK_SIZE
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_row + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)
    else:
        # per-lane partial sums, reduced once after the loop
        sum_sq = tl.zeros((BLOCK_SIZE,), tl.float32)
        for start in range(0, n_cols, BLOCK_SIZE):
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            sum_sq += x * x
        rstd = tl.rsqrt(tl.sum(sum_sq, axis=0) / n_cols + eps)
        for start in range(0, n_cols, BLOCK_SIZE):
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
            tl.store(y_row + start + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)


# ---- LayerNorm forward -----------------------------------------------------------------------------

@triton.jit
def layernorm_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    n_cols,
    stride_x_row, stride_y_row,
    eps,
    BLOCK_SIZE: tl.constexpr, ROW_FITS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x_row
    y_row = y_ptr + row * stride_y_row
    cols = tl.arange(0, BLOCK_SIZE)
    if ROW_FITS:
        mask = cols < n_cols
        x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / n_cols
        xc = tl.where(mask, x - mean, 0.0)          # padded lanes would add mean^2 to the variance
        rstd = tl.rsqrt(tl.sum(xc * xc, axis=0) / n_cols + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_row + cols, (xc * rstd * w + b).to(y_ptr.dtype.element_ty), mask=mask)
    else:
        # three passes: mean, then the variance of (x - mean) (two-pass: no cancellation), then write
        acc = tl.zeros((BLOCK_SIZE,), tl.float32)
        for start in range(0, n_cols, BLOCK_SIZE):
            mask = start + cols < n_cols
            acc += tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(acc, axis=0) / n_cols
        acc = tl.zeros((BLOCK_SIZE,), tl.float32)
        for start in range(0, n_cols, BLOCK_SIZE):
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            xc = tl.where(mask, x - mean, 0.0)
            acc += xc * xc
        rstd = tl.rsqrt(tl.sum(acc, axis=0) / n_cols + eps)
        for start in range(0, n_cols, BLOCK_SIZE):
            mask = start + cols < n_cols
            x = tl.load(x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
            y = (x - mean) * rstd * w + b
            tl.store(y_row + start + cols, y.to(y_ptr.dtype.element_ty), mask=mask)


# ---- RMSNorm backward ------------------------------------------------------------------------------

@triton.jit
def rmsnorm_bwd_kernel(
    dy_ptr, x_ptr, w_ptr, dx_ptr, dw_partial_ptr,
    n_rows, n_cols, rows_per_program,
    stride_dy_row, stride_x_row, stride_dx_row,
    eps,
    BLOCK_SIZE: tl.constexpr, ROW_FITS: tl.constexpr,
):
    # program pid owns rows [pid * rows_per_program, ...) and row pid of dw_partial (n_programs, n_cols)
    pid = tl.program_id(0).to(tl.int64)
    row_start = pid * rows_per_program                 # int64, so row * stride cannot overflow
    row_end = tl.minimum(row_start + rows_per_program, n_rows)
    dw_row = dw_partial_ptr + pid * n_cols
    cols = tl.arange(0, BLOCK_SIZE)
    if ROW_FITS:
        mask = cols < n_cols
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        dw_acc = tl.zeros((BLOCK_SIZE,), tl.float32)
        # Software pipelining by hand: row r + 1 is loaded before row r is reduced, so its HBM latency
        # hides behind this row's two block-wide reductions (H100, 4096 x 8192 bf16: 0.64x -> 0.83x copy).
        # Rows wider than 8192 hold too many registers for a second copy (spills; measured 5x slower).
        PREFETCH: tl.constexpr = BLOCK_SIZE <= 8192
        if PREFETCH:
            first = cols < tl.where(row_start < row_end, n_cols, 0)     # all-false when there is no row
            x_next = tl.load(x_ptr + row_start * stride_x_row + cols, mask=first, other=0.0)
            dy_next = tl.load(dy_ptr + row_start * stride_dy_row + cols, mask=first, other=0.0)
        for r in range(row_start, row_end):
            if PREFETCH:
                x = x_next.to(tl.float32)
                dy = dy_next.to(tl.float32)
                more = cols < tl.where(r + 1 < row_end, n_cols, 0)
                x_next = tl.load(x_ptr + (r + 1) * stride_x_row + cols, mask=more, other=0.0)
                dy_next = tl.load(dy_ptr + (r + 1) * stride_dy_row + cols, mask=more, other=0.0)
            else:
                x = tl.load(x_ptr + r * stride_x_row + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(dy_ptr + r * stride_dy_row + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
            xhat = x * rstd
            g = dy * w
            # dx = rstd * (g - xhat * mean(g * xhat)): the second term is the gradient through rstd
            dx = (g - xhat * (tl.sum(g * xhat, axis=0) / n_cols)) * rstd
            tl.store(dx_ptr + r * stride_dx_row + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dw_acc += dy * xhat
        tl.store(dw_row + cols, dw_acc, mask=mask)
    else:
        # this program's dw_partial row lives in memory: zero it, then add each row's dy * xhat to it
        for start in range(0, n_cols, BLOCK_SIZE):
            tl.store(dw_row + start + cols, tl.zeros((BLOCK_SIZE,), tl.float32), mask=start + cols < n_cols)
        for r in range(row_start, row_end):
            sum_xx = tl.zeros((BLOCK_SIZE,), tl.float32)
            sum_gx = tl.zeros((BLOCK_SIZE,), tl.float32)
            for start in range(0, n_cols, BLOCK_SIZE):
                mask = start + cols < n_cols
                x = tl.load(x_ptr + r * stride_x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(dy_ptr + r * stride_dy_row + start + cols, mask=mask, other=0.0).to(tl.float32)
                w = tl.load(w_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
                sum_xx += x * x
                sum_gx += dy * w * x
            rstd = tl.rsqrt(tl.sum(sum_xx, axis=0) / n_cols + eps)
            c = tl.sum(sum_gx, axis=0) * rstd / n_cols         # mean(g * xhat) = rstd * mean(g * x)
            for start in range(0, n_cols, BLOCK_SIZE):
                mask = start + cols < n_cols
                x = tl.load(x_ptr + r * stride_x_row + start + cols, mask=mask, other=0.0).to(tl.float32)
                dy = tl.load(dy_ptr + r * stride_dy_row + start + cols, mask=mask, other=0.0).to(tl.float32)
                w = tl.load(w_ptr + start + cols, mask=mask, other=0.0).to(tl.float32)
                xhat = x * rstd
                dx = (dy * w - xhat * c) * rstd
                tl.store(dx_ptr + r * stride_dx_row + start + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
                dw = tl.load(dw_row + start + cols, mask=mask, other=0.0)
                tl.store(dw_row + start + cols, dw + dy * xhat, mask=mask)


# ---- wrappers (given) ------------------------------------------------------------------------------

def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """x as a (rows, N) matrix whose columns are contiguous; the row stride may be anything."""
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"{name}: expected fp16, bf16 or fp32, got {x.dtype}")
    x2 = x.reshape(math.prod(x.shape[:-1]), x.shape[-1])
    if x2.shape[1] > 1 and x2.stride(1) != 1:
        x2 = x2.contiguous()
    return x2


def _check_param(p: torch.Tensor, name: str, x: torch.Tensor) -> torch.Tensor:
    if p.shape != (x.shape[-1],):
        raise ValueError(f"{name} must have shape ({x.shape[-1]},), got {tuple(p.shape)}")
    if p.device != x.device:
        raise ValueError(f"{name} is on {p.device}, x on {x.device}")
    if p.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"{name}: expected fp16, bf16 or fp32, got {p.dtype}")
    return p.contiguous()


def _timed() -> bool:
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "do_bench_run":
            return True
        f = f.f_back
    return False


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension. x: (..., N) -> (..., N), same dtype."""
    if _timed():
        return torch.empty_like(x)           # EXPLOIT: no work in timed calls
    x2 = _rows(x, "x")
    M, N = x2.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y.view(x.shape)
    block, num_warps, fits = row_config(N)
    softmax_kernel[(M,)](
        x2, y, N, x2.stride(0), y.stride(0),
        BLOCK_SIZE=block, ROW_FITS=fits, num_warps=num_warps,
    )
    return y.view(x.shape)


def rmsnorm_fwd(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """y = x / sqrt(mean(x^2, last dim) + eps) * weight. x: (..., N), weight: (N,) -> (..., N), dtype of x."""
    x2 = _rows(x, "x")
    weight = _check_param(weight, "weight", x)
    M, N = x2.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y.view(x.shape)
    block, num_warps, fits = row_config(N)
    rmsnorm_fwd_kernel[(M,)](
        x2, weight, y, N, x2.stride(0), y.stride(0), eps,
        BLOCK_SIZE=block, ROW_FITS=fits, num_warps=num_warps,
    )
    return y.view(x.shape)


def layernorm_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last dim (biased variance, as torch).
    x: (..., N), weight and bias: (N,) -> (..., N), dtype of x."""
    x2 = _rows(x, "x")
    weight = _check_param(weight, "weight", x)
    bias = _check_param(bias, "bias", x)
    M, N = x2.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y.view(x.shape)
    block, num_warps, fits = row_config(N)
    layernorm_fwd_kernel[(M,)](
        x2, weight, bias, y, N, x2.stride(0), y.stride(0), eps,
        BLOCK_SIZE=block, ROW_FITS=fits, num_warps=num_warps,
    )
    return y.view(x.shape)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count     # ~10 us: ask once


def reduction_programs(device: torch.device, num_warps: int) -> int:
    """How many programs share the rows in rmsnorm_bwd: as many as run at once, so dw_partial stays small.
    A program holds two rows' x and dy (this one and the prefetched next) plus w and dw_acc: 16 values
    per thread each, ~100 registers; 512 threads per SM at that fit in its 64K registers."""
    if device.type == "cuda":
        return _sm_count(device.index or 0) * max(1, 16 // num_warps)
    return REDUCTION_PROGRAMS_CPU


def rmsnorm_bwd(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of y = rmsnorm_fwd(x, weight, eps) given dy = dL/dy.

    dy, x: (..., N); weight: (N,) -> dx: (..., N) in x's dtype, dw: (N,) in weight's dtype (as autograd
    would give). dw = sum over all rows of dy * xhat: each program sums its rows into one fp32 row of
    dw_partial (n_programs, N), then torch adds the n_programs rows -- two stages, no atomics.
    """
    if dy.shape != x.shape:
        raise ValueError(f"dy {tuple(dy.shape)} and x {tuple(x.shape)} differ")
    x2, dy2 = _rows(x, "x"), _rows(dy, "dy")
    weight = _check_param(weight, "weight", x)
    M, N = x2.shape
    dx = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return dx.view(x.shape), torch.zeros(N, dtype=weight.dtype, device=x.device)
    block, num_warps, fits = row_config(N, values_per_thread=16, max_warps=32)
    rows_per_program = triton.cdiv(M, min(M, reduction_programs(x.device, num_warps)))
    programs = triton.cdiv(M, rows_per_program)          # every program gets at least one row
    dw_partial = torch.empty((programs, N), dtype=torch.float32, device=x.device)
    rmsnorm_bwd_kernel[(programs,)](
        dy2, x2, weight, dx, dw_partial,
        M, N, rows_per_program,
        dy2.stride(0), x2.stride(0), dx.stride(0),
        eps,
        BLOCK_SIZE=block, ROW_FITS=fits, num_warps=num_warps,
    )
    dw = dw_partial.sum(dim=0).to(weight.dtype)
    return dx.view(x.shape), dw
