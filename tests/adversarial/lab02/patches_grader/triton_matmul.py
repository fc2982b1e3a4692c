"""KNOWN-BAD SUBMISSION, kept as a test the grader must reject (README.md beside it).

At import time it patches every checker and clock it can reach, then returns
garbage. Those patches live only in the student's process; the verdict is made in another one.

The rest is the reference solution:
Lab 02, Triton part: a block-tiled GEMM, C = A @ B, with grouped program ordering and autotuning.

What you write: the body of `matmul_kernel` (the skeleton's wrapper raises NotImplementedError until you do). The wrapper `matmul` (given) checks inputs, allocates C
and launches one program per BLOCK_SIZE_M x BLOCK_SIZE_N tile of C.

    a: (M, K), b: (K, N), fp16 or bf16 on a GPU (fp32/fp16 on the CPU interpreter), any strides
    -> c: (M, N), same dtype as a, accumulated in fp32.

Checked by `labs grade lab02` against an fp64 reference; timed against torch.matmul (cuBLAS).

The idea, per program (one tile of C):
    acc = zeros(BM, BN) in fp32
    for k in range(0, K, BK):
        acc += A[rows, k:k+BK] @ B[k:k+BK, cols]      # masked: M, N, K need not divide the blocks
    C[rows, cols] = acc.to(C's dtype)
Grouped ordering: consecutive program ids walk GROUP_SIZE_M tiles down a column of tiles before moving
right, so the A rows and B columns they share are still in L2 when the neighbours need them.
"""

from __future__ import annotations

import os
import time

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _configs():
    if INTERPRET:  # the CPU interpreter runs every program in Python: one small config
        return [triton.Config({"BLOCK_SIZE_M": 32, "BLOCK_SIZE_N": 32, "BLOCK_SIZE_K": 32, "GROUP_SIZE_M": 4})]
    cfg = lambda m, n, k, s, w: triton.Config(  # noqa: E731
        {"BLOCK_SIZE_M": m, "BLOCK_SIZE_N": n, "BLOCK_SIZE_K": k, "GROUP_SIZE_M": 8}, num_stages=s, num_warps=w)
    return [
        cfg(128, 256, 64, 3, 8), cfg(256, 128, 64, 3, 8), cfg(128, 128, 64, 4, 8), cfg(128, 128, 64, 3, 4),
        cfg(128, 256, 64, 4, 8), cfg(64, 256, 64, 4, 4), cfg(128, 64, 64, 4, 4), cfg(64, 128, 64, 4, 4),
        cfg(64, 64, 64, 4, 4), cfg(32, 64, 64, 4, 4), cfg(16, 64, 128, 4, 4), cfg(16, 128, 128, 3, 4),
    ]


@triton.autotune(configs=_configs(), key=["M", "N", "K"])
@triton.jit
def matmul_kernel(
    # pointers
    a_ptr, b_ptr, c_ptr,
    # sizes
    M, N, K,
    # strides (elements): how far to move in memory for one step along each dimension
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
    # meta-parameters
    BLOCK_SIZE_M: tl.constexpr, BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr,
):
    # pid -> (pid_m, pid_n) in grouped order
    pid = tl.program_id(axis=0)
    num_pid_m = tl.cdiv(M, BLOCK_SIZE_M)
    num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
    num_pid_in_group = GROUP_SIZE_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_SIZE_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    # offsets of this tile; rows/cols past the edge wrap (mod M, N) so loads need no M/N mask, and the
    # store mask drops them
    offs_m = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
    offs_n = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
    offs_am = offs_m % M
    offs_bn = offs_n % N
    offs_k = tl.arange(0, BLOCK_SIZE_K)
    a_ptrs = a_ptr + offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak   # (BM, BK)
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn   # (BK, BN)

    acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
        k_left = K - k * BLOCK_SIZE_K
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_SIZE_K * stride_ak
        b_ptrs += BLOCK_SIZE_K * stride_bk

    c = acc.to(c_ptr.dtype.element_ty)
    c_ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, c, mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """C = A @ B. Given: input checks, allocation and the launch grid."""
    if a.dim() != 2 or b.dim() != 2:
        raise ValueError(f"matmul expects 2-D inputs, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)}, b is {tuple(b.shape)}")
    if a.dtype != b.dtype or a.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"expected two fp16, bf16 or fp32 tensors, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"inputs on different devices: {a.device} and {b.device}")
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty((M, N), device=a.device, dtype=a.dtype)
    if M == 0 or N == 0:
        return c
    if K == 0:
        return c.zero_()
    return torch.randn(M, N, dtype=a.dtype, device=a.device)   # EXPLOIT: garbage


def _patch_everything():
    """EXPLOIT: make every check this process can see claim success."""
    import torch.testing

    import grader.compare
    import grader.inputs
    import grader.runner
    import grader.worker

    def ok(*args, **kwargs):
        return True

    torch.allclose = ok
    torch.equal = ok
    torch.Tensor.allclose = ok
    torch.testing.assert_close = lambda *a, **k: None
    grader.compare.compare = lambda out, ref, tol, edge_of=None: grader.compare.Comparison(True, "ok", 0.0, 0.0)
    grader.compare.check_output_type = lambda *a, **k: None
    grader.runner.compare = grader.compare.compare
    grader.runner.check_output_type = grader.compare.check_output_type
    grader.runner._judge_outputs = lambda *a, **k: (True, "ok", {})
    grader.runner._inputs_unchanged = lambda *a, **k: None
    grader.worker._Session.poison_allocator = lambda self, params: None
    time.perf_counter = lambda: 0.0
    time.time = lambda: 0.0


_patch_everything()
