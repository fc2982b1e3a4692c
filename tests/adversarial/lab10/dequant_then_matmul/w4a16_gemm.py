"""KNOWN-BAD SUBMISSION, kept as a test the grader must reject (README.md beside it).

w4a16_matmul unpacks the codes with torch ops, dequantizes the whole weight into memory in x's dtype
and calls x @ w (threat 10: call the library the lab asks you to write). Right answers; on a GPU it
also reads ~5x the bytes a fused kernel reads.
"""

import torch


def w4a16_matmul(x, qweight, scales, qzeros, group_size=128):
    K, N = x.shape[1], qweight.shape[1]
    shifts = torch.arange(8, device=x.device, dtype=torch.int32) * 4
    q = ((qweight[:, None, :] >> shifts[None, :, None]) & 0xF).reshape(K, N)
    z = ((qzeros[:, :, None] >> shifts[None, None, :]) & 0xF).reshape(qzeros.shape[0], N)
    w = ((q - z.repeat_interleave(group_size, 0)) * scales.repeat_interleave(group_size, 0)).to(x.dtype)
    return x @ w
