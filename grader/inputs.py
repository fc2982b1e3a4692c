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


# ---- salt: a few input elements rewritten just before each timed call -------------------------------------

SALT_ROW_1D = 1024                 # a 1-D input is salted in rows of this many elements
SALT_ROWS_MAX = 1 << 17            # at most this many salted elements per call (evenly spread rows past it)


def salt_plan(t: torch.Tensor, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Where and what to salt in input `t` (contiguous) for one input set: one element per row (rows = every
    index of the leading dims; a 1-D tensor in rows of SALT_ROW_1D), at a column drawn from `seed`, and a
    base value per position: 4 to 8 times the RMS of t's first 65536 elements, times `scale`
    (LabSpec.salt_scale). Fixed per set, so the set's
    state after a salt depends only on that call's values (apply_salt overwrites every position).
    Returns (flat indices, base values), both on t's device; the same (t, seed) gives the same plan in any
    process."""
    gen = torch.Generator().manual_seed(seed)
    flat = t.detach().reshape(-1)[:65536].to("cpu", torch.float64)
    rms = float(flat.square().mean().sqrt()) if flat.numel() else 1.0
    rms = float(f"{rms:.3g}") or 1.0                 # rounded: the same in every process
    n = t.numel()
    length = min(SALT_ROW_1D, max(n, 1)) if t.dim() <= 1 else t.shape[-1]
    rows = torch.arange(-(-n // length))
    rows = rows[::-(-len(rows) // SALT_ROWS_MAX)]
    col = torch.randint(0, length, (len(rows),), generator=gen)
    index = (rows * length + col).clamp_max(max(n - 1, 0))
    # one sign for all (the call's factor flips it): a reduction over the input moves by the sum of them,
    # 65536 x ~6 RMS for lab01's 64Mi-element sums, past their 1e-4 tolerance; random signs would cancel
    base = (4 + 4 * torch.rand(len(col), generator=gen)) * rms * scale
    return index.to(t.device), base.to(torch.float32).to(t.device)


def salt_factor(rep_seed: int) -> float:
    """This call's multiplier of the base values: in [1, 2), either sign, from the call's seed."""
    import random
    r = random.Random(rep_seed)
    return (1.0 + r.random()) * (1 if r.random() < 0.5 else -1)


def salt_values(t: torch.Tensor, plan, rep_seed: int) -> torch.Tensor:
    """The values one call writes (t's dtype, t's device): prepared before a batch so that the timed loop
    pays one small launch per call (apply_salt), not three."""
    return (plan[1] * salt_factor(rep_seed)).to(t.dtype)


def apply_salt(t: torch.Tensor, plan, rep_seed: int, values: torch.Tensor | None = None) -> None:
    """Write this call's salt into t in place: one index_copy_ on the current stream, no sync (with
    `values` from salt_values; without, they are made here). On the H100 host an index_put_ with the
    values made per call cost enough host time (~0.2 ms) to let the GPU run dry inside lab 10's timed
    calls (2026-11-28)."""
    index = plan[0]
    if len(index):
        t.view(-1).index_copy_(0, index, salt_values(t, plan, rep_seed) if values is None else values)


def salted_input(spec: LabSpec, inputs: Mapping[str, torch.Tensor]) -> str | None:
    """The input a benchmark salts: the first of spec.salt that is a floating-point tensor here."""
    for name in spec.salt:
        t = inputs.get(name)
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() and t.is_contiguous():
            return name
    return None
