"""KNOWN-BAD SUBMISSION, kept as a test the grader must reject (README.md beside it).

w4a16_matmul hands the work to PyTorch's own int4 weight-only GEMM (torch._weight_int4pack_mm and its
packing op), the library version of this lab (threat 10).
"""

import torch


def w4a16_matmul(x, qweight, scales, qzeros, group_size=128):
    K, N = x.shape[1], qweight.shape[1]
    shifts = torch.arange(8, device=x.device, dtype=torch.int32) * 4
    q = ((qweight[:, None, :] >> shifts[None, :, None]) & 0xF).reshape(K, N)
    z = ((qzeros[:, :, None] >> shifts[None, None, :]) & 0xF).reshape(qzeros.shape[0], N)
    # torch's format: w = (q - 8) * s + b per group, with b = (8 - z) * s
    scales_and_zeros = torch.stack([scales, (8 - z).to(scales.dtype) * scales], dim=-1)
    if x.is_cuda:
        packed = torch.ops.aten._convert_weight_to_int4pack(q.t().contiguous().to(torch.uint8), 8)
        return torch.ops.aten._weight_int4pack_mm(x, packed, group_size, scales_and_zeros)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.t().contiguous(), 1)
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)
