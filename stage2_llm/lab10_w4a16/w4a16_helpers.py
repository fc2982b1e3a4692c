"""Lab 10: given Triton helpers of the W4A16 GEMM (complete; imported by w4a16_gemm.py).

int4_to_float turns 4-bit codes into floats with bit operations; splitk_epilogue finishes a split-K
tile (the last program to arrive adds the partial sums and stores). Read them; you do not edit them.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def int4_to_float(q, DTYPE: tl.constexpr):
    """Codes 0..15 (int32) -> MAGIC + q in DTYPE, exactly, with bit operations only (no I2F instruction).
    Subtract int4_to_float(z) to get q - z: the MAGIC cancels and the difference is exact."""
    if DTYPE == tl.float16:
        return (q | 0x6400).to(tl.int16).to(tl.float16, bitcast=True)      # 1024 + q
    elif DTYPE == tl.bfloat16:
        return (q | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)     # 128 + q
    else:
        return (q | 0x4B000000).to(tl.float32, bitcast=True)                # 2^23 + q


@triton.jit
def splitk_epilogue(acc, y_ptr, partial_ptr, tile_lock_ptr, M, N, stride_ym, stride_yn,
                    pid_m, pid_n, pid_k,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr):
    """Write the (BLOCK_M, BLOCK_N) tile. SPLIT_K > 1: store this program's fp32 partial to its slot,
    count arrivals on the tile's lock; the last arrival sums the SPLIT_K partials (slot order, so the
    result does not depend on who finished last), writes y and resets the lock to 0 for the next call."""
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    y_ptrs = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :] * stride_yn
    y_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)
    else:
        tiles_n = tl.cdiv(N, BLOCK_N)
        n_tiles = tiles_n * tl.num_programs(1)
        tile = pid_m * tiles_n + pid_n
        in_tile = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
        rows = offs_m[:, None] < M          # rows past M are not stored: at M = 1, 1/16 of the tile
        tl.store(partial_ptr + (pid_k * n_tiles + tile) * (BLOCK_M * BLOCK_N) + in_tile, acc, mask=rows)
        tl.debug_barrier()                                       # every thread's partial is issued
        arrived = tl.atomic_add(tile_lock_ptr + tile, 1)         # acq_rel, gpu scope: publishes it
        if arrived == SPLIT_K - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            # a loop, not tl.static_range: SPLIT_K unrolled tiles of loads in flight set the whole kernel's
            # register count (sm_90: 255 and a spill at 16 x 128, SPLIT_K = 8, 2 warps; 217 as a loop)
            for s in range(SPLIT_K):
                # .cg: read from L2, where the other programs' stores are, not from a stale L1 line
                total += tl.load(partial_ptr + (s * n_tiles + tile) * (BLOCK_M * BLOCK_N) + in_tile,
                                 mask=rows, other=0.0, cache_modifier=".cg")
            tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=y_mask)
            tl.atomic_xchg(tile_lock_ptr + tile, 0)
