"""KNOWN-BAD SUBMISSION: gathers the blocks with torch indexing into a contiguous tensor, then
attends with elementwise torch ops (no matmul or softmax op to block): right answers, no paged kernel.
"""

import torch


def paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale=None):
    """Elementwise torch only (no matmul, no softmax op): the paging is a torch gather, not a kernel."""
    B, H, D = q.shape
    _, page, kvh, _ = k_cache.shape
    n = block_tables.shape[1]
    k = k_cache[block_tables.long()].reshape(B, n * page, kvh, D).float()
    v = v_cache[block_tables.long()].reshape(B, n * page, kvh, D).float()
    valid = torch.arange(n * page, device=q.device)[None, :] < seq_lens[:, None]
    k = torch.where(valid[:, :, None, None], k, 0.0).repeat_interleave(H // kvh, dim=2)   # (B, L, H, D)
    v = torch.where(valid[:, :, None, None], v, 0.0).repeat_interleave(H // kvh, dim=2)
    s = (q.float()[:, None] * k).sum(-1) * (scale or D ** -0.5)                            # (B, L, H)
    s = torch.where(valid[:, :, None], s, float("-inf"))
    p = (s - s.amax(1, keepdim=True)).exp()
    p = p / p.sum(1, keepdim=True)
    return (p[..., None] * v).sum(1).to(q.dtype)


def paged_decode_attention_split(q, k_cache, v_cache, block_tables, seq_lens, scale=None, num_splits=None):
    return paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale)
