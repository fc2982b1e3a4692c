"""Experiment for lab 10 (instructor tool, not graded): the W4A16 GEMM with A and B swapped.

The solution computes y = x @ W: the dequantized weights are the MMA's B operand. On an H100, Triton's
Hopper MMA (wgmma) takes B only from shared memory, so with B made in registers it falls back to the
Ampere-style MMA (HMMA, mma.sync), and the packed words take a round trip through shared memory (the
K loop's LDS). Computing y^T = W^T @ x^T instead makes the dequantized weights the A operand, which
wgmma can take from registers, and x^T (loaded, not computed) the B operand in shared memory. The
weight tile's N (64 or 128 columns) becomes the MMA's M; the tokens (M = 1..16 at decode, padded to 16,
or 64-128 at prefill) its N. Same GPTQ layout, same nibble planes (eight MMAs of K = BLOCK_K / 8), same
split-K epilogue (the lab's own, on the transposed tile).

    TRITON_INTERPRET=1 PYTHONPATH=. python3 tools/gpu_checks/lab10_swapab.py check     # CPU: correctness
    /path/to/triton-3.6/python tools/gpu_checks/lab10_swapab.py sass                   # no GPU: sm_90 SASS
    PYTHONPATH=. python3 tools/gpu_checks/lab10_swapab.py sweep                         # GPU: vs torch, solution

Hypotheses to test (none measured yet; written 2026-11-28, session 6): (1) the sm_90 build uses HGMMA with
A from registers and no LDS of packed words in the K loop (`sass`); (2) then, at decode, more of the
SMs' issue slots go to dequantization (the solution issues from 24% of them at 1.2 TB/s), and at M = 128
the tensor cores run wgmma instead of mma.sync (the solution: ~170 TFLOP/s against cuBLAS's ~270).
"""
from __future__ import annotations

import collections
import itertools
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
import triton.language as tl

REPO = Path(__file__).resolve().parents[2]
LAB_DIR = REPO / "stage2_llm" / "lab10_w4a16"
SOLUTION = REPO / "solutions" / "stage2_llm" / "lab10_w4a16" / "w4a16_gemm.py"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(LAB_DIR))

from grader.loader import import_file  # noqa: E402

S = import_file(SOLUTION, LAB_DIR)       # the solution: its nibble extraction and the lab's epilogue
magic_low_nibble = S.magic_low_nibble
int4_to_float = S.int4_to_float
splitk_epilogue = S.splitk_epilogue


@triton.jit
def _plane_t(part, x_j, packed, packed_hi, z, J: tl.constexpr):
    """part + (nibble J of every packed word - z) @ x_j^T: packed (BN, BK/8), x_j (BM, BK/8) -> (BN, BM).
    (Loading each x^T plane with its own strided load instead compiles worse for sm_90: 2-byte strided
    elements cannot go through cp.async, so they come as LDG and are stored to shared memory anyway.)"""
    if J % 2 == 0:
        w_j = magic_low_nibble(packed, J // 2, x_j.dtype) - z[:, None]
    else:
        w_j = magic_low_nibble(packed_hi, J // 2, x_j.dtype) - z[:, None]
    if x_j.dtype == tl.float32:
        return tl.dot(w_j, tl.trans(x_j), part, input_precision="ieee")
    return tl.dot(w_j, tl.trans(x_j), part)


@triton.jit
def swapab_kernel(
    x_ptr, qweight_ptr, scales_ptr, qzeros_ptr, y_ptr, partial_ptr, tile_lock_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_qwk, stride_qwn, stride_sg, stride_sn, stride_qzg, stride_qzn,
    stride_ym, stride_yn,
    GROUP_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    offs_kw = tl.arange(0, BLOCK_K // 8)
    mask_m = offs_m < M
    mask_n = offs_n < N
    zero_shift = (offs_n % 8) * 4

    k_tiles = K // BLOCK_K
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    t_begin = pid_k * per_split
    t_end = tl.minimum(t_begin + per_split, k_tiles)

    x_ptrs = (x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
              + (t_begin * BLOCK_K + offs_k)[None, :] * stride_xk)
    # W^T's packed tile: (BLOCK_N, BLOCK_K // 8), word [n, i] = nibbles of K-rows 8i..8i+7 of column n
    qw_ptrs = (qweight_ptr + offs_n[:, None] * stride_qwn
               + (t_begin * (BLOCK_K // 8) + offs_kw)[None, :] * stride_qwk)

    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for t in range(t_begin, t_end):
        g = (t * BLOCK_K) // GROUP_SIZE
        x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)                    # (BM, BK)
        packed = tl.load(qw_ptrs, mask=mask_n[:, None], other=0)                # (BN, BK // 8)
        s = tl.load(scales_ptr + g * stride_sg + offs_n * stride_sn, mask=mask_n, other=0.0)
        zword = tl.load(qzeros_ptr + g * stride_qzg + (offs_n // 8) * stride_qzn, mask=mask_n, other=0)
        z = int4_to_float((zword >> zero_shift) & 0xF, x_ptr.dtype.element_ty)  # (BN,) MAGIC + z
        x_e, x_o = tl.split(tl.reshape(x, (BLOCK_M, BLOCK_K // 8, 2, 2, 2)))   # column 8i + j, j = 4a + 2b + c
        x_e0, x_e1 = tl.split(x_e)
        x_o0, x_o1 = tl.split(x_o)
        x0, x4 = tl.split(x_e0)
        x2, x6 = tl.split(x_e1)
        x1, x5 = tl.split(x_o0)
        x3, x7 = tl.split(x_o1)
        hi = packed >> 4
        part = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        part = _plane_t(part, x0, packed, hi, z, 0)
        part = _plane_t(part, x1, packed, hi, z, 1)
        part = _plane_t(part, x2, packed, hi, z, 2)
        part = _plane_t(part, x3, packed, hi, z, 3)
        part = _plane_t(part, x4, packed, hi, z, 4)
        part = _plane_t(part, x5, packed, hi, z, 5)
        part = _plane_t(part, x6, packed, hi, z, 6)
        part = _plane_t(part, x7, packed, hi, z, 7)
        acc += part * s.to(tl.float32)[:, None]
        x_ptrs += BLOCK_K * stride_xk
        qw_ptrs += (BLOCK_K // 8) * stride_qwk

    splitk_epilogue(tl.trans(acc), y_ptr, partial_ptr, tile_lock_ptr, M, N, stride_ym, stride_yn,
                    pid_m, pid_n, pid_k, BLOCK_M, BLOCK_N, SPLIT_K)


def make_runner(x, qweight, scales, qzeros, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=4, num_warps=4,
                num_stages=3, group_size=128):
    """A closure computing y = x @ dequant(...), its split-K workspace allocated once."""
    M, K = x.shape
    N = qweight.shape[1]
    if K % BLOCK_K or group_size % BLOCK_K or BLOCK_K < 128:
        raise ValueError(f"BLOCK_K must divide K and the group and be >= 128 (nibble planes): K={K} BK={BLOCK_K}")
    tiles = -(-M // BLOCK_M) * -(-N // BLOCK_N)
    partial = torch.empty(max(1, SPLIT_K * tiles * BLOCK_M * BLOCK_N), dtype=torch.float32, device=x.device)
    lock = torch.zeros(tiles, dtype=torch.int32, device=x.device)
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    grid = (-(-N // BLOCK_N), -(-M // BLOCK_M), SPLIT_K)

    def run():
        swapab_kernel[grid](
            x, qweight, scales, qzeros, y, partial, lock, M, N, K,
            x.stride(0), x.stride(1), qweight.stride(0), qweight.stride(1), scales.stride(0), scales.stride(1),
            qzeros.stride(0), qzeros.stride(1), y.stride(0), y.stride(1),
            GROUP_SIZE=group_size, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, SPLIT_K=SPLIT_K,
            num_warps=num_warps, num_stages=num_stages)
        return y
    return run


def _inputs(M, K, N, dtype, seed, device):
    from grader.inputs import make
    from grader.labs import get
    import grader.labs.lab10_w4a16 as L
    spec = get("lab10")
    p = L.gemm(M, K, N, dtype)
    return spec, p, make(spec, p, seed, device)


def check() -> int:
    """CPU (TRITON_INTERPRET=1): ragged M and N, split-K 1 and 3 (uneven), two tile heights."""
    from grader.compare import compare
    bad = 0
    for (M, K, N, dt), (bm, bn, sk) in itertools.product(
            ((1, 512, 136, "fp16"), (5, 384, 64, "fp16"), (19, 256, 72, "fp32")),
            ((16, 64, 1), (16, 32, 3), (32, 64, 2))):
        spec, p, inp = _inputs(M, K, N, dt, 1, "cpu")
        ref = spec.reference(inp, p)
        y = make_runner(inp["x"], inp["qweight"], inp["scales"], inp["qzeros"], BLOCK_M=bm, BLOCK_N=bn,
                        SPLIT_K=sk, num_warps=4, num_stages=1)()
        c = compare(y, ref, spec.tolerances[dt])
        print(f"M={M} K={K} N={N} {dt} BM={bm} BN={bn} SK={sk}: {'ok' if c.ok else 'WRONG'} {c.message[:90]}",
              flush=True)
        bad += not c.ok
    return 1 if bad else 0


SIG = dict(x_ptr="*D", qweight_ptr="*i32", scales_ptr="*D", qzeros_ptr="*i32", y_ptr="*D",
           partial_ptr="*fp32", tile_lock_ptr="*i32", M="i32", N="i32", K="i32",
           stride_xm="i32", stride_xk="constexpr", stride_qwk="i32", stride_qwn="constexpr",
           stride_sg="i32", stride_sn="constexpr", stride_qzg="i32", stride_qzn="constexpr",
           stride_ym="i32", stride_yn="constexpr")
ALIGNED = ("x_ptr", "qweight_ptr", "scales_ptr", "qzeros_ptr", "y_ptr", "partial_ptr", "tile_lock_ptr",
           "N", "K", "stride_xm", "stride_qwk", "stride_sg", "stride_ym")
CONFIGS = [  # BM, BN, SK, warps, stages
    (16, 128, 4, 4, 3), (16, 128, 8, 4, 3), (16, 128, 4, 4, 4), (16, 256, 4, 8, 3), (16, 256, 4, 4, 3),
    (16, 64, 4, 4, 3), (16, 128, 4, 8, 3),
    (64, 128, 2, 4, 3), (128, 128, 2, 8, 3), (128, 64, 2, 4, 3),
]


def sass(dtype: str = "bf16") -> int:
    """No GPU: compile each config for sm_90 and count the K loop's instructions (tools/sass_count.py's
    method): HGMMA = wgmma, HMMA = mma.sync; LDS/STS = shared memory in the loop."""
    from triton.backends.compiler import GPUTarget
    sys.path.insert(0, str(REPO / "tools"))
    import sass_count as SC
    print(f"{'BM':>4}{'BN':>5}{'SK':>4}{'w':>3}{'s':>3} {'regs':>5}{'smem':>7}{'CTA/SM':>7}{'instr/wt':>9}{'stack':>6}  K loop")
    for bm, bn, sk, w, st in CONFIGS:
        sig = {k: v.replace("D", dtype) for k, v in SIG.items()}
        consts = dict(GROUP_SIZE=128, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=128, SPLIT_K=sk,
                      stride_xk=1, stride_qwn=1, stride_sn=1, stride_qzn=1, stride_yn=1)
        for k in ("GROUP_SIZE", "BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K"):
            sig[k] = "constexpr"
        names = list(sig)
        attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ALIGNED}
        try:
            src = triton.compiler.ASTSource(fn=swapab_kernel, signature=sig, constexprs=consts, attrs=attrs)
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": w, "num_stages": st})
        except Exception as exc:                                   # noqa: BLE001 (report and go on)
            print(f"{bm:>4}{bn:>5}{sk:>4}{w:>3}{st:>3}  {type(exc).__name__}: {str(exc)[:150]}")
            continue
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            text = subprocess.run([SC.tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
            res = subprocess.run([SC.tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
        regs = int(re.search(r"REG:(\d+)", res).group(1))
        stack = int(re.search(r"STACK:(\d+)", res).group(1))
        smem = k.metadata.shared
        ctas = min(65536 // (-(-regs // 8) * 8 * 32 * w), 233472 // (smem + 1024), 32, 64 // w)
        loop = SC.k_loop(text)
        ops = collections.Counter(SC.opcode(t) for t in loop)
        per_wt = len(loop) * w / (128 * bn)
        top = " ".join(f"{o}:{ops.get(o, 0)}" for o in ("HGMMA", "HMMA", "LDGSTS", "LDG", "STS", "LDS", "LDSM", "BAR"))
        top += " | " + " ".join(f"{o}:{n}" for o, n in ops.most_common(6))
        print(f"{bm:>4}{bn:>5}{sk:>4}{w:>3}{st:>3} {regs:>5}{smem:>7}{ctas:>7}{per_wt:>9.3f}{stack:>6}  {top}",
              flush=True)
    return 0


def sweep() -> int:
    """GPU: each config against torch bf16 and the solution, timed as the grader times a call."""
    from grader.bench import gpu_time_ms
    from grader.compare import compare
    import grader.labs.lab10_w4a16 as L
    print(torch.cuda.get_device_name())
    print(f"{'M':>4} {'K x N':>11} {'BM':>4} {'BN':>4} {'SK':>3} {'w':>2} {'s':>2} {'us':>7} {'sol us':>7} "
          f"{'torch us':>8} {'x torch':>7} ok")
    for (K, N) in L.BENCH_SHAPES:
        for M in (1, 16, 128):
            spec, p, inp = _inputs(M, K, N, "bf16", 0, "cuda")
            ref = spec.reference(inp, p)
            base = lambda: spec.baselines["torch_bf16"](inp, p)  # noqa: E731
            sol = lambda: S.w4a16_matmul(inp["x"], inp["qweight"], inp["scales"], inp["qzeros"])  # noqa: E731
            base(), sol()
            t_base, t_sol = gpu_time_ms(base), gpu_time_ms(sol)
            for bm, bn, sk, w, st in CONFIGS:
                if (M <= 16) != (bm == 16):
                    continue
                try:
                    run = make_runner(inp["x"], inp["qweight"], inp["scales"], inp["qzeros"], BLOCK_M=bm,
                                      BLOCK_N=bn, SPLIT_K=sk, num_warps=w, num_stages=st)
                    ok = compare(run(), ref, spec.tolerances["bf16"]).ok
                    t = gpu_time_ms(run, warmup_s=0.05)
                except Exception as exc:                           # noqa: BLE001 (out of resources)
                    print(f"{M:>4} {K}x{N} {bm} {bn} {sk} w{w} s{st}: {type(exc).__name__}: {str(exc)[:120]}")
                    continue
                print(f"{M:>4} {K:>5}x{N:<5} {bm:>4} {bn:>4} {sk:>3} {w:>2} {st:>2} {t * 1e3:>7.1f} "
                      f"{t_sol * 1e3:>7.1f} {t_base * 1e3:>8.1f} {t_base / t:>7.2f} {ok}", flush=True)
            del inp, ref
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "check"
    sys.exit({"check": check, "sass": sass, "sweep": sweep}[what]())
