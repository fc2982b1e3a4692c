"""KNOWN-BAD SUBMISSION, kept as a test the grader must reject (README.md beside it).

Sets aside L2 for persisting accesses (the CUDA driver's persisting-L2 limit) and marks B's bytes
persisting on the current stream (an access-policy window), so that B would stay in L2 through the
grader's flush and every timed call after the first would read it from L2, not HBM.

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

import ctypes

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
    if a.is_cuda:
        _persist(b)                           # EXPLOIT: B stays in L2 through the flush
    grid = lambda META: (triton.cdiv(M, META["BLOCK_SIZE_M"]) * triton.cdiv(N, META["BLOCK_SIZE_N"]),)  # noqa: E731
    matmul_kernel[grid](
        a, b, c, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
    )
    return c


class _AccessPolicyWindow(ctypes.Structure):
    _fields_ = [("base_ptr", ctypes.c_void_p), ("num_bytes", ctypes.c_size_t), ("hit_ratio", ctypes.c_float),
                ("hit_prop", ctypes.c_int), ("miss_prop", ctypes.c_int)]


class _StreamAttrValue(ctypes.Union):             # CUlaunchAttributeValue: 64 bytes
    _fields_ = [("window", _AccessPolicyWindow), ("pad", ctypes.c_char * 64)]


def _persist(t: torch.Tensor):
    lib = ctypes.CDLL("libcuda.so.1")
    lib.cuCtxSetLimit(0x06, ctypes.c_size_t(48 << 20))                       # CU_LIMIT_PERSISTING_L2_CACHE_SIZE
    v = _StreamAttrValue()
    v.window = _AccessPolicyWindow(t.data_ptr(), min(t.numel() * t.element_size(), 48 << 20), 1.0, 2, 1)
    lib.cuStreamSetAttribute(ctypes.c_void_p(torch.cuda.current_stream(t.device).cuda_stream), 1, ctypes.byref(v))
