"""KNOWN-BAD SUBMISSION, kept as a test the grader must reject (README.md beside it).

Known-bad lab04 submission: textbook attention in torch (matmul, softmax, matmul) instead of a kernel.
Right answers, wrong lab: the audit must catch the matmuls and the softmax (threat 10)."""

import torch


def _math(q, k, v, causal, scale):
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5)
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    o = torch.matmul(torch.softmax(s, dim=-1), v.float()).to(q.dtype)
    return o, torch.logsumexp(s, -1)


def attention_forward(q, k, v, causal=False, scale=None):
    return _math(q, k, v, causal, scale)


class FlashAttention:
    @staticmethod
    def apply(q, k, v, causal=False, scale=None):
        return _math(q, k, v, causal, scale)[0]


def flash_attention(q, k, v, causal=False, scale=None):
    return FlashAttention.apply(q, k, v, causal, scale)
