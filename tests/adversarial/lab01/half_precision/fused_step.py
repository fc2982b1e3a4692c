"""KNOWN-BAD SUBMISSION (tests/adversarial/lab01/half_precision): computes the step in fp16."""

from toy_step import EPS, eager_step


def fused_step(x, h, w, b, eps=EPS):
    x16, h16 = eager_step(x.half(), h.half(), w.half(), b.half(), eps)
    return x16.float(), h16.float()
