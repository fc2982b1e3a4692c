"""KNOWN-BAD SUBMISSION, kept as a test the grader must reject (README.md beside it).

Known-bad lab04 submission: hands the work to torch SDPA (threat 10). The audit must catch it."""

import torch
import torch.nn.functional as F


def attention_forward(q, k, v, causal=False, scale=None):
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    s = (q.float() @ k.float().transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5)
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return o, torch.logsumexp(s, -1)


class FlashAttention:
    @staticmethod
    def apply(q, k, v, causal=False, scale=None):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


def flash_attention(q, k, v, causal=False, scale=None):
    return FlashAttention.apply(q, k, v, causal, scale)
