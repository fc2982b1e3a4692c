"""KNOWN-BAD SUBMISSION: gathers the blocks with torch indexing and calls torch SDPA.
"""

import torch
import torch.nn.functional as F


def _gather(k_cache, v_cache, block_tables, seq_lens):
    B = block_tables.shape[0]
    _, page, kvh, d = k_cache.shape
    n = block_tables.shape[1]
    k = k_cache[block_tables.long()].reshape(B, n * page, kvh, d).transpose(1, 2)
    v = v_cache[block_tables.long()].reshape(B, n * page, kvh, d).transpose(1, 2)
    valid = torch.arange(n * page, device=k.device)[None, :] < seq_lens[:, None]
    k = k.masked_fill(~valid[:, None, :, None], 0.0)
    v = v.masked_fill(~valid[:, None, :, None], 0.0)
    return k, v, valid


def paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale=None):
    k, v, valid = _gather(k_cache, v_cache, block_tables, seq_lens)
    o = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=valid[:, None, None, :], scale=scale,
                                       enable_gqa=True)
    return o[:, :, 0]


def paged_decode_attention_split(q, k_cache, v_cache, block_tables, seq_lens, scale=None, num_splits=None):
    return paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, scale)
