"""Lab 01, profiling: a small pre-norm Transformer block with random weights (given), annotated for profilers.

    block = TransformerBlock(BlockConfig(dim=1024, n_heads=16)).to(device, dtype)
    y = block(x)                                  # x: (B, T, dim) -> (B, T, dim)

The forward pass is GPT-2 shaped (LayerNorm -> causal self-attention -> residual, LayerNorm -> MLP with
GELU -> residual) and every sub-layer runs inside `annotate(name)`: a torch.profiler range (it shows up in
the profiler's tables and in the Chrome/Perfetto trace) and an NVTX range (it shows up in Nsight Systems
and lets Nsight Compute filter kernels). `sublayer_costs` gives each sub-layer's minimum FLOPs and bytes,
so that a profile can be read against the roofline (roofline.py).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

try:                                   # the `nvtx` package (pip install nvtx): NVTX ranges without CUDA torch
    import nvtx as _nvtx
except ImportError:
    _nvtx = None

SUBLAYERS = ("ln1", "qkv", "attention", "proj", "residual1", "ln2", "fc1", "gelu", "fc2", "residual2")


@contextlib.contextmanager
def annotate(name: str):
    """A named range for both kinds of profiler: torch.profiler (record_function) and NVTX (the `nvtx`
    package if installed, else torch.cuda.nvtx when CUDA is available, else none)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.profiler.record_function(name))
        if _nvtx is not None:
            stack.enter_context(_nvtx.annotate(name))
        elif torch.cuda.is_available():
            stack.enter_context(torch.cuda.nvtx.range(name))
        yield


def nvtx_source() -> str:
    if _nvtx is not None:
        return "the nvtx package"
    return "torch.cuda.nvtx" if torch.cuda.is_available() else "none (no CUDA; torch.profiler ranges only)"


@dataclass
class BlockConfig:
    dim: int = 256
    n_heads: int = 4
    mlp_ratio: int = 4

    def __post_init__(self):
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden(self) -> int:
        return self.mlp_ratio * self.dim


class TransformerBlock(nn.Module):
    def __init__(self, cfg: BlockConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        d, hid = cfg.dim, cfg.hidden
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, hid), nn.Linear(hid, d)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():                        # random weights, scaled so activations stay O(1)
            for lin in (self.qkv, self.proj, self.fc1, self.fc2):
                lin.weight.normal_(0.0, lin.in_features ** -0.5, generator=gen)
                lin.bias.normal_(0.0, 0.02, generator=gen)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        nh, hd = self.cfg.n_heads, self.cfg.head_dim
        with annotate("block"):
            with annotate("ln1"):
                h = self.ln1(x)
            with annotate("qkv"):
                qkv = self.qkv(h)                                         # (B, T, 3d)
            with annotate("attention"):
                q, k, v = (t.view(B, T, nh, hd).transpose(1, 2) for t in qkv.split(d, dim=-1))   # (B, nh, T, hd)
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                o = o.transpose(1, 2).reshape(B, T, d)                    # (B, T, d), a copy
            with annotate("proj"):
                a = self.proj(o)
            with annotate("residual1"):
                x = x + a
            with annotate("ln2"):
                h = self.ln2(x)
            with annotate("fc1"):
                h = self.fc1(h)                                           # (B, T, hidden)
            with annotate("gelu"):
                h = F.gelu(h, approximate="tanh")
            with annotate("fc2"):
                h = self.fc2(h)
            with annotate("residual2"):
                x = x + h
        return x


def sublayer_costs(cfg: BlockConfig, batch: int, seq: int, elem_bytes: int) -> dict[str, tuple[float, float]]:
    """name -> (FLOPs, bytes): the least each sub-layer must compute and move (weights, activations in and
    out once; attention as FlashAttention does it, causal: half of the 4 * B * T^2 * d score/value FLOPs)."""
    n, d, hid, e = batch * seq, cfg.dim, cfg.hidden, elem_bytes

    def linear(k, m):                        # (n, k) @ (k, m) + bias
        return 2.0 * n * k * m + n * m, e * (n * k + k * m + m + n * m)

    ln = (8.0 * n * d, e * (2 * n * d + 2 * d))
    residual = (1.0 * n * d, e * 3.0 * n * d)
    return {
        "ln1": ln, "qkv": linear(d, 3 * d),
        "attention": (2.0 * batch * seq * seq * d, e * 4.0 * n * d),
        "proj": linear(d, d), "residual1": residual, "ln2": ln,
        "fc1": linear(d, hid), "gelu": (10.0 * n * hid, e * 2.0 * n * hid), "fc2": linear(hid, d),
        "residual2": residual,
    }


def block_costs(cfg: BlockConfig, batch: int, seq: int, elem_bytes: int) -> tuple[float, float]:
    """(FLOPs, bytes) of the whole block: the sums over sub-layers."""
    costs = sublayer_costs(cfg, batch, seq, elem_bytes).values()
    return math.fsum(f for f, _ in costs), math.fsum(b for _, b in costs)
