"""Lab 03: fused row-wise kernels in Triton -- softmax, RMSNorm (forward and backward), LayerNorm.

What you write: the bodies of the four kernels below (`softmax_kernel`, `rmsnorm_fwd_kernel`,
`layernorm_fwd_kernel`, `rmsnorm_bwd_kernel`); then delete the `raise NotImplementedError` line in each
wrapper. The wrappers (given) check inputs, flatten leading dimensions, allocate outputs, pick the block
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
    # TODO(lab03): one program per row; y = exp(x - max(x)) / sum(exp(x - max(x))), computed in fp32.
    #   1. row = tl.program_id(0) (as int64); x_row = x_ptr + row * stride_x_row, same for y.
    #      cols = tl.arange(0, BLOCK_SIZE).
    #   2. ROW_FITS (n_cols <= BLOCK_SIZE): one masked tl.load of the row -- other=float("-inf"), so the
    #      padded lanes lose the max and add exp(-inf) = 0 to the sum --, .to(tl.float32);
    #      m = tl.max, num = tl.exp(x - m), y = num / tl.sum(num); tl.store cast to y_ptr.dtype.element_ty.
    #   3. else (wider rows; BLOCK_SIZE is a column block): online softmax. Start from
    #      m = tl.full((), float("-inf"), tl.float32) and l = tl.full((), 0.0, tl.float32); for each block
    #      (for start in range(0, n_cols, BLOCK_SIZE), mask = start + cols < n_cols):
    #          m_new = max(m, max of the block)
    #          l     = l * exp(m - m_new) + sum(exp(x_block - m_new))      # rescale the old sum
    #          m     = m_new
    #      then a second loop reloads each block and stores exp(x - m) / l.
    pass


# ---- RMSNorm forward -------------------------------------------------------------------------------

@triton.jit
def rmsnorm_fwd_kernel(
    x_ptr, w_ptr, y_ptr,
    n_cols,
    stride_x_row, stride_y_row,
    eps,
    BLOCK_SIZE: tl.constexpr, ROW_FITS: tl.constexpr,
):
    # TODO(lab03): one program per row; y = x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps).
    #   1. row, x_row, y_row, cols as in softmax_kernel.
    #   2. ROW_FITS: masked load (other=0.0 -- zeros add nothing to a sum of squares), .to(tl.float32);
    #      rstd = tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)   <- divide by n_cols, not BLOCK_SIZE;
    #      load w (masked), store (x * rstd * w) cast to the output dtype.
    #   3. else: a loop accumulating x * x into a (BLOCK_SIZE,) fp32 vector (tl.zeros), tl.sum it once
    #      after the loop, then a second loop that reloads x and w and stores.
    pass


# ---- LayerNorm forward -----------------------------------------------------------------------------

@triton.jit
def layernorm_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    n_cols,
    stride_x_row, stride_y_row,
    eps,
    BLOCK_SIZE: tl.constexpr, ROW_FITS: tl.constexpr,
):
    # TODO(lab03): one program per row; y = (x - mean) * rstd * w + b, rstd = 1 / sqrt(var + eps), with
    #   the biased variance var = mean((x - mean)^2) (as torch).
    #   1. ROW_FITS: masked load (other=0.0), mean = sum / n_cols; xc = tl.where(mask, x - mean, 0.0)
    #      (the padded lanes would otherwise add mean^2 each to the variance); var = sum(xc * xc) / n_cols;
    #      load w and b (masked); store xc * rstd * w + b.
    #   2. else: three loops over the column blocks -- the mean, then the variance of (x - mean)
    #      (two passes: sum(x^2) - n * mean^2 cancels badly when |mean| >> std), then the output.
    pass


# ---- RMSNorm backward ------------------------------------------------------------------------------

@triton.jit
def rmsnorm_bwd_kernel(
    dy_ptr, x_ptr, w_ptr, dx_ptr, dw_partial_ptr,
    n_rows, n_cols, rows_per_program,
    stride_dy_row, stride_x_row, stride_dx_row,
    eps,
    BLOCK_SIZE: tl.constexpr, ROW_FITS: tl.constexpr,
):
    # TODO(lab03): program pid owns rows [pid * rows_per_program, min(.. + rows_per_program, n_rows)) and
    #   writes row pid of dw_partial (n_programs, n_cols), fp32. Per row, with rstd as in the forward,
    #   xhat = x * rstd and g = dy * w:
    #       dx = rstd * (g - xhat * mean(g * xhat))      # the second term: the gradient through rstd
    #       dw_partial[pid] += dy * xhat                 # the wrapper sums the rows of dw_partial
    #   1. pid = tl.program_id(0).to(tl.int64) (so row * stride cannot overflow); row_start, row_end;
    #      dw_row = dw_partial_ptr + pid * n_cols.
    #   2. ROW_FITS: load w once; dw_acc = tl.zeros((BLOCK_SIZE,), tl.float32); for r in
    #      range(row_start, row_end): load x and dy (masked, other=0.0), compute and store dx, dw_acc +=
    #      dy * xhat. After the loop store dw_acc to dw_row (a store even when the loop ran zero times:
    #      dw_partial comes from torch.empty).
    #   3. else: dw_acc cannot hold a whole row -- zero dw_row in memory first; per row, one loop over the
    #      blocks for sum(x * x) and sum(g * x) (mean(g * xhat) = rstd * mean(g * x)), a second that stores
    #      dx and adds dy * xhat into dw_row (load, add, store: this program alone owns that row).
    #   Speed (the copy-bandwidth target): in 2., one row at a time leaves the SM waiting on HBM during
    #   each row's two reductions. Load row r + 1's x and dy (masked off when r + 1 == row_end) before you reduce
    #   row r, and carry them into the next iteration: the load latency then hides behind the math.
    pass


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


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension. x: (..., N) -> (..., N), same dtype."""
    x2 = _rows(x, "x")
    M, N = x2.shape
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y.view(x.shape)
    block, num_warps, fits = row_config(N)
    raise NotImplementedError("lab03: softmax_kernel in rowwise.py is not written yet "
                              "(delete this line once it is)")
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
    raise NotImplementedError("lab03: rmsnorm_fwd_kernel in rowwise.py is not written yet "
                              "(delete this line once it is)")
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
    raise NotImplementedError("lab03: layernorm_fwd_kernel in rowwise.py is not written yet "
                              "(delete this line once it is)")
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
    raise NotImplementedError("lab03: rmsnorm_bwd_kernel in rowwise.py is not written yet "
                              "(delete this line once it is)")
    rmsnorm_bwd_kernel[(programs,)](
        dy2, x2, weight, dx, dw_partial,
        M, N, rows_per_program,
        dy2.stride(0), x2.stride(0), dx.stride(0),
        eps,
        BLOCK_SIZE=block, ROW_FITS=fits, num_warps=num_warps,
    )
    dw = dw_partial.sum(dim=0).to(weight.dtype)
    return dx.view(x.shape), dw
