"""Lab 06, part 2: paged decode attention in Triton, and its split-KV (flash-decoding) variant.

What you write: the bodies of `paged_decode_kernel`, `paged_decode_split_kernel` and
`paged_decode_reduce_kernel`; then delete the `raise NotImplementedError` line in each wrapper. The
wrappers (given) check the inputs, allocate the outputs and partial buffers, choose the split count and
launch.

One decode step: every sequence has ONE new query token per query head, and attends over its whole
context, whose K/V live in a paged cache:

    q             (B, H, D)                         one query per sequence and head
    k_cache       (num_blocks, block_size, KVH, D)  physical blocks; v_cache the same
    block_tables  (B, max_blocks) int32             block_tables[b, i] = physical block of tokens
                                                    [i*block_size, (i+1)*block_size) of sequence b
    seq_lens      (B,) int32, >= 1                  tokens in each sequence's context
    -> o          (B, H, D), dtype of q:  o[b, h] = softmax(scale * K_b q[b, h]) V_b over the seq_lens[b]
                                          tokens of sequence b, with K_b, V_b of kv head h // (H // KVH)

GQA: H = G * KVH; query heads h = g*G .. g*G + G - 1 share kv head g, so one program handles all G of
them and reads each K/V byte once. Slots past seq_lens[b] in the last block, blocks that no table
uses and table entries past the last used block hold garbage (the grader fills them with NaN): they
must not change the output. fp16 / bf16 / fp32 on a GPU; fp32 / fp16 under the CPU interpreter. D is a
power of two (64 and 128 are graded).

Checked by `labs grade lab06` against an fp64 gather-then-attend reference; timed against a copy of the
K/V bytes (the floor of a memory-bound kernel) and against torch gathering the blocks and calling SDPA.

The kernel, per program (sequence b, kv head g), online softmax as in FlashAttention:
    q = the G query rows of kv head g (padded to BLOCK_G >= 16 rows: tl.dot needs 16)
    m, l, acc = -inf, 0, 0
    for each tile of BLOCK_N tokens of the context:
        physical block of token t = block_tables[b, t // block_size], slot t % block_size
        k, v = gathered (BLOCK_N, D) tiles;  s = q @ k^T * scale;  online-softmax update of m, l, acc
    o = acc / l
Split-KV: the context is cut into splits of `tokens_per_split` tokens, one program per (b, g, split)
writes a partial (o_split, lse_split); a reduce kernel merges the splits of each (b, h):
    o = sum_s exp(lse_s - max lse) * o_s / sum_s exp(lse_s - max lse).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634      # scores in log2 units: exp(x) = exp2(x * log2(e))
MIN_BLOCK_G = 16                # tl.dot needs at least 16 rows
# Split-KV sizing (split_plan): each split covers a multiple of SPLIT_ALIGN tokens (a multiple of every
# BLOCK_N below, so only a context's last tile is partial) and at least MIN_SPLIT_TOKENS of them; on a GPU
# the split count keeps the programs at or under PROGRAMS_PER_SM per SM. Under the interpreter, small
# splits so that the CPU tier sees several splits per sequence, and empty ones.
SPLIT_ALIGN = 16 if INTERPRET else 128
MIN_SPLIT_TOKENS = 32 if INTERPRET else 256
PROGRAMS_PER_SM = 4


def _configs():
    # BLOCK_N tokens per step. Triton's pipeliner prefetches the next tile's table entries and K/V tiles
    # (cp.async) while this one computes: a 64 x 128 bf16 K tile and its V tile are 32 KB in flight per
    # program, enough with two or more programs per SM to cover HBM latency.
    if INTERPRET:
        return [triton.Config({"BLOCK_N": 16})]
    cfg = lambda n, w, s: triton.Config({"BLOCK_N": n}, num_warps=w, num_stages=s)  # noqa: E731
    return [cfg(64, 4, 3), cfg(128, 4, 3), cfg(128, 8, 3), cfg(32, 4, 3)]


# Tune only where it pays: a program streaming fewer tokens than this runs the first config (each config
# costs a compile per shape, and a few-microsecond kernel cannot be timed apart anyway).
TUNE_FROM_TOKENS = {"max_context": 2048, "tokens_per_split": 1024}


def _prune(configs, named_args, **kwargs):
    big = any(named_args.get(k, 0) >= n for k, n in TUNE_FROM_TOKENS.items())
    return configs if big else configs[:1]


# ---- paged decode: one program per (sequence, kv head) ---------------------------------------------

@triton.jit
def _attend_tokens(acc, l_i, m_i, q, k_cache_ptr, v_cache_ptr, table_ptr, kv_head, start, end, qk_scale,
                   stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                   HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                   INPUT_PRECISION: tl.constexpr):
    """Online softmax of q over context tokens [start, end); returns the updated (acc, l_i, m_i)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for tile in range(start, end, BLOCK_N):
        tok = tile + offs_n
        valid = tok < end
        block = tl.load(table_ptr + tok // PAGE_SIZE, mask=valid, other=0).to(tl.int64)
        slot = (tok % PAGE_SIZE).to(tl.int64)
        k_rows = k_cache_ptr + block * stride_kb + slot * stride_ks + kv_head * stride_kh
        k = tl.load(k_rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_rows = v_cache_ptr + block * stride_vb + slot * stride_vs + kv_head * stride_vh
        v = tl.load(v_rows[:, None] + offs_d[None, :], mask=valid[:, None], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=INPUT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _load_queries(q_ptr, seq, kv_head, stride_qb, stride_qh,
                  GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr):
    """The GROUP query rows of this kv head, padded with zero rows to BLOCK_G."""
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + offs_g
    ptrs = q_ptr + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :]
    return tl.load(ptrs, mask=(offs_g < GROUP)[:, None], other=0.0)


@triton.autotune(configs=_configs(), key=["HEAD_DIM", "GROUP", "PAGE_SIZE", "max_context"],
                  prune_configs_by={"early_config_prune": _prune})
@triton.jit
def paged_decode_kernel(
    # pointers
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, o_ptr,
    # strides (elements); the head dimension of every tensor is contiguous
    stride_qb, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_tb,
    stride_ob, stride_oh,
    # sizes and scalars
    qk_scale,                 # softmax scale * log2(e)
    max_context,              # block_tables.shape[1] * block_size: the autotuner's key, not read
    # meta-parameters
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    seq_len = tl.load(seq_lens_ptr + seq)
    q = _load_queries(q_ptr, seq, kv_head, stride_qb, stride_qh, GROUP, BLOCK_G, HEAD_DIM)
    m_i = tl.full((BLOCK_G,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_G,), tl.float32)
    acc = tl.zeros((BLOCK_G, HEAD_DIM), tl.float32)
    acc, l_i, m_i = _attend_tokens(acc, l_i, m_i, q, k_cache_ptr, v_cache_ptr,
                                   block_tables_ptr + seq * stride_tb, kv_head, 0, seq_len, qk_scale,
                                   stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                                   HEAD_DIM, PAGE_SIZE, BLOCK_N, INPUT_PRECISION)
    o = acc / l_i[:, None]
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = kv_head * GROUP + offs_g
    o_ptrs = o_ptr + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :]
    tl.store(o_ptrs, o.to(o_ptr.dtype.element_ty), mask=(offs_g < GROUP)[:, None])


# ---- split-KV (flash-decoding): one program per (sequence, kv head, split), then a reduce -----------

@triton.autotune(configs=_configs(), key=["HEAD_DIM", "GROUP", "PAGE_SIZE", "tokens_per_split"],
                  prune_configs_by={"early_config_prune": _prune})
@triton.jit
def paged_decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
    part_o_ptr, part_lse_ptr,       # (B, H, num_splits, D) and (B, H, num_splits), fp32, contiguous
    stride_qb, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_tb,
    qk_scale, tokens_per_split, num_splits,
    GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    start = split * tokens_per_split
    if start < seq_len:                     # splits past the context write nothing: the reduce skips them
        end = tl.minimum(start + tokens_per_split, seq_len)
        q = _load_queries(q_ptr, seq, kv_head, stride_qb, stride_qh, GROUP, BLOCK_G, HEAD_DIM)
        m_i = tl.full((BLOCK_G,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_G,), tl.float32)
        acc = tl.zeros((BLOCK_G, HEAD_DIM), tl.float32)
        acc, l_i, m_i = _attend_tokens(acc, l_i, m_i, q, k_cache_ptr, v_cache_ptr,
                                       block_tables_ptr + seq * stride_tb, kv_head, start, end, qk_scale,
                                       stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
                                       HEAD_DIM, PAGE_SIZE, BLOCK_N, INPUT_PRECISION)
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, HEAD_DIM)
        heads = kv_head * GROUP + offs_g
        g_mask = offs_g < GROUP
        n_heads = tl.num_programs(1) * GROUP
        row = (seq * n_heads + heads) * num_splits + split          # (BLOCK_G,) index into (B, H, splits)
        tl.store(part_o_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], acc / l_i[:, None],
                 mask=g_mask[:, None])
        tl.store(part_lse_ptr + row, m_i + tl.log2(l_i), mask=g_mask)


@triton.jit
def paged_decode_reduce_kernel(
    part_o_ptr, part_lse_ptr, seq_lens_ptr, o_ptr,
    stride_ob, stride_oh,
    tokens_per_split, num_splits,
    HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr,     # SPLITS: num_splits rounded up to a power of two
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1).to(tl.int64)
    seq_len = tl.load(seq_lens_ptr + seq)
    used = tl.cdiv(seq_len, tokens_per_split)       # splits this sequence wrote; the rest hold garbage
    offs_s = tl.arange(0, SPLITS)
    offs_d = tl.arange(0, HEAD_DIM)
    s_mask = offs_s < used
    row = (seq * tl.num_programs(1) + head) * num_splits + offs_s
    lse = tl.load(part_lse_ptr + row, mask=s_mask, other=float("-inf"))
    parts = tl.load(part_o_ptr + row[:, None] * HEAD_DIM + offs_d[None, :], mask=s_mask[:, None], other=0.0)
    w = tl.exp2(lse - tl.max(lse, 0))
    o = tl.sum(w[:, None] * parts, 0) / tl.sum(w, 0)
    tl.store(o_ptr + seq * stride_ob + head * stride_oh + offs_d, o.to(o_ptr.dtype.element_ty))


# ---- wrappers (given) ------------------------------------------------------------------------------

def _check(q, k_cache, v_cache, block_tables, seq_lens):
    if q.dim() != 3 or k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"expected q (B, H, D) and k_cache, v_cache (num_blocks, block_size, KVH, D); got "
                         f"{tuple(q.shape)}, {tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    B, H, D = q.shape
    _, block_size, kv_heads, d_cache = k_cache.shape
    if d_cache != D or D < 16 or D & (D - 1):
        raise ValueError(f"head dim must match and be a power of two >= 16: q has {D}, the cache {d_cache}")
    if H % kv_heads:
        raise ValueError(f"{H} query heads cannot share {kv_heads} kv heads evenly")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k_cache.dtype != q.dtype \
            or v_cache.dtype != q.dtype:
        raise TypeError(f"q, k_cache, v_cache: one dtype of fp16/bf16/fp32, got {q.dtype}, {k_cache.dtype}, "
                        f"{v_cache.dtype}")
    if block_tables.dtype != torch.int32 or seq_lens.dtype != torch.int32:
        raise TypeError("block_tables and seq_lens must be int32")
    if block_tables.dim() != 2 or block_tables.shape[0] != B or seq_lens.shape != (B,):
        raise ValueError(f"block_tables must be (B, max_blocks) and seq_lens (B,) with B = {B}")
    if any(t.stride(-1) != 1 for t in (q, k_cache, v_cache, block_tables)) or seq_lens.stride(0) != 1:
        raise ValueError("the last dimension of q, k_cache, v_cache, block_tables (and seq_lens) must be contiguous")
    if len({t.device for t in (q, k_cache, v_cache, block_tables, seq_lens)}) != 1:
        raise ValueError("all inputs must be on one device")
    return B, H, D, block_size, kv_heads


def _scale(scale, D):
    return (D ** -0.5 if scale is None else float(scale)) * LOG2E


def _meta(q, H, kv_heads, D, block_size):
    group = H // kv_heads
    return dict(GROUP=group, BLOCK_G=max(MIN_BLOCK_G, triton.next_power_of_2(group)), HEAD_DIM=D,
                PAGE_SIZE=block_size, INPUT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32")


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float | None = None):
    """One decode step of attention over a paged KV cache; shapes in the module docstring. -> (B, H, D)."""
    B, H, D, block_size, kv_heads = _check(q, k_cache, v_cache, block_tables, seq_lens)
    o = torch.empty((B, H, D), dtype=q.dtype, device=q.device)
    if B == 0:
        return o
    grid = (B, kv_heads)
    paged_decode_kernel[grid](
        q, k_cache, v_cache, block_tables, seq_lens, o,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        o.stride(0), o.stride(1),
        _scale(scale, D), block_tables.shape[1] * block_size,
        **_meta(q, H, kv_heads, D, block_size),
    )
    return o


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def split_plan(batch: int, kv_heads: int, max_context: int, device: torch.device,
               num_splits: int | None = None) -> tuple[int, int]:
    """(num_splits, tokens_per_split) for a context of at most `max_context` tokens. Host-side only: it
    must not read seq_lens (that would wait for the GPU). Default on a GPU: as many splits as keep the
    programs at or under PROGRAMS_PER_SM per SM (one wave, no tail), each split at least MIN_SPLIT_TOKENS
    tokens; elsewhere (no SMs to fill) as many as MIN_SPLIT_TOKENS allows, so the CPU tier sees several."""
    max_context = max(max_context, 1)
    if num_splits is None:
        if device.type == "cuda":
            want = PROGRAMS_PER_SM * _sm_count(device.index or 0) // max(batch * kv_heads, 1)
        else:
            want = max_context
        num_splits = max(1, min(want, max_context // MIN_SPLIT_TOKENS))
    tokens = triton.cdiv(triton.cdiv(max_context, num_splits), SPLIT_ALIGN) * SPLIT_ALIGN
    return triton.cdiv(max_context, tokens), tokens


def paged_decode_attention_split(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                 block_tables: torch.Tensor, seq_lens: torch.Tensor,
                                 scale: float | None = None, num_splits: int | None = None):
    """paged_decode_attention with the context split across programs (flash-decoding) and a reduce
    kernel merging the splits. Same inputs and output, plus `num_splits` (None: split_plan chooses)."""
    B, H, D, block_size, kv_heads = _check(q, k_cache, v_cache, block_tables, seq_lens)
    o = torch.empty((B, H, D), dtype=q.dtype, device=q.device)
    if B == 0:
        return o
    n_splits, tokens_per_split = split_plan(B, kv_heads, block_tables.shape[1] * block_size, q.device,
                                            num_splits)
    part_o = torch.empty((B, H, n_splits, D), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((B, H, n_splits), dtype=torch.float32, device=q.device)
    paged_decode_split_kernel[(B, kv_heads, n_splits)](
        q, k_cache, v_cache, block_tables, seq_lens, part_o, part_lse,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        block_tables.stride(0),
        _scale(scale, D), tokens_per_split, n_splits,
        **_meta(q, H, kv_heads, D, block_size),
    )
    paged_decode_reduce_kernel[(B, H)](
        part_o, part_lse, seq_lens, o,
        o.stride(0), o.stride(1),
        tokens_per_split, n_splits,
        HEAD_DIM=D, SPLITS=triton.next_power_of_2(n_splits),
    )
    return o
