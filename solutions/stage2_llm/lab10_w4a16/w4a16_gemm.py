"""Lab 10, part 2: the W4A16 GEMM in Triton -- y = x @ dequantize(W), with W read as packed 4-bit codes
and dequantized in registers, never written back to memory in 16 bits.

    w4a16_matmul(x, qweight, scales, qzeros, group_size=128) -> y
        x:       (M, K)       fp16 / bf16 (fp32 too; the CPU tier uses fp32 and fp16)
        qweight: (K // 8, N)  int32, GPTQ layout: word [i, n] nibble j = q[8i + j, n]
        scales:  (G, N)       dtype of x, G = K // group_size
        qzeros:  (G, N // 8)  int32, word [g, c] nibble j = z[g, 8c + j]
        y:       (M, N)       dtype of x;  y = x @ ((q - z) * s)   (see quantize.py for the conventions)

Why it is fast. At decode (M = 1..16) the layer is a matrix-vector product: the time is the time to read
W. bf16 W costs 2 bytes per weight; packed it costs 0.5 + (2 + 0.5) / 128 bytes (the code, plus a bf16
scale and a 4-bit zero per group of 128): 3.85x fewer bytes, the ideal speedup. At prefill (M in the
thousands) the GEMM is compute-bound and the 4-bit weights buy nothing: the kernel then has to keep the
tensor cores as busy as cuBLAS does, with the dequantization hidden behind the MMAs.

The kernel, per program: one (BLOCK_M, BLOCK_N) tile of y and one slice of K (split-K):

    acc = 0                                                  (BLOCK_M, BLOCK_N) fp32
    for each K-tile of BLOCK_K rows (BLOCK_K divides group_size: one group per tile):
        x_t  = x[m-tile, k-tile]                             (BLOCK_M, BLOCK_K)
        p    = qweight[k-tile / 8, n-tile]                   (BLOCK_K // 8, BLOCK_N) int32: 8x fewer loads
        q    = (p[:, None, :] >> 4 * j) & 0xF, j = 0..7      (BLOCK_K // 8, 8, BLOCK_N) -> (BLOCK_K, BLOCK_N)
        w    = float(q) - float(z)                           exact small integers, in x's dtype
        acc += tl.dot(x_t, w) * s[None, :]                   the group's scale applied after the MMA
    split-K: each program stores its fp32 partial tile; the last of the SPLIT_K programs of a tile
    (an atomic counter says which) adds all partials in a fixed order and writes y.

What you write: the body of w4a16_gemm_kernel (the skeleton's wrapper raises NotImplementedError until
you do). Given: int4_to_float, splitk_epilogue, the autotune configs per M bucket, the split-K
workspace and the wrapper. This solution adds a second way to feed the MMA (NIBBLE_DOTS, used at
decode): eight dots of K = BLOCK_K / 8, dot j taking nibble j of every word (K-rows 8i + j) and the
matching columns of x. w_j is then elementwise in the loaded words, with no reshape, and the compiler
stages it into shared memory with 8-byte stores instead of 2-byte ones: ~4.3 instead of ~7 SASS
instructions per weight at 16 x 128 x 128 (counted on the cubin Triton builds for sm_90).

Dequantization in registers costs instructions per weight, and at decode there are only ~5 to spare per
weight before the SMs, not HBM, set the time. Two tricks keep it cheap:
    - integer -> float without a conversion instruction: OR the 4-bit code into the mantissa of a
      constant (fp16 0x6400 = 1024.0 has ulp 1 there, so 0x6400 | q is exactly 1024 + q; bf16 0x4300 =
      128.0; fp32 0x4B000000 = 2^23) and subtract the same constant built from z: (1024 + q) - (1024 + z)
      = q - z, exact. Hardware int -> float conversions run at 1/8 of the FMA rate on an H100.
    - scales after the dot: every row of a K-tile shares one group, so x_t @ ((q - z) * s) =
      (x_t @ (q - z)) * s; the dot sees exact integers and the scale costs BLOCK_M * BLOCK_N FMAs per
      tile instead of BLOCK_K * BLOCK_N multiplies.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from w4a16_helpers import int4_to_float, splitk_epilogue   # given: the lab folder's helpers (on sys.path)

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DECODE_MAX_M = 16          # M up to this is "decode": one 16-row MMA tile covers all of x
SMALL_PREFILL_MAX_M = 256  # up to this, split-K configs are still worth trying


def _configs(rows):
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk, "NIBBLE_DOTS": nd},
                          num_warps=w, num_stages=s) for bm, bn, bk, sk, nd, w, s in rows]


if INTERPRET:
    # Small configs, the first valid one used (no timing under the interpreter). Decode and small prefill
    # run split-K with the nibble-plane dots (group 128) or, for smaller groups, one dot on several K-tiles
    # per group: the CPU tier exercises both epilogues and both ways of feeding the MMA at two tile heights.
    DECODE_CONFIGS = _configs([(16, 32, 128, 2, True, 4, 1), (16, 32, 32, 2, False, 4, 1)])
    SMALL_PREFILL_CONFIGS = _configs([(32, 32, 128, 2, True, 4, 1), (32, 32, 32, 1, False, 4, 1)])
    LARGE_PREFILL_CONFIGS = SMALL_PREFILL_CONFIGS
else:
    # The autotuner times these on the GPU; the lists come from a static model (docs in the lab README,
    # "Reading the kernel's SASS"): the K loop's warp-instructions per weight on the sm_90 cubin (HBM at
    # 3 TB/s delivers 6e12 weights/s, the H100 issues ~0.93e12 warp-instructions/s: more than ~0.15 per
    # weight and the SMs, not HBM, set the pace), registers -> CTAs per SM, and programs per SM slot.
    # Decode: weight bandwidth is everything. Wider tiles per warp cost fewer instructions per weight
    # (0.09-0.11 at 32-64 columns per warp, 0.15-0.2 at 8-16) but more registers; split-K supplies the
    # programs that 4096 x 4096's 32-64 column tiles cannot. The last two rows serve groups of 64 and 32.
    DECODE_CONFIGS = _configs([
        # BM  BN   BK  SK  nibble warps stages
        (16, 128, 128, 4, True, 4, 3),      # 0.104 warp-instr/weight, 3 CTAs/SM
        (16, 128, 128, 8, True, 4, 3),
        (16, 128, 128, 4, True, 2, 3),      # 0.095, 5 CTAs/SM
        (16, 128, 128, 8, True, 2, 3),
        (16, 64, 128, 4, True, 2, 3),       # 0.110, 6 CTAs/SM
        (16, 64, 128, 8, True, 2, 3),
        (16, 64, 128, 16, True, 2, 2),      # 4096 x 4096: 1024 programs of two K-tiles
        (16, 256, 128, 4, True, 4, 3),      # 0.093, 2 CTAs/SM
        (16, 256, 128, 8, True, 4, 3),
        (16, 256, 128, 4, True, 8, 3),
        (16, 128, 64, 4, False, 4, 4),
        (16, 64, 32, 4, False, 4, 5),
    ])
    # M of a few hundred: each weight is dequantized once per M-tile, so the M-tile height multiplies the
    # dequantization: per weight of the layer at M = 128, 128 x 128 tiles with 8 warps cost 0.28
    # warp-instructions, 64 x 128 with 4 warps 2 x 0.17, 64 x 64 2 x 0.22, one dot instead of nibble
    # planes 2 x 0.30 (128 x 128 with 4 warps spills: 255 registers hold the 128-column accumulator and
    # the dequantized planes). Split-K for programs: 4096 x 4096 has only 32-64 column tiles.
    SMALL_PREFILL_CONFIGS = _configs([
        (128, 128, 128, 2, True, 8, 3),
        (128, 128, 128, 4, True, 8, 3),
        (64, 128, 128, 2, True, 4, 3),
        (64, 128, 128, 4, True, 4, 3),
        (64, 64, 128, 4, True, 4, 3),
        (64, 64, 128, 1, False, 4, 4),
        (64, 128, 64, 1, False, 4, 4),
        (128, 128, 64, 1, False, 8, 3),
        (64, 64, 128, 2, False, 4, 3),
        (64, 128, 32, 1, False, 4, 4),
    ])
    # Compute-bound: big tiles so each dequantized weight feeds 64-128 rows of x.
    LARGE_PREFILL_CONFIGS = _configs([
        (128, 128, 128, 1, True, 8, 3),
        (128, 128, 64, 1, False, 8, 3),
        (128, 256, 64, 1, False, 8, 3),
        (128, 64, 128, 1, False, 4, 3),
        (64, 128, 64, 1, False, 4, 4),
        (128, 128, 32, 1, False, 4, 4),
    ])


def _prune(configs, named_args, **kwargs):
    """A K-tile must lie inside one group (the scale is applied per tile) and tile K exactly; nibble-plane
    dots need BLOCK_K >= 128 (eight dots of K = BLOCK_K / 8 >= 16). Under the interpreter: the first."""
    group, k = kwargs.get("GROUP_SIZE", named_args.get("GROUP_SIZE")), named_args["K"]
    ok = [c for c in configs if group % c.kwargs["BLOCK_K"] == 0 and k % c.kwargs["BLOCK_K"] == 0
          and (c.kwargs["BLOCK_K"] >= 128 or not c.kwargs["NIBBLE_DOTS"])]
    if not ok:
        raise ValueError(f"no kernel config tiles K = {k} with group_size = {group}")
    return ok[:1] if INTERPRET else ok




# Nibble extraction in inline PTX (GPU, fp16/bf16): the compiler's own code for
# int4_to_float((packed >> 4j) & 0xF) costs ~3 instructions per weight (mask, shift, pair, mask, or);
# one PRMT (byte b of two words into the two 16-bit halves of a register) and one LOP3
# ((t & 0x000F000F) | MAGIC in both halves) make two weights, already paired for the MMA. Odd nibbles come
# from the words shifted right by 4 once (one SHF per word). Counted on the sm_90 cubin at 16 x 128 x 128
# (tools/sass_count.py): 0.139 -> 0.109 warp-instructions per weight in the K loop.
USE_ASM: tl.constexpr = tl.constexpr(not INTERPRET)


def _magic_pair_asm(byte: int, magic2: int) -> str:
    sel = byte | (byte << 4) | ((4 + byte) << 8) | ((4 + byte) << 12)
    return f"{{ .reg .b32 t; prmt.b32 t, $1, $2, {sel}; lop3.b32 $0, t, {0x000F000F}, {magic2}, {0xEA}; }}"


BF16_BYTE0: tl.constexpr = tl.constexpr(_magic_pair_asm(0, 0x43004300))
BF16_BYTE1: tl.constexpr = tl.constexpr(_magic_pair_asm(1, 0x43004300))
BF16_BYTE2: tl.constexpr = tl.constexpr(_magic_pair_asm(2, 0x43004300))
BF16_BYTE3: tl.constexpr = tl.constexpr(_magic_pair_asm(3, 0x43004300))
FP16_BYTE0: tl.constexpr = tl.constexpr(_magic_pair_asm(0, 0x64006400))
FP16_BYTE1: tl.constexpr = tl.constexpr(_magic_pair_asm(1, 0x64006400))
FP16_BYTE2: tl.constexpr = tl.constexpr(_magic_pair_asm(2, 0x64006400))
FP16_BYTE3: tl.constexpr = tl.constexpr(_magic_pair_asm(3, 0x64006400))


@triton.jit
def magic_low_nibble(words, BYTE: tl.constexpr, DTYPE: tl.constexpr):
    """MAGIC + (low nibble of byte BYTE) of every int32 word, in DTYPE: int4_to_float((words >> 8 BYTE) &
    0xF, DTYPE), in two PTX instructions per two words on a GPU for fp16 / bf16."""
    if USE_ASM and DTYPE == tl.bfloat16:
        if BYTE == 0:
            w = tl.inline_asm_elementwise(BF16_BYTE0, "=r,r,r", [words], dtype=tl.bfloat16, is_pure=True, pack=2)
        elif BYTE == 1:
            w = tl.inline_asm_elementwise(BF16_BYTE1, "=r,r,r", [words], dtype=tl.bfloat16, is_pure=True, pack=2)
        elif BYTE == 2:
            w = tl.inline_asm_elementwise(BF16_BYTE2, "=r,r,r", [words], dtype=tl.bfloat16, is_pure=True, pack=2)
        else:
            w = tl.inline_asm_elementwise(BF16_BYTE3, "=r,r,r", [words], dtype=tl.bfloat16, is_pure=True, pack=2)
    elif USE_ASM and DTYPE == tl.float16:
        if BYTE == 0:
            w = tl.inline_asm_elementwise(FP16_BYTE0, "=r,r,r", [words], dtype=tl.float16, is_pure=True, pack=2)
        elif BYTE == 1:
            w = tl.inline_asm_elementwise(FP16_BYTE1, "=r,r,r", [words], dtype=tl.float16, is_pure=True, pack=2)
        elif BYTE == 2:
            w = tl.inline_asm_elementwise(FP16_BYTE2, "=r,r,r", [words], dtype=tl.float16, is_pure=True, pack=2)
        else:
            w = tl.inline_asm_elementwise(FP16_BYTE3, "=r,r,r", [words], dtype=tl.float16, is_pure=True, pack=2)
    else:
        w = int4_to_float((words >> (8 * BYTE)) & 0xF, DTYPE)
    return w


@triton.jit
def nibble_plane_dot(part, x_j, packed, packed_hi, z, J: tl.constexpr):
    """part + x_j @ (nibble J of every packed word - z): the K-rows 8i + J of the tile, one MMA.
    packed_hi = packed >> 4: odd nibbles are the low nibbles of its bytes."""
    if J % 2 == 0:
        w_j = magic_low_nibble(packed, J // 2, x_j.dtype) - z[None, :]
    else:
        w_j = magic_low_nibble(packed_hi, J // 2, x_j.dtype) - z[None, :]
    if x_j.dtype == tl.float32:
        return tl.dot(x_j, w_j, part, input_precision="ieee")
    return tl.dot(x_j, w_j, part)


@triton.jit
def w4a16_gemm_kernel(
    # pointers
    x_ptr, qweight_ptr, scales_ptr, qzeros_ptr, y_ptr, partial_ptr, tile_lock_ptr,
    # sizes
    M, N, K,
    # strides (elements)
    stride_xm, stride_xk, stride_qwk, stride_qwn, stride_sg, stride_sn, stride_qzg, stride_qzn,
    stride_ym, stride_yn,
    # meta-parameters
    M_BUCKET,               # the autotune key's M bucket; a plain int (not constexpr) so that every bucket
                            # shares the compiled kernels instead of recompiling each config per bucket
    GROUP_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    NIBBLE_DOTS: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kw = tl.arange(0, BLOCK_K // 8)                 # packed rows of a K-tile
    mask_m = offs_m < M
    mask_n = offs_n < N
    nibble_shift = tl.arange(0, 8) * 4                   # nibble j of a word: bits 4j..4j+3
    zero_shift = (offs_n % 8) * 4                        # column n's nibble in its qzeros word

    # This program's K-tiles: [t_begin, t_end). K % BLOCK_K == 0 (the launcher prunes configs).
    k_tiles = K // BLOCK_K
    tiles_per_split = tl.cdiv(k_tiles, SPLIT_K)
    t_begin = pid_k * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, k_tiles)

    x_ptrs = (x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
              + (t_begin * BLOCK_K + offs_k)[None, :] * stride_xk)
    qw_ptrs = (qweight_ptr + (t_begin * (BLOCK_K // 8) + offs_kw)[:, None] * stride_qwk
               + offs_n[None, :] * stride_qwn)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(t_begin, t_end):
        g = (t * BLOCK_K) // GROUP_SIZE
        x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)                    # (BM, BK)
        packed = tl.load(qw_ptrs, mask=mask_n[None, :], other=0)                # (BK // 8, BN) int32
        s = tl.load(scales_ptr + g * stride_sg + offs_n * stride_sn, mask=mask_n, other=0.0)
        zword = tl.load(qzeros_ptr + g * stride_qzg + (offs_n // 8) * stride_qzn, mask=mask_n, other=0)
        z = int4_to_float((zword >> zero_shift) & 0xF, x_ptr.dtype.element_ty)  # (BN,) MAGIC + z

        if NIBBLE_DOTS:
            # Eight MMAs of K = BLOCK_K / 8, one per nibble j, on K-rows 8i + j: w_j is elementwise in
            # `packed` (no reshape), and x's columns 8i + j come from three splits of its trailing dim.
            x_e, x_o = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_K // 8, 2, 2, 2)))   # j = 4 a + 2 b + c: c
            x_e0, x_e1 = tl.split(x_e)                                             # b
            x_o0, x_o1 = tl.split(x_o)
            x0, x4 = tl.split(x_e0)                                                # a
            x2, x6 = tl.split(x_e1)
            x1, x5 = tl.split(x_o0)
            x3, x7 = tl.split(x_o1)
            hi = packed >> 4
            part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            part = nibble_plane_dot(part, x0, packed, hi, z, 0)
            part = nibble_plane_dot(part, x1, packed, hi, z, 1)
            part = nibble_plane_dot(part, x2, packed, hi, z, 2)
            part = nibble_plane_dot(part, x3, packed, hi, z, 3)
            part = nibble_plane_dot(part, x4, packed, hi, z, 4)
            part = nibble_plane_dot(part, x5, packed, hi, z, 5)
            part = nibble_plane_dot(part, x6, packed, hi, z, 6)
            part = nibble_plane_dot(part, x7, packed, hi, z, 7)
        else:
            # One MMA on the whole tile: expand every word to its 8 K-rows.
            q = (packed[:, None, :] >> nibble_shift[None, :, None]) & 0xF       # (BK // 8, 8, BN)
            w = tl.reshape(int4_to_float(q, x_ptr.dtype.element_ty), (BLOCK_K, BLOCK_N))  # row 8i + j
            w = w - z[None, :]                                                  # q - z, exact
            if x_ptr.dtype.element_ty == tl.float32:
                part = tl.dot(x, w, input_precision="ieee")
            else:
                part = tl.dot(x, w)
        acc += part * s.to(tl.float32)[None, :]
        x_ptrs += BLOCK_K * stride_xk
        qw_ptrs += (BLOCK_K // 8) * stride_qwk

    splitk_epilogue(acc, y_ptr, partial_ptr, tile_lock_ptr, M, N, stride_ym, stride_yn, pid_m, pid_n, pid_k,
                    BLOCK_M, BLOCK_N, SPLIT_K)


# Decode and small prefill with groups of 128 on a GPU: one config from the shape, not the autotuner. The
# autotuner times each config a few times in the first call; for 10-100 us kernels its picks changed between
# processes (H100, 2026-11-28: a decode benchmark at 12.5 us in one session's four grades, 15-20 us in the
# next day's two, with the sweep's best config alone at 12.4 us; H200, session 7: M = 128 at 4096 x 4096 in
# 32.2 us, then 39.4 us), and a grade must not depend on that draw. The rules are the sweeps' winners at
# both benchmark shapes (tools/gpu_checks/lab10.sh, step 4; BENCHMARKS.md):
#   decode: 16 x 128 x 128 tiles, 2 warps (217 registers: 4 CTAs per SM), 3 stages, and the largest
#     SPLIT_K of 8, 4, 2, 1 whose programs fit in one wave of CTA slots;
#   small prefill (H200 sweep, session 8): 64 x 128 x 128 tiles with 4 warps, split K 4 or 2 if that fills
#     at most one wave of 2 CTAs per SM (4096 x 4096: 64 tiles at M = 128, x 4 = 256 programs <= 264), else
#     128 x 128 x 128 with 8 warps and no split (4096 x 14336: each weight dequantized once per 128 rows).
DECODE_CTAS_PER_SM = 4
PREFILL_CTAS_PER_SM = 2
_FIXED: dict[tuple, list] = {}


def _fixed_config(device: torch.device, M: int, N: int, K: int, group_size: int) -> list | None:
    """[the config] for this shape, or None (the autotuner decides: CPU, groups other than 128, M past
    SMALL_PREFILL_MAX_M)."""
    if INTERPRET or device.type != "cuda" or group_size != 128 or M > SMALL_PREFILL_MAX_M:
        return None
    decode = M <= DECODE_MAX_M
    m_tiles = 1 if decode else -(-M // 64)
    key = (device.index, m_tiles, decode, N, K)
    hit = _FIXED.get(key)
    if hit is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        n_tiles, k_tiles = -(-N // 128), K // 128

        def split(choices, tiles, slots):
            return next(sk for sk in choices if sk == 1 or (sk <= k_tiles and tiles * sk <= slots))
        if decode:
            row = (16, 128, 128, split((8, 4, 2, 1), n_tiles, DECODE_CTAS_PER_SM * sms), True, 2, 3)
        else:
            sk = split((4, 2, 1), m_tiles * n_tiles, PREFILL_CTAS_PER_SM * sms)
            row = (64, 128, 128, sk, True, 4, 3) if sk > 1 else (128, 128, 128, 1, True, 8, 3)
        hit = _FIXED[key] = _configs([row])    # a list: _workspace's key
    return hit


_KEY = ["M_BUCKET", "N", "K", "GROUP_SIZE"]
_PRUNE = {"early_config_prune": _prune}
_decode = triton.autotune(DECODE_CONFIGS, key=_KEY, prune_configs_by=_PRUNE)(w4a16_gemm_kernel)
_small_prefill = triton.autotune(SMALL_PREFILL_CONFIGS, key=_KEY, prune_configs_by=_PRUNE)(w4a16_gemm_kernel)
_large_prefill = triton.autotune(LARGE_PREFILL_CONFIGS, key=_KEY, prune_configs_by=_PRUNE)(w4a16_gemm_kernel)


def _pick(M: int):
    """(autotuner, its configs, M bucket): the bucket is the autotune key, so M = 100 and M = 120 share a
    tuned config while decode and prefill never do."""
    if M <= DECODE_MAX_M:
        return _decode, DECODE_CONFIGS, DECODE_MAX_M
    if M <= SMALL_PREFILL_MAX_M:
        return _small_prefill, SMALL_PREFILL_CONFIGS, triton.next_power_of_2(M)
    return _large_prefill, LARGE_PREFILL_CONFIGS, triton.next_power_of_2(M)


_WORKSPACE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_SIZED: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _workspace(device: torch.device, configs, M: int, N: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split-K scratch, kept between calls: fp32 partial tiles, and one int32 lock per output tile that
    the kernel always leaves at 0. Sized for the largest need among the bucket's configs; grows only.
    Remembered per (device, bucket, M, N): at decode the kernel runs for ~5-10 us, and sizing the
    workspace in Python on every call (~35 us here, ~3x that on the H100 host) was most of the wrapper's
    cost."""
    sized_key = (device.type, device.index, id(configs), M, N)
    hit = _SIZED.get(sized_key)
    if hit is not None:
        return hit
    partial_elems, locks = 1, 1
    for c in configs:
        bm, bn, sk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["SPLIT_K"]
        tiles = -(-M // bm) * -(-N // bn)
        locks = max(locks, tiles)
        if sk > 1:
            partial_elems = max(partial_elems, sk * tiles * bm * bn)
    key = (device.type, device.index)
    old_partial, old_lock = partial, lock = _WORKSPACE.get(key, (None, None))
    if partial is None or partial.numel() < partial_elems:
        partial = torch.empty(partial_elems, dtype=torch.float32, device=device)
    if lock is None or lock.numel() < locks:
        lock = torch.zeros(locks, dtype=torch.int32, device=device)
    if partial is not old_partial or lock is not old_lock:
        _SIZED.clear()                      # older entries point at the buffers just replaced
    _WORKSPACE[key] = (partial, lock)
    _SIZED[sized_key] = (partial, lock)
    return partial, lock


def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                 group_size: int = 128) -> torch.Tensor:
    """y = x @ dequantize(qweight, scales, qzeros): x (M, K) fp16/bf16/fp32, GPTQ-packed weights -> (M, N)."""
    if x.dim() != 2:
        raise ValueError(f"x must be (M, K), got {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"x: expected fp16, bf16 or fp32, got {x.dtype}")
    M, K = x.shape
    if K % group_size or group_size % 32:
        raise ValueError(f"K = {K} must be a multiple of group_size = {group_size}, itself a multiple of 32")
    G = K // group_size
    if qweight.dtype != torch.int32 or qweight.shape[0] * 8 != K:
        raise ValueError(f"qweight must be int32 (K // 8, N) = ({K // 8}, N), got {qweight.dtype} "
                         f"{tuple(qweight.shape)}")
    N = qweight.shape[1]
    if scales.shape != (G, N) or qzeros.shape != (G, N // 8) or qzeros.dtype != torch.int32 or N % 8:
        raise ValueError(f"expected scales ({G}, {N}) and int32 qzeros ({G}, {N // 8}), got "
                         f"{tuple(scales.shape)} and {qzeros.dtype} {tuple(qzeros.shape)}")
    if scales.dtype != x.dtype:
        raise TypeError(f"scales must have x's dtype {x.dtype}, got {scales.dtype}")
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    kernel, configs, bucket = _pick(M)
    fixed = _fixed_config(x.device, M, N, K, group_size)
    extra = {}
    if fixed is not None:
        kernel, configs, extra = w4a16_gemm_kernel, fixed, dict(fixed[0].all_kwargs())
    partial, lock = _workspace(x.device, configs, M, N)

    def grid(meta):                         # plain ints: triton.cdiv costs a few us per call in Python
        return (-(-N // meta["BLOCK_N"]), -(-M // meta["BLOCK_M"]), meta["SPLIT_K"])

    kernel[grid](
        x, qweight, scales, qzeros, y, partial, lock,
        M, N, K,
        x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1), scales.stride(0), scales.stride(1),
        qzeros.stride(0), qzeros.stride(1), y.stride(0), y.stride(1),
        GROUP_SIZE=group_size, M_BUCKET=bucket, **extra,
    )
    return y
