"""Compare a student's output with a higher-precision reference, element by element, and explain misses."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .spec import Tolerance


@dataclass
class Comparison:
    ok: bool
    message: str
    max_abs_err: float = float("nan")
    rel_fro_err: float = float("nan")      # ||out - ref||_F / ||ref||_F
    bad_count: int = 0
    kind: str = ""                         # "", "shape", "dtype", "nan", "unwritten", "edge", "values"


def _index(flat_idx: int, shape) -> tuple[int, ...]:
    idx = []
    for s in reversed(shape):
        idx.append(flat_idx % s)
        flat_idx //= s
    return tuple(reversed(idx))


def check_output_type(out, shape, dtype) -> Comparison | None:
    """Outputs must be plain dense tensors (no subclasses, no lazy wrappers) of the declared shape and dtype."""
    if type(out) is not torch.Tensor:
        return Comparison(False, f"returned {type(out).__name__}, expected a plain torch.Tensor", kind="type")
    if tuple(out.shape) != tuple(shape):
        return Comparison(False, f"output shape {tuple(out.shape)}, expected {tuple(shape)}", kind="shape")
    if out.dtype != dtype:
        return Comparison(False, f"output dtype {out.dtype}, expected {dtype}", kind="dtype")
    if out.layout != torch.strided:
        return Comparison(False, f"output layout {out.layout}, expected a dense (strided) tensor", kind="type")
    return None


def compare(out: torch.Tensor, ref: torch.Tensor, tol: Tolerance, edge_of=None) -> Comparison:
    """Every element must be finite and within tolerance. `ref` may be in a wider dtype.

    `edge_of(index) -> bool`, when given, tells whether an index lies in a partial (edge) tile, so that a
    failure confined to edges can be named as a masking bug.
    """
    if tuple(out.shape) != tuple(ref.shape):
        return Comparison(False, f"output shape {tuple(out.shape)}, expected {tuple(ref.shape)}", kind="shape")
    o = out.detach().to(torch.float64).cpu()
    r = ref.detach().to(torch.float64).cpu()
    if not torch.isfinite(r).all():
        raise RuntimeError("reference is not finite: the spec's input generator is broken")
    n = o.numel()
    if n == 0:
        return Comparison(True, "empty output", 0.0, 0.0)
    rms = r.pow(2).mean().sqrt().item()
    diff = (o - r).abs()
    finite = torch.isfinite(o)
    allowed = tol.atol_rms * rms + tol.rtol * r.abs()
    bad = ~finite | ~(diff <= allowed)
    bad_count = int(bad.sum())
    diff_f = torch.where(finite, diff, torch.zeros_like(diff))
    max_abs = float(diff_f.max()) if finite.any() else float("inf")
    ref_norm = float(r.norm())
    rel_fro = float((torch.where(finite, o, r) - r).norm() / ref_norm) if ref_norm > 0 else max_abs
    if not finite.all():
        rel_fro = float("inf")
    if bad_count == 0:
        return Comparison(True, f"max abs err {max_abs:.3g}, rel err {rel_fro:.3g}", max_abs, rel_fro, 0)

    first = int(bad.flatten().nonzero()[0])
    idx = _index(first, o.shape)
    got, want = float(o.flatten()[first]), float(r.flatten()[first])
    nonfinite = int((~finite).sum())
    where = f"first bad element at {list(idx)}: got {got:.6g}, expected {want:.6g}"
    frac = f"{bad_count}/{n} elements wrong ({100.0 * bad_count / n:.1f}%)"
    if nonfinite:
        nan_count = int(torch.isnan(o).sum())
        if nan_count == nonfinite and nan_count == bad_count:
            kind = "unwritten"
            advice = ("the grader fills outputs with NaN before the call, so these elements were never "
                      "written: check that the grid covers the whole output and that the store mask is "
                      "not too strict")
        else:
            kind = "nan"
            advice = ("NaN/Inf in the output: reading out of bounds (a missing load mask, or `other=` not "
                      "set), or an overflow in a low-precision accumulator")
    else:
        bad_idx = bad.nonzero()
        if edge_of is not None and all(edge_of(tuple(int(v) for v in row)) for row in bad_idx[:4096]):
            kind = "edge"
            advice = ("all wrong elements are in partial tiles at the edge: check the masks for sizes that "
                      "are not multiples of the block")
        elif bad_count < 0.001 * n:
            kind = "values"
            advice = ("a few elements are off: accumulate in fp32 and round once at the end; look for a "
                      "race (a missing barrier between the shared-memory load and its use)")
        else:
            kind = "values"
            advice = ("most elements are wrong: check indexing and strides (row-major vs transposed inputs) "
                      "and that every K-tile is accumulated")
    msg = (f"{frac}; {where} (tolerance {tol.atol_rms:g}*rms + {tol.rtol:g}*|ref|, rms={rms:.3g}); "
           f"max abs err {max_abs:.3g}. Hint: {advice}")
    return Comparison(False, msg, max_abs, rel_fro, bad_count, kind)
