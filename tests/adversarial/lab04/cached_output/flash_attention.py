"""KNOWN-BAD SUBMISSION, kept as a test the grader must reject (README.md beside it).

Known-bad lab04 submission: computes attention once per shape (elementwise torch, no forbidden op) and
replays that answer afterwards (threat 2). Fresh inputs on every trial must expose it."""

import torch

_CACHE = {}


def _attention(q, k, v, causal, scale):
    scale = scale or q.shape[-1] ** -0.5
    s = (q.float().unsqueeze(-2) * k.float().unsqueeze(-3)).sum(-1) * scale        # (B, H, N_q, N_kv)
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    m = s.amax(-1, keepdim=True)
    e = (s - m).exp()
    l = e.sum(-1, keepdim=True)
    o = ((e / l).unsqueeze(-1) * v.float().unsqueeze(-3)).sum(-2)
    return o.to(q.dtype), (m + l.log()).squeeze(-1)


def attention_forward(q, k, v, causal=False, scale=None):
    key = ("fwd", tuple(q.shape), tuple(k.shape), causal)
    if key not in _CACHE:
        _CACHE[key] = _attention(q, k, v, causal, scale)
    return _CACHE[key]


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        with torch.enable_grad():
            qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
            o = _attention(qq, kk, vv, causal, scale)[0]
        ctx.graph = (o, qq, kk, vv)
        ctx.key = ("bwd", tuple(q.shape), tuple(k.shape), causal)
        return o.detach()

    @staticmethod
    def backward(ctx, do):
        if ctx.key not in _CACHE:
            o, qq, kk, vv = ctx.graph
            _CACHE[ctx.key] = torch.autograd.grad(o, (qq, kk, vv), do)
        return (*_CACHE[ctx.key], None, None)


class FlashAttention:
    apply = staticmethod(_Replay.apply)


def flash_attention(q, k, v, causal=False, scale=None):
    return _Replay.apply(q, k, v, causal, scale)
