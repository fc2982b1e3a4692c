"""KNOWN-BAD SUBMISSION, kept as a test the grader must reject (README.md beside it).

gptq_quantize rounds every row on the grid and never propagates the error to the later rows: it is
RTN, which is exactly right when H = I and wrong (and worse) on real calibration data.

The rest is the reference solution:
Lab 10, part 1: 4-bit weight quantization -- round-to-nearest, int32 packing (GPTQ and AWQ layouts),
GPTQ and AWQ. Plain PyTorch; checked exactly (integer equality) where the answer is an integer.

Conventions (every function here and the grader use them):

    A linear layer computes y = x @ W with x: (M, K) and W: (K, N) (K input channels, N outputs).
    Groups: G = K // group_size groups of `group_size` consecutive input channels (rows of W); each
    (group, column) pair has its own scale s > 0 and zero point z in 0..15 (asymmetric uint4):

        q = clamp(round(w / s) + z, 0, 15)          (codes, uint4 held in int32 tensors)
        w_hat = (q - z) * s                        (dequantized weight)

    RTN grid of a group: mn = min(min(w), 0), mx = max(max(w), 0), s = (mx - mn) / 15 (s = 1 if that
    is 0), z = clamp(round(-mn / s), 0, 15). Including 0 in [mn, mx] keeps z inside 0..15.
    Rounding is torch.round (half to even); the grader's weights never sit on a tie.

Packed layouts (8 four-bit values per int32 word; nibble j = bits 4j..4j+3, so nibble 7 holds the sign
bit: a word whose top nibble is 0xF is negative, and unpacking must mask after the shift):

    GPTQ  qweight: (K // 8, N)   word [i, n]  nibble j = q[8i + j, n]            (packed along K, in order)
          qzeros:  (G, N // 8)   word [g, c]  nibble j = z[g, 8c + j]            (packed along N, in order)
    AWQ   qweight: (K, N // 8)   word [k, c]  nibble j = q[k, 8c + AWQ_ORDER[j]] (packed along N, interleaved)
          qzeros:  (G, N // 8)   word [g, c]  nibble j = z[g, 8c + AWQ_ORDER[j]]
          AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7): columns 0, 2, 4, 6 sit in the low half of the word.

    Scales are stored unpacked, (G, N), in both layouts. The GEMM of part 2 (w4a16_gemm.py) reads the
    GPTQ layout. Zero points are stored as is (some GPTQ checkpoints store z - 1; these do not).
"""

from __future__ import annotations

import torch

BITS = 4
PACK = 32 // BITS                     # values per int32 word
MAX_Q = 2**BITS - 1                   # 15
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AWQ word nibble j holds column 8c + AWQ_ORDER[j]
GPTQ_ORDER = tuple(range(PACK))


def _check_groups(K: int, group_size: int) -> int:
    if group_size <= 0 or K % group_size:
        raise ValueError(f"K = {K} must be a multiple of group_size = {group_size}")
    return K // group_size


def _expand(t: torch.Tensor, group_size: int) -> torch.Tensor:
    """(G, N) per-group values -> (G * group_size, N), one row per input channel."""
    return t.repeat_interleave(group_size, dim=0)


# ---- round to nearest ------------------------------------------------------------------------------

def rtn_quantize(w: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-wise asymmetric round-to-nearest.

    w: (K, N) float -> q: (K, N) int32 in 0..15, scales: (K // group_size, N) fp32,
    zeros: (K // group_size, N) int32 in 0..15. Computed in fp32.
    """
    K, N = w.shape
    G = _check_groups(K, group_size)
    wg = w.float().reshape(G, group_size, N)
    mn = wg.amin(dim=1).clamp(max=0.0)
    mx = wg.amax(dim=1).clamp(min=0.0)
    scales = (mx - mn) / MAX_Q
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    zeros = torch.round(-mn / scales).clamp(0, MAX_Q)
    q = (torch.round(wg / scales[:, None, :]) + zeros[:, None, :]).clamp(0, MAX_Q)
    return q.reshape(K, N).to(torch.int32), scales, zeros.to(torch.int32)


def dequantize(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int = 128) -> torch.Tensor:
    """w_hat = (q - z) * s. q: (K, N) int, scales: (G, N) float, zeros: (G, N) int -> (K, N) fp32."""
    _check_groups(q.shape[0], group_size)
    return (q - _expand(zeros, group_size)).float() * _expand(scales.float(), group_size)


# ---- packing ---------------------------------------------------------------------------------------

def pack_nibbles(q: torch.Tensor, dim: int, order: tuple[int, ...]) -> torch.Tensor:
    """Pack 8 consecutive codes along `dim` into one int32 word; nibble j (bits 4j..4j+3) takes code
    order[j] of the 8. q: int tensor of codes 0..15 -> int32, `dim` 8x shorter."""
    if q.shape[dim] % PACK:
        raise ValueError(f"dimension {dim} of {tuple(q.shape)} is not a multiple of {PACK}")
    if q.numel() and (q.min() < 0 or q.max() > MAX_Q):
        raise ValueError("codes must lie in 0..15")
    q = q.to(torch.int32).movedim(dim, -1)
    q = q.reshape(*q.shape[:-1], q.shape[-1] // PACK, PACK)
    word = torch.zeros(q.shape[:-1], dtype=torch.int32, device=q.device)
    for j, src in enumerate(order):
        # int32 shifts wrap: nibble 7 (j = 7) lands in bits 28..31, the sign bit included -- as intended.
        word |= q[..., src] << (BITS * j)
    return word.movedim(-1, dim).contiguous()


def unpack_nibbles(word: torch.Tensor, dim: int, order: tuple[int, ...]) -> torch.Tensor:
    """Inverse of pack_nibbles: int32 words -> int32 codes 0..15, `dim` 8x longer. `>>` on int32 is
    arithmetic (it copies the sign bit), so every nibble is masked after the shift."""
    if word.dtype != torch.int32:
        raise TypeError(f"packed words must be int32, got {word.dtype}")
    w = word.movedim(dim, -1)
    q = torch.empty(*w.shape, PACK, dtype=torch.int32, device=w.device)
    for j, dst in enumerate(order):
        q[..., dst] = (w >> (BITS * j)) & MAX_Q
    q = q.reshape(*w.shape[:-1], w.shape[-1] * PACK)
    return q.movedim(-1, dim).contiguous()


def pack_gptq(q: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ layout. q: (K, N) -> qweight (K // 8, N) int32; zeros: (G, N) -> qzeros (G, N // 8) int32."""
    return pack_nibbles(q, 0, GPTQ_ORDER), pack_nibbles(zeros, 1, GPTQ_ORDER)


def unpack_gptq(qweight: torch.Tensor, qzeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of pack_gptq: -> q (K, N) int32, zeros (G, N) int32, values in 0..15."""
    return unpack_nibbles(qweight, 0, GPTQ_ORDER), unpack_nibbles(qzeros, 1, GPTQ_ORDER)


def pack_awq(q: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AWQ layout. q: (K, N) -> qweight (K, N // 8) int32; zeros: (G, N) -> qzeros (G, N // 8) int32;
    both interleaved: nibble j of a word holds column 8c + AWQ_ORDER[j]."""
    return pack_nibbles(q, 1, AWQ_ORDER), pack_nibbles(zeros, 1, AWQ_ORDER)


def unpack_awq(qweight: torch.Tensor, qzeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of pack_awq: -> q (K, N) int32, zeros (G, N) int32."""
    return unpack_nibbles(qweight, 1, AWQ_ORDER), unpack_nibbles(qzeros, 1, AWQ_ORDER)


# ---- GPTQ ------------------------------------------------------------------------------------------

def gptq_quantize(w: torch.Tensor, h: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                  group_size: int = 128, damp: float = 0.01, block_size: int = 128) -> torch.Tensor:
    """GPTQ on a fixed grid: quantize the rows of W one at a time (input channels k = 0, 1, ..., K-1, in
    order, no act-order) and push each row's rounding error onto the rows not yet quantized, weighted so
    as to minimize the layer's output error ||X W - X W_hat||^2 under the Hessian H = X^T X.

    w: (K, N) float; h: (K, K) float (X^T X of calibration activations X: (n, K), any positive scale);
    scales (G, N) float, zeros (G, N) int: the grid, kept fixed ("static groups", e.g. RTN's grid of w).
    Returns q: (K, N) int32 in 0..15. Computed in fp32:

        H <- H + damp * mean(diag(H)) * I
        U  = upper Cholesky factor of H^-1           (H^-1 = U^T U)
        for k in 0..K-1:                             (W is updated in place as we go)
            q_k  = clamp(round(W[k] / s_k) + z_k, 0, 15)        s_k, z_k: row k's group's grid
            e_k  = (W[k] - (q_k - z_k) * s_k) / U[k, k]
            W[j] -= U[k, j] * e_k   for every j > k

    With H = I, U is diagonal: no row is ever updated and GPTQ is RTN on the same grid, exactly.
    The loop runs in blocks of `block_size` rows (GPTQ's "lazy batch" update): inside a block rows are
    updated one by one; rows after the block receive the block's errors in one matrix product, which is
    the same arithmetic reordered.
    """
    K, N = w.shape
    _check_groups(K, group_size)
    W = w.float().clone()
    H = h.float().clone()
    H.diagonal().add_(damp * H.diagonal().mean())
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    S = _expand(scales.float(), group_size)
    Z = _expand(zeros.float(), group_size)
    Q = torch.empty(K, N, dtype=torch.int32)
    for b0 in range(0, K, block_size):
        b1 = min(b0 + block_size, K)
        Wb = W[b0:b1].clone()                      # (B, N): this block, updated row by row
        E = torch.empty_like(Wb)                   # scaled errors e_k of the block's rows
        for i in range(b1 - b0):
            k = b0 + i
            q = (torch.round(Wb[i] / S[k]) + Z[k]).clamp(0, MAX_Q)
            Q[k] = q.to(torch.int32)
            e = (Wb[i] - (q - Z[k]) * S[k]) / U[k, k]
            pass                                   # BUG: no error feedback
            E[i] = e
    return Q


# ---- AWQ -------------------------------------------------------------------------------------------

def layer_error(x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
    """Relative squared output error ||x @ (w_hat - w)||^2 / ||x @ w||^2 (a 0-dim fp32 tensor)."""
    x, w = x.float(), w.float()
    return (x @ (w_hat.float() - w)).pow(2).sum() / (x @ w).pow(2).sum()


def awq_search(w: torch.Tensor, x: torch.Tensor, group_size: int = 128,
               n_grid: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """AWQ's activation-aware scale search (without its clipping search).

    Scaling input channel k of W by s_k and of x by 1/s_k leaves x @ W unchanged, but quantizing W * s
    protects the channels with large activations (their weights get a finer effective grid). Search
    s = a^alpha over alpha on a grid, a = per-channel mean |x|:

        a = mean over tokens of |x|, clamped to >= 1e-6                        (K,)
        for i in 0..n_grid:  alpha = i / n_grid
            s = a ** alpha;  s = s / mean(s)
            W_hat = dequantize(rtn_quantize(W * s[:, None])) / s[:, None]
            loss_i = layer_error(x, W, W_hat)
        best = the first i with the smallest loss

    alpha = 0 gives s = 1, i.e. plain RTN, so the chosen loss is never worse than RTN's.
    w: (K, N) float, x: (n, K) float calibration activations -> (scales (K,) fp32 for the best alpha,
    losses (n_grid + 1,) fp32). Computed in fp32.
    """
    K, N = w.shape
    _check_groups(K, group_size)
    w, x = w.float(), x.float()
    a = x.abs().mean(dim=0).clamp(min=1e-6)
    losses = torch.empty(n_grid + 1, dtype=torch.float32)
    candidates = []
    for i in range(n_grid + 1):
        s = a.pow(i / n_grid)
        s = s / s.mean()
        q, sc, z = rtn_quantize(w * s[:, None], group_size)
        w_hat = dequantize(q, sc, z, group_size) / s[:, None]
        losses[i] = layer_error(x, w, w_hat)
        candidates.append(s)
    return candidates[int(torch.argmin(losses))], losses
