"""KNOWN-BAD SUBMISSION (tests/adversarial/lab01/static_output_buffer): returns the graph's static outputs.

Inputs are copied into static buffers and the graph is replayed, as it should be; but the outputs handed
back ARE the static output buffers, which the next replay overwrites. On a CPU the same aliasing is
emulated with per-shape output buffers written in place.
"""

import torch

from toy_step import EPS, eager_step

_GRAPHS = {}


def fused_step(x, h, w, b, eps=EPS):
    key = (tuple(x.shape), tuple(w.shape), x.device.type)
    if key not in _GRAPHS:
        static_in = [t.clone() for t in (x, h, w, b)]
        if x.is_cuda:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                eager_step(*static_in, eps)
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                static_out = eager_step(*static_in, eps)
        else:
            g, static_out = None, (torch.empty_like(x), torch.empty_like(h))
        _GRAPHS[key] = (g, static_in, static_out)
    g, static_in, static_out = _GRAPHS[key]
    for buf, t in zip(static_in, (x, h, w, b)):
        buf.copy_(t)
    if g is None:
        for buf, t in zip(static_out, eager_step(*static_in, eps)):
            buf.copy_(t)
    else:
        g.replay()
    return static_out                                    # bug: no .clone()
