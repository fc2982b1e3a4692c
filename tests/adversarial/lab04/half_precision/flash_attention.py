"""KNOWN-BAD SUBMISSION, kept as a test the grader must reject (README.md beside it).

Computes P @ V with P and V rounded to fp16 whatever the input dtype: fp32 inputs get fp16 arithmetic.

The rest is the reference solution:
Lab 04: FlashAttention-2 in Triton, forward and backward.

What you write (the skeleton's wrappers raise NotImplementedError until you do):
  1. `_attn_fwd_inner` + `_attn_fwd_kernel`: one program per (BLOCK_M queries, one batch*head). Q stays in
     registers; K and V stream through in BLOCK_N tiles; an online softmax keeps a running max m, a running
     sum l and an unnormalized output acc, all in fp32; O = acc / l and lse = m + log(l) are written once.
  2. `_attn_bwd_preprocess_kernel`: delta_i = sum_d dO[i, d] * O[i, d].
  3. `_attn_bwd_dkdv_inner` + `_attn_bwd_dkdv_kernel`: one program per BLOCK_N1 keys; loops over query
     blocks, recomputes P from the saved lse (no N x N matrix ever reaches HBM), accumulates dK and dV.
  4. `_attn_bwd_dq_inner` + `_attn_bwd_dq_kernel`: one program per BLOCK_M2 queries; loops over key
     blocks, accumulates dQ. Two kernels instead of atomics: deterministic.

Shapes and dtypes:
    q (B, H, N_q, D), k and v (B, H, N_kv, D); D in {16, 32, 64, 128}; any strides
    fp16 or bf16 on a GPU; fp32 or fp16 under the CPU interpreter (it mishandles bf16)
    -> o (B, H, N_q, D) in q's dtype, lse (B, H, N_q) fp32 (natural log of sum_j exp(scale * q_i . k_j))
    causal=True: query i sees keys j <= i (needs N_q == N_kv); scale defaults to 1/sqrt(D).

Checked by `labs grade lab04` against an fp64 math attention (gradients by torch.autograd); timed against
torch SDPA's flash backend (and cuDNN, for information) at B=4, H=16, N=4096, D=128, bf16.

The forward, per program (FA2 order: the outer loop over query blocks is the grid):
    acc, l, m = 0, 0, -inf
    for each key block j:                       # causal: blocks left of the diagonal need no mask
        s = q @ k_j^T * scale * log2(e)          # log2 units so the exponential is one exp2
        m_new = max(m, rowmax(s));  p = exp2(s - m_new);  alpha = exp2(m - m_new)
        l = l * alpha + rowsum(p);  acc = acc * alpha + p @ v_j;  m = m_new
    o = acc / l;  lse = (m + log2(l)) * ln(2)
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634   # scores are kept in log2 units: exp(x) = exp2(x * log2(e))
LN2 = 0.6931471805599453


def _fwd_configs():
    # BLOCK_M must be a multiple of BLOCK_N: the causal diagonal then starts on a key-block boundary.
    if INTERPRET:  # the interpreter runs programs one by one in numpy: few, small blocks
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 16})]
    cfg = lambda m, n, s, w: triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_stages=s, num_warps=w)  # noqa: E731
    return [cfg(128, 128, 3, 8), cfg(128, 64, 3, 8), cfg(128, 64, 4, 8), cfg(128, 64, 3, 4),
            cfg(128, 128, 2, 8), cfg(64, 64, 4, 4)]


def _dkdv_configs():
    # BLOCK_N1 (keys per program) must be a multiple of BLOCK_M1 (queries per step).
    if INTERPRET:
        return [triton.Config({"BLOCK_M1": 16, "BLOCK_N1": 32})]
    cfg = lambda m, n, s, w: triton.Config({"BLOCK_M1": m, "BLOCK_N1": n}, num_stages=s, num_warps=w)  # noqa: E731
    return [cfg(32, 128, 3, 8), cfg(64, 128, 2, 8), cfg(64, 64, 3, 4), cfg(32, 64, 3, 4)]


def _dq_configs():
    # BLOCK_M2 (queries per program) must be a multiple of BLOCK_N2 (keys per step).
    if INTERPRET:
        return [triton.Config({"BLOCK_M2": 32, "BLOCK_N2": 16})]
    cfg = lambda m, n, s, w: triton.Config({"BLOCK_M2": m, "BLOCK_N2": n}, num_stages=s, num_warps=w)  # noqa: E731
    return [cfg(128, 32, 3, 8), cfg(128, 64, 2, 8), cfg(64, 64, 3, 4), cfg(64, 32, 3, 4)]


# ---- forward ---------------------------------------------------------------------------------------

@triton.jit
def _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn,
                    offs_m, offs_n, lo, hi, N_KV, qk_scale,
                    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """Online softmax over the key blocks starting at lo, lo + BLOCK_N, ... < hi.

    acc (BLOCK_M, D) fp32, l_i and m_i (BLOCK_M,) fp32; q (BLOCK_M, D); k_ptrs/v_ptrs point at key rows
    0..BLOCK_N-1 of this head. MASKED blocks may hold keys >= N_KV and (CAUSAL) keys after the query;
    unmasked blocks are full and entirely visible, so they skip every mask.
    """
    k_ptrs += lo * stride_kn
    v_ptrs += lo * stride_vn
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:
            k = tl.load(k_ptrs, mask=cols[:, None] < N_KV, other=0.0)
        else:
            k = tl.load(k_ptrs)
        s = tl.dot(q, tl.trans(k)) * qk_scale                  # (BLOCK_M, BLOCK_N), log2 units
        if MASKED:
            keep = cols[None, :] < N_KV
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= cols[None, :])
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)                       # rescales what was summed so far
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs, mask=cols[:, None] < N_KV, other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = tl.dot(p.to(tl.float16), v.to(tl.float16), acc * alpha[:, None])   # EXPLOIT: fp16 P and V
        m_i = m_new
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
    return acc, l_i, m_i


@triton.autotune(configs=_fwd_configs(), key=["N_Q", "N_KV", "HEAD_DIM", "CAUSAL"])
@triton.jit
def _attn_fwd_kernel(
    # pointers
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    # strides (elements) of (B, H, N, D) tensors
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    # sizes
    H, N_Q, N_KV, qk_scale,
    # meta-parameters
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    if CAUSAL:  # the last query blocks see the most keys: start them first so the tail is short
        pid_m = tl.num_programs(0) - 1 - pid_m
    off_hz = tl.program_id(1)
    off_b = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    q_ptr += off_b * stride_qb + off_h * stride_qh
    k_ptr += off_b * stride_kb + off_h * stride_kh
    v_ptr += off_b * stride_vb + off_h * stride_vh
    o_ptr += off_b * stride_ob + off_h * stride_oh

    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_Q
    q = tl.load(q_ptr + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
    k_ptrs = k_ptr + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd    # (BLOCK_N, D)
    v_ptrs = v_ptr + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd    # (BLOCK_N, D)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        # keys left of the diagonal block: every query of the block sees all of them, no mask
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                                        0, m0, N_KV, qk_scale, BLOCK_N=BLOCK_N, MASKED=False, CAUSAL=True)
        # the diagonal block: keys j <= i only
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                                        m0, tl.minimum(m0 + BLOCK_M, N_KV), N_KV, qk_scale,
                                        BLOCK_N=BLOCK_N, MASKED=True, CAUSAL=True)
    else:
        n_full = (N_KV // BLOCK_N) * BLOCK_N
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                                        0, n_full, N_KV, qk_scale, BLOCK_N=BLOCK_N, MASKED=False, CAUSAL=False)
        # the last, partial key block (none when BLOCK_N divides N_KV)
        acc, l_i, m_i = _attn_fwd_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                                        n_full, N_KV, N_KV, qk_scale, BLOCK_N=BLOCK_N, MASKED=True, CAUSAL=False)

    o = acc / l_i[:, None]
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453      # back to natural log
    tl.store(o_ptr + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od, o.to(o_ptr.dtype.element_ty),
             mask=row_ok[:, None])
    tl.store(lse_ptr + off_hz * N_Q + offs_m, lse, mask=row_ok)


# ---- backward --------------------------------------------------------------------------------------

@triton.jit
def _attn_bwd_preprocess_kernel(o_ptr, do_ptr, delta_ptr,
                                stride_ob, stride_oh, stride_on, stride_od,
                                stride_dob, stride_doh, stride_don, stride_dod,
                                H, N_Q, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    off_hz = tl.program_id(1)
    off_b = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_Q
    o = tl.load(o_ptr + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_on
                + offs_d[None, :] * stride_od, mask=row_ok[:, None], other=0.0)
    do = tl.load(do_ptr + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_don
                 + offs_d[None, :] * stride_dod, mask=row_ok[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(delta_ptr + off_hz * N_Q + offs_m, delta, mask=row_ok)


@triton.jit
def _attn_bwd_dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qn, stride_don,
                         offs_n, lo, hi, N_Q, qk_scale,
                         BLOCK_M1: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """dK and dV of one key block, summed over the query blocks starting at lo, lo + BLOCK_M1, ... < hi.

    Works on transposes so the key block is the M dimension of every product:
    S^T = K Q^T, P^T = exp2(S^T - lse), dV += P^T dO, dP^T = V dO^T, dS^T = P^T * (dP^T - delta), dK += dS^T Q.
    """
    offs_m0 = tl.arange(0, BLOCK_M1)
    q_ptrs += lo * stride_qn
    do_ptrs += lo * stride_don
    for start_m in range(lo, hi, BLOCK_M1):
        offs_m = start_m + offs_m0
        if MASKED:
            row_ok = offs_m < N_Q
            q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
            do = tl.load(do_ptrs, mask=row_ok[:, None], other=0.0)
            lse = tl.load(lse_ptr + offs_m, mask=row_ok, other=0.0)
            delta = tl.load(delta_ptr + offs_m, mask=row_ok, other=0.0)
        else:
            q = tl.load(q_ptrs)
            do = tl.load(do_ptrs)
            lse = tl.load(lse_ptr + offs_m)
            delta = tl.load(delta_ptr + offs_m)
        s_t = tl.dot(k, tl.trans(q)) * qk_scale                          # (BLOCK_N1, BLOCK_M1), log2 units
        p_t = tl.math.exp2(s_t - lse[None, :] * 1.4426950408889634)       # P recomputed from the saved lse
        if MASKED:
            keep = row_ok[None, :]
            if CAUSAL:
                keep = keep & (offs_m[None, :] >= offs_n[:, None])
            p_t = tl.where(keep, p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk)
        q_ptrs += BLOCK_M1 * stride_qn
        do_ptrs += BLOCK_M1 * stride_don
    return dk, dv


@triton.autotune(configs=_dkdv_configs(), key=["N_Q", "N_KV", "HEAD_DIM", "CAUSAL"])
@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,    # dk and dv share one layout
    H, N_Q, N_KV, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M1: tl.constexpr, BLOCK_N1: tl.constexpr,
):
    off_hz = tl.program_id(1)
    off_b = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    q_ptr += off_b * stride_qb + off_h * stride_qh
    k_ptr += off_b * stride_kb + off_h * stride_kh
    v_ptr += off_b * stride_vb + off_h * stride_vh
    do_ptr += off_b * stride_dob + off_h * stride_doh
    dk_ptr += off_b * stride_dkb + off_h * stride_dkh
    dv_ptr += off_b * stride_dkb + off_h * stride_dkh
    lse_ptr += off_hz * N_Q
    delta_ptr += off_hz * N_Q

    n0 = tl.program_id(0) * BLOCK_N1
    offs_n = n0 + tl.arange(0, BLOCK_N1)
    offs_m = tl.arange(0, BLOCK_M1)
    offs_d = tl.arange(0, HEAD_DIM)
    col_ok = offs_n < N_KV
    k = tl.load(k_ptr + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=col_ok[:, None], other=0.0)
    v = tl.load(v_ptr + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=col_ok[:, None], other=0.0)
    q_ptrs = q_ptr + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd       # (BLOCK_M1, D)
    do_ptrs = do_ptr + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod   # (BLOCK_M1, D)

    dk = tl.zeros([BLOCK_N1, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N1, HEAD_DIM], dtype=tl.float32)
    lo = 0
    if CAUSAL:
        # queries on the diagonal block see part of these keys; queries before n0 see none of them
        dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qn, stride_don,
                                      offs_n, n0, tl.minimum(n0 + BLOCK_N1, N_Q), N_Q, qk_scale,
                                      BLOCK_M1=BLOCK_M1, MASKED=True, CAUSAL=True)
        lo = n0 + BLOCK_N1
    # full query blocks that see every key of the block, then the last partial query block
    m_full = lo + (tl.maximum(N_Q - lo, 0) // BLOCK_M1) * BLOCK_M1
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qn, stride_don,
                                  offs_n, lo, m_full, N_Q, qk_scale,
                                  BLOCK_M1=BLOCK_M1, MASKED=False, CAUSAL=CAUSAL)
    dk, dv = _attn_bwd_dkdv_inner(dk, dv, k, v, q_ptrs, do_ptrs, lse_ptr, delta_ptr, stride_qn, stride_don,
                                  offs_n, m_full, N_Q, N_Q, qk_scale,
                                  BLOCK_M1=BLOCK_M1, MASKED=True, CAUSAL=CAUSAL)

    dk = dk * sm_scale                                # S = scale * Q K^T, so dK = scale * dS^T Q
    out = offs_n[:, None] * stride_dkn + offs_d[None, :] * stride_dkd
    tl.store(dk_ptr + out, dk.to(dk_ptr.dtype.element_ty), mask=col_ok[:, None])
    tl.store(dv_ptr + out, dv.to(dv_ptr.dtype.element_ty), mask=col_ok[:, None])


@triton.jit
def _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, stride_kn, stride_vn,
                       offs_m, offs_n, lo, hi, N_KV, qk_scale,
                       BLOCK_N2: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """dQ of one query block, summed over the key blocks starting at lo, lo + BLOCK_N2, ... < hi:
    P = exp2(S - lse), dP = dO V^T, dS = P * (dP - delta), dQ += dS K."""
    k_ptrs += lo * stride_kn
    v_ptrs += lo * stride_vn
    for start_n in range(lo, hi, BLOCK_N2):
        cols = start_n + offs_n
        if MASKED:
            k = tl.load(k_ptrs, mask=cols[:, None] < N_KV, other=0.0)
            v = tl.load(v_ptrs, mask=cols[:, None] < N_KV, other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        s = tl.dot(q, tl.trans(k)) * qk_scale
        p = tl.math.exp2(s - lse2[:, None])
        if MASKED:
            keep = cols[None, :] < N_KV
            if CAUSAL:
                keep = keep & (offs_m[:, None] >= cols[None, :])
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)
        k_ptrs += BLOCK_N2 * stride_kn
        v_ptrs += BLOCK_N2 * stride_vn
    return dq


@triton.autotune(configs=_dq_configs(), key=["N_Q", "N_KV", "HEAD_DIM", "CAUSAL"])
@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_don, stride_dod,
    stride_dqb, stride_dqh, stride_dqn, stride_dqd,
    H, N_Q, N_KV, qk_scale, sm_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr,
):
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m
    off_hz = tl.program_id(1)
    off_b = (off_hz // H).to(tl.int64)
    off_h = (off_hz % H).to(tl.int64)
    q_ptr += off_b * stride_qb + off_h * stride_qh
    k_ptr += off_b * stride_kb + off_h * stride_kh
    v_ptr += off_b * stride_vb + off_h * stride_vh
    do_ptr += off_b * stride_dob + off_h * stride_doh
    dq_ptr += off_b * stride_dqb + off_h * stride_dqh

    m0 = pid_m * BLOCK_M2
    offs_m = m0 + tl.arange(0, BLOCK_M2)
    offs_n = tl.arange(0, BLOCK_N2)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N_Q
    q = tl.load(q_ptr + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
    do = tl.load(do_ptr + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=row_ok[:, None],
                 other=0.0)
    lse2 = tl.load(lse_ptr + off_hz * N_Q + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(delta_ptr + off_hz * N_Q + offs_m, mask=row_ok, other=0.0)
    k_ptrs = k_ptr + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = v_ptr + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd

    dq = tl.zeros([BLOCK_M2, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                                0, m0, N_KV, qk_scale, BLOCK_N2=BLOCK_N2, MASKED=False, CAUSAL=True)
        dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                                m0, tl.minimum(m0 + BLOCK_M2, N_KV), N_KV, qk_scale,
                                BLOCK_N2=BLOCK_N2, MASKED=True, CAUSAL=True)
    else:
        n_full = (N_KV // BLOCK_N2) * BLOCK_N2
        dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                                0, n_full, N_KV, qk_scale, BLOCK_N2=BLOCK_N2, MASKED=False, CAUSAL=False)
        dq = _attn_bwd_dq_inner(dq, q, do, lse2, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, offs_m, offs_n,
                                n_full, N_KV, N_KV, qk_scale, BLOCK_N2=BLOCK_N2, MASKED=True, CAUSAL=False)

    dq = dq * sm_scale
    tl.store(dq_ptr + offs_m[:, None] * stride_dqn + offs_d[None, :] * stride_dqd, dq.to(dq_ptr.dtype.element_ty),
             mask=row_ok[:, None])


# ---- wrappers (given) ------------------------------------------------------------------------------

def _check_inputs(q, k, v, causal):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"expected (B, H, N, D) tensors, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[3] not in (16, 32, 64, 128):
        raise ValueError(f"head dim must be 16, 32, 64 or 128, got {q.shape[3]}")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"expected q, k, v of one dtype among fp16, bf16, fp32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"inputs on different devices: {q.device}, {k.device}, {v.device}")
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError(f"causal attention needs N_q == N_kv, got {q.shape[2]} and {k.shape[2]}")
    if k.shape[2] == 0:
        raise ValueError("attention over zero keys is undefined")


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                      scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """o = softmax(scale * q k^T [causal mask]) v, and lse = logsumexp of the scaled scores per query.

    q (B, H, N_q, D), k and v (B, H, N_kv, D) -> o (B, H, N_q, D) in q's dtype, lse (B, H, N_q) fp32.
    """
    _check_inputs(q, k, v, causal)
    B, H, N_Q, D = q.shape
    N_KV = k.shape[2]
    scale = D ** -0.5 if scale is None else float(scale)
    o = torch.empty((B, H, N_Q, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, N_Q), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o, lse
    grid = lambda META: (triton.cdiv(N_Q, META["BLOCK_M"]), B * H)  # noqa: E731
    _attn_fwd_kernel[grid](
        q, k, v, o, lse,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        H, N_Q, N_KV, scale * LOG2E,
        HEAD_DIM=D, CAUSAL=bool(causal),
    )
    return o, lse


def attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                       do: torch.Tensor, causal: bool = False, scale: float | None = None):
    """dq, dk, dv of sum(o * do), from the forward's o and lse (no N x N matrix is stored)."""
    _check_inputs(q, k, v, causal)
    B, H, N_Q, D = q.shape
    N_KV = k.shape[2]
    if do.shape != o.shape or o.shape != q.shape or lse.shape != (B, H, N_Q):
        raise ValueError(f"o {tuple(o.shape)}, do {tuple(do.shape)}, lse {tuple(lse.shape)} do not match q {tuple(q.shape)}")
    scale = D ** -0.5 if scale is None else float(scale)
    lse = lse.float().contiguous()
    dq = torch.empty((B, H, N_Q, D), dtype=q.dtype, device=q.device)
    dk = torch.empty((B, H, N_KV, D), dtype=k.dtype, device=k.device)
    dv = torch.empty((B, H, N_KV, D), dtype=v.dtype, device=v.device)
    if dq.numel() == 0 or dk.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    delta = torch.empty((B, H, N_Q), dtype=torch.float32, device=q.device)
    block = 32 if INTERPRET else 128
    _attn_bwd_preprocess_kernel[(triton.cdiv(N_Q, block), B * H)](
        o, do, delta, *o.stride(), *do.stride(), H, N_Q, HEAD_DIM=D, BLOCK_M=block)
    grid_kv = lambda META: (triton.cdiv(N_KV, META["BLOCK_N1"]), B * H)  # noqa: E731
    _attn_bwd_dkdv_kernel[grid_kv](
        q, k, v, do, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(),
        H, N_Q, N_KV, scale * LOG2E, scale,
        HEAD_DIM=D, CAUSAL=bool(causal),
    )
    grid_q = lambda META: (triton.cdiv(N_Q, META["BLOCK_M2"]), B * H)  # noqa: E731
    _attn_bwd_dq_kernel[grid_q](
        q, k, v, do, lse, delta, dq,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
        H, N_Q, N_KV, scale * LOG2E, scale,
        HEAD_DIM=D, CAUSAL=bool(causal),
    )
    return dq, dk, dv


class FlashAttention(torch.autograd.Function):
    """FlashAttention.apply(q, k, v, causal, scale) -> o; backward runs the three backward kernels."""

    @staticmethod
    def forward(ctx, q, k, v, causal=False, scale=None):
        o, lse = attention_forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = attention_backward(q, k, v, o, lse, do, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                    scale: float | None = None) -> torch.Tensor:
    """Differentiable attention: like F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)."""
    return FlashAttention.apply(q, k, v, causal, scale)
