"""Seeded input generation, shared by every lab.

Inputs are drawn on the CPU from a torch.Generator and then moved, so the student's process and the
grading process build bit-identical tensors from the same seed. Distributions are never trivial: rows
get their own scale and offset and a few outliers, so that answers which only hold for i.i.d. N(0, 1)
data (or zeros) fail.
"""

from __future__ import annotations

import hashlib
from typing import Mapping

import torch

from .spec import DTYPES, LabSpec


def derive_seed(*parts) -> int:
    h = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:7], "little")


def make(spec: LabSpec, params: Mapping, seed: int, device: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tensors = spec.make_inputs(params, gen)
    return {k: _to(v, device) for k, v in tensors.items()}


def _to(t: torch.Tensor, device: str) -> torch.Tensor:
    """Move preserving strides (a transposed or sliced input stays transposed or sliced)."""
    if t.device.type == device:
        return t
    if t.is_contiguous():
        return t.to(device)
    base = t.as_strided((t.untyped_storage().nbytes() // t.element_size(),), (1,), 0)
    moved = base.to(device)
    return moved.as_strided(t.shape, t.stride(), t.storage_offset())


def realistic(shape, gen: torch.Generator, dtype: str | torch.dtype, outliers: float = 1e-3) -> torch.Tensor:
    """N(0,1) with a per-row scale in [0.25, 4], a per-row offset in [-0.5, 0.5] and rare x8 outliers."""
    dt = DTYPES[dtype] if isinstance(dtype, str) else dtype
    x = torch.randn(shape, generator=gen, dtype=torch.float32)
    if x.dim() >= 1 and x.numel():
        rows = x.shape[:-1] + (1,) if x.dim() > 1 else (1,)
        scale = torch.exp(torch.empty(rows).uniform_(-1.386, 1.386, generator=gen))
        offset = torch.empty(rows).uniform_(-0.5, 0.5, generator=gen)
        x = x * scale + offset
        mask = torch.rand(shape, generator=gen) < outliers
        x = torch.where(mask, x * 8, x)
    return x.to(dt)


def with_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """'n': contiguous; 't': same values, stored transposed (column-major); 's': a strided view (every other column)."""
    if layout == "n":
        return x.contiguous()
    if layout == "t":
        return x.t().contiguous().t()
    if layout == "s":
        wide = torch.empty(x.shape[0], 2 * x.shape[1], dtype=x.dtype)
        wide.fill_(float("nan") if x.dtype.is_floating_point else 0)
        wide[:, ::2] = x
        return wide[:, ::2]
    raise ValueError(f"unknown layout {layout!r}")
