"""Experiment for lab 10 (instructor tool, not graded): a persistent split-K ("stream-K") decode kernel.

Why (BENCHMARKS.md, lab 10, Session 5): the solution's decode kernel streams weights at ~1.2 TB/s although
its K loop's instruction count allows ~4.4 TB/s. Its programs are short (SPLIT_K 4 at K = 4096: 8 K-steps
of 128, three of which fill the cp.async pipeline) and leave wave tails (448 programs = 1.13 waves of 396 CTA
slots at 4096 x 14336). Here a fixed number of programs (a multiple of the SM count) share the
n_tiles x k_tiles units of work evenly: program p takes units [p U / P, (p + 1) U / P), walking K inside
a tile, then on to the next tile. A tile split over several programs is finished by the last to arrive, as
in the solution's split-K epilogue (partials summed in program order: the result does not depend on who
finished last). The K loop's body is the solution's (its jit helpers are imported from it).

    PYTHONPATH=. python3 tools/gpu_checks/lab10_streamk.py sweep   # GPU, ~4 min: vs torch bf16 and the solution
    TRITON_INTERPRET=1 PYTHONPATH=. python3 tools/gpu_checks/lab10_streamk.py check   # CPU: correctness

Hypothesis tested on the H100 (2026-11-28, session 6; BENCHMARKS.md, lab 10, Session 6): that at
4096 x 14336, M = 1, some (programs, tile, warps, stages) reaches >= 2.5x torch (<= 22 us). Refuted: every
config is correct, and the best is 3-15% slower than the solution at each decode benchmark (25.3 vs 24.3 us
there). Kept as the measured record and as a starting point, not used by the solution.
"""
from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

REPO = Path(__file__).resolve().parents[2]
LAB_DIR = REPO / "stage2_llm" / "lab10_w4a16"
SOLUTION = REPO / "solutions" / "stage2_llm" / "lab10_w4a16" / "w4a16_gemm.py"
sys.path.insert(0, str(REPO))

from grader.loader import import_file  # noqa: E402

S = import_file(SOLUTION, LAB_DIR)      # the solution: its jit helpers are this kernel's K-loop body
nibble_plane_dot = S.nibble_plane_dot
int4_to_float = S.int4_to_float


@triton.jit
def _owner(unit, P, U):
    """The program whose range [p U / P, (p + 1) U / P) holds `unit` (P <= U: no program's range is empty,
    so the programs holding a tile's units are consecutive and their count is the tile's segment count)."""
    return ((unit + 1) * P + U - 1) // U - 1


@triton.jit
def streamk_kernel(
    x_ptr, qweight_ptr, scales_ptr, qzeros_ptr, y_ptr, partial_ptr, tile_lock_ptr,
    M, N, K, MAX_SEGS,
    stride_xm, stride_xk, stride_qwk, stride_qwn, stride_sg, stride_sn, stride_qzg, stride_qzn,
    stride_ym, stride_yn,
    GROUP_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    NIBBLE_DOTS: tl.constexpr,
):
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    n_tiles = tl.cdiv(N, BLOCK_N)
    k_tiles = K // BLOCK_K
    U = n_tiles * k_tiles
    u = pid * U // P
    u_end = (pid + 1) * U // P

    offs_m = tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kw = tl.arange(0, BLOCK_K // 8)
    mask_m = offs_m < M
    nibble_shift = tl.arange(0, 8) * 4
    in_tile = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    rows = offs_m[:, None] < M

    while u < u_end:
        tile = u // k_tiles
        k0 = u - tile * k_tiles
        k1 = tl.minimum(k_tiles, k0 + (u_end - u))
        offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        zero_shift = (offs_n % 8) * 4
        x_ptrs = (x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
                  + (k0 * BLOCK_K + offs_k)[None, :] * stride_xk)
        qw_ptrs = (qweight_ptr + (k0 * (BLOCK_K // 8) + offs_kw)[:, None] * stride_qwk
                   + offs_n[None, :] * stride_qwn)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for t in range(k0, k1):
            g = (t * BLOCK_K) // GROUP_SIZE
            x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
            packed = tl.load(qw_ptrs, mask=mask_n[None, :], other=0)
            s = tl.load(scales_ptr + g * stride_sg + offs_n * stride_sn, mask=mask_n, other=0.0)
            zword = tl.load(qzeros_ptr + g * stride_qzg + (offs_n // 8) * stride_qzn, mask=mask_n, other=0)
            z = int4_to_float((zword >> zero_shift) & 0xF, x_ptr.dtype.element_ty)
            if NIBBLE_DOTS:
                x_e, x_o = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_K // 8, 2, 2, 2)))
                x_e0, x_e1 = tl.split(x_e)
                x_o0, x_o1 = tl.split(x_o)
                x0, x4 = tl.split(x_e0)
                x2, x6 = tl.split(x_e1)
                x1, x5 = tl.split(x_o0)
                x3, x7 = tl.split(x_o1)
                hi = packed >> 4
                part = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                part = nibble_plane_dot(part, x0, packed, hi, z, 0)
                part = nibble_plane_dot(part, x1, packed, hi, z, 1)
                part = nibble_plane_dot(part, x2, packed, hi, z, 2)
                part = nibble_plane_dot(part, x3, packed, hi, z, 3)
                part = nibble_plane_dot(part, x4, packed, hi, z, 4)
                part = nibble_plane_dot(part, x5, packed, hi, z, 5)
                part = nibble_plane_dot(part, x6, packed, hi, z, 6)
                part = nibble_plane_dot(part, x7, packed, hi, z, 7)
            else:
                q = (packed[:, None, :] >> nibble_shift[None, :, None]) & 0xF
                w = tl.reshape(int4_to_float(q, x_ptr.dtype.element_ty), (BLOCK_K, BLOCK_N)) - z[None, :]
                if x_ptr.dtype.element_ty == tl.float32:
                    part = tl.dot(x, w, input_precision="ieee")
                else:
                    part = tl.dot(x, w)
            acc += part * s.to(tl.float32)[None, :]
            x_ptrs += BLOCK_K * stride_xk
            qw_ptrs += (BLOCK_K // 8) * stride_qwk

        y_ptrs = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :] * stride_yn
        y_mask = rows & mask_n[None, :]
        first = _owner(tile * k_tiles, P, U)
        n_segs = _owner(tile * k_tiles + k_tiles - 1, P, U) - first + 1
        if n_segs == 1:
            tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)
        else:
            slot_ptr = partial_ptr + (tile * MAX_SEGS + (pid - first)) * (BLOCK_M * BLOCK_N)
            tl.store(slot_ptr + in_tile, acc, mask=rows)
            tl.debug_barrier()
            arrived = tl.atomic_add(tile_lock_ptr + tile, 1)
            if arrived == n_segs - 1:
                total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                for seg in range(0, n_segs):
                    total += tl.load(partial_ptr + (tile * MAX_SEGS + seg) * (BLOCK_M * BLOCK_N) + in_tile,
                                     mask=rows, other=0.0, cache_modifier=".cg")
                tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=y_mask)
                tl.atomic_xchg(tile_lock_ptr + tile, 0)
        u += k1 - k0


def max_segments(U: int, P: int, k_tiles: int) -> int:
    """The most programs one tile can be split over: every program's range holds >= U // P units."""
    shortest = max(1, U // P)
    return min(k_tiles, P, -(-k_tiles // shortest) + 1)


def make_runner(x, qweight, scales, qzeros, programs: int, BLOCK_N=128, BLOCK_K=128, num_warps=4,
                num_stages=3, nibble=True, group_size=128):
    """A closure computing y = x @ dequant(...) with the workspace allocated once (as the solution keeps it)."""
    M, K = x.shape
    N = qweight.shape[1]
    if M > 16 or K % BLOCK_K or group_size % BLOCK_K:
        raise ValueError(f"decode only (M <= 16) with BLOCK_K dividing the group: M={M} K={K} BK={BLOCK_K}")
    k_tiles, n_tiles = K // BLOCK_K, -(-N // BLOCK_N)
    U = k_tiles * n_tiles
    P = max(1, min(programs, U))
    segs = max_segments(U, P, k_tiles)
    partial = torch.empty(n_tiles * segs * 16 * BLOCK_N, dtype=torch.float32, device=x.device)
    lock = torch.zeros(n_tiles, dtype=torch.int32, device=x.device)
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)

    def run():
        streamk_kernel[(P,)](
            x, qweight, scales, qzeros, y, partial, lock, M, N, K, segs,
            x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1), scales.stride(0), scales.stride(1),
            qzeros.stride(0), qzeros.stride(1), y.stride(0), y.stride(1),
            GROUP_SIZE=group_size, BLOCK_M=16, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, NIBBLE_DOTS=nibble,
            num_warps=num_warps, num_stages=num_stages)
        return y
    return run


def _inputs(M, K, N, dtype, seed, device):
    from grader.inputs import make
    from grader.labs import get
    import grader.labs.lab10_w4a16 as L
    spec = get("lab10")
    p = L.gemm(M, K, N, dtype)
    inp = make(spec, p, seed, device)
    return spec, p, inp


def check() -> int:
    """CPU (TRITON_INTERPRET=1): program counts from 1 to the unit count (tiles split over 1 to k_tiles
    programs, ranges that start and end inside a tile), both K-loop forms."""
    from grader.compare import compare
    bad = 0
    for (M, K, N, dt), nibble in itertools.product(((3, 512, 256, "fp16"), (1, 384, 136, "fp32")), (True, False)):
        if nibble and dt == "fp32":
            continue
        spec, p, inp = _inputs(M, K, N, dt, 1, "cpu")
        ref = spec.reference(inp, p)
        k_tiles, n_tiles = K // 128, -(-N // 128)
        for P in sorted({1, 2, 3, 5, k_tiles - 1, k_tiles, k_tiles + 1, k_tiles * n_tiles - 1, k_tiles * n_tiles}):
            if P < 1:
                continue
            y = make_runner(inp["x"], inp["qweight"], inp["scales"], inp["qzeros"], P, nibble=nibble)()
            c = compare(y, ref, spec.tolerances[dt])
            print(f"M={M} K={K} N={N} {dt} nibble={int(nibble)} programs={P}: {'ok' if c.ok else 'WRONG'} "
                  f"{c.message[:100]}", flush=True)
            bad += not c.ok
    return 1 if bad else 0


def sweep() -> int:
    """GPU: the stream-K kernel over (programs per SM, BLOCK_N, warps, stages) against torch bf16 and the
    solution's w4a16_matmul, timed as the grader times a call (grader.bench.gpu_time_ms)."""
    from grader.bench import gpu_time_ms
    from grader.compare import compare
    import grader.labs.lab10_w4a16 as L
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(torch.cuda.get_device_name(), f"{sms} SMs")
    print(f"{'M':>3} {'K x N':>11} {'progs':>6} {'BN':>4} {'w':>2} {'s':>2} {'us':>7} {'sol us':>7} {'torch us':>8} "
          f"{'x torch':>7} {'GB/s':>6} ok")
    for (K, N) in L.BENCH_SHAPES:
        for M in (1, 16):
            spec, p, inp = _inputs(M, K, N, "bf16", 0, "cuda")
            ref = spec.reference(inp, p)
            base = lambda: spec.baselines["torch_bf16"](inp, p)  # noqa: E731
            sol = lambda: S.w4a16_matmul(inp["x"], inp["qweight"], inp["scales"], inp["qzeros"])  # noqa: E731
            base(), sol()
            t_base, t_sol = gpu_time_ms(base), gpu_time_ms(sol)
            for per_sm, bn, warps, stages in itertools.product((1, 2, 3, 4), (128, 256), (2, 4), (3,)):
                try:
                    run = make_runner(inp["x"], inp["qweight"], inp["scales"], inp["qzeros"], per_sm * sms,
                                      BLOCK_N=bn, num_warps=warps, num_stages=stages)
                    ok = compare(run(), ref, spec.tolerances["bf16"]).ok
                    t = gpu_time_ms(run, warmup_s=0.05)
                except Exception as exc:                     # out of resources (shared memory, registers)
                    print(f"{M:>3} {K}x{N} {per_sm}/SM BN {bn} w{warps} s{stages}: {type(exc).__name__}: "
                          f"{str(exc)[:120]}")
                    continue
                gbps = L.bytes_moved(p) / (t * 1e-3) / 1e9
                print(f"{M:>3} {K:>5}x{N:<5} {per_sm * sms:>6} {bn:>4} {warps:>2} {stages:>2} {t * 1e3:>7.1f} "
                      f"{t_sol * 1e3:>7.1f} {t_base * 1e3:>8.1f} {t_base / t:>7.2f} {gbps:>6.0f} {ok}", flush=True)
            del inp, ref
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "check"
    sys.exit(check() if what == "check" else sweep())
