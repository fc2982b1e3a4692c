"""Static model of lab10's W4A16 kernel on an H100, without a GPU: compile each autotune config for sm_90
(Triton's bundled ptxas), read the SASS of its K loop (cuobjdump, also bundled), and print what decides
a memory-bound kernel's speed before any timing:

  warp-instr/weight  instructions of the K loop x warps / weights per K-tile. HBM at ~3 TB/s delivers
                     6e12 packed weights/s; 132 SMs x 4 schedulers x 1.755 GHz issue ~0.93e12
                     warp-instructions/s, so above ~0.15 per weight the SMs, not HBM, set the pace
                     (and well before that, latency: few warps cannot issue every cycle).
  regs, smem         -> CTAs per SM (65536 registers, 228 KB shared memory, 64 warps per SM).
  programs, waves    per benchmark shape (K x N): tiles x SPLIT_K, and programs / (132 x CTAs per SM).

For the prefill lists (--list small / large), every M-tile dequantizes the weights again: the cost per
weight of the layer is instr/wt x ceil(M / BM), and the SM-bound column holds for M <= BM only.

    python tools/sass_count.py                  # every decode config, bf16
    python tools/sass_count.py --list small --dtype fp16 --ops

Numbers are for the Triton installed here; the GPU machine may run another version (BENCHMARKS.md says
which). A model, not a measurement: it ranks configs and explains a measured gap; it does not replace
timing on the GPU.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "stage2_llm" / "lab10_w4a16"
SOLUTION = ROOT / "solutions" / "stage2_llm" / "lab10_w4a16" / "w4a16_gemm.py"
DEFAULT = SOLUTION if SOLUTION.is_file() else LAB / "w4a16_gemm.py"   # the student edition has no solutions/
SMS, ISSUE_PER_S, WEIGHTS_PER_S = 132, 132 * 4 * 1.755e9, 3.0e12 / 0.5
SHAPES = ((4096, 4096), (4096, 14336))

SIG = dict(x_ptr="*D", qweight_ptr="*i32", scales_ptr="*D", qzeros_ptr="*i32", y_ptr="*D",
           partial_ptr="*fp32", tile_lock_ptr="*i32", M="i32", N="i32", K="i32",
           stride_xm="i32", stride_xk="constexpr", stride_qwk="i32", stride_qwn="constexpr",
           stride_sg="i32", stride_sn="constexpr", stride_qzg="i32", stride_qzn="constexpr",
           stride_ym="i32", stride_yn="constexpr", M_BUCKET="i32")
ALIGNED = ("x_ptr", "qweight_ptr", "scales_ptr", "qzeros_ptr", "y_ptr", "partial_ptr", "tile_lock_ptr",
           "N", "K", "stride_xm", "stride_qwk", "stride_sg", "stride_ym", "M_BUCKET")
ADDR = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);")


def load(path: Path):
    sys.path.insert(0, str(LAB))                      # w4a16_helpers (given)
    spec = importlib.util.spec_from_file_location("w4a16_sass", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def compile_cubin(G, cfg, dtype: str) -> tuple[bytes, int]:
    import triton
    from triton.backends.compiler import GPUTarget
    sig = {k: v.replace("D", dtype) for k, v in SIG.items()}
    consts = dict(cfg.kwargs, GROUP_SIZE=128, stride_xk=1, stride_qwn=1, stride_sn=1, stride_qzn=1, stride_yn=1)
    for k in ("GROUP_SIZE", *cfg.kwargs):
        sig[k] = "constexpr"
    names = list(sig)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in ALIGNED}
    src = triton.compiler.ASTSource(fn=G.w4a16_gemm_kernel, signature=sig, constexprs=consts, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    return k.asm["cubin"], k.metadata.shared


def tool(name: str) -> str:
    import triton.backends.nvidia as nv
    return str(Path(nv.__file__).parent / "bin" / name)


def k_loop(sass: str) -> list[str]:
    """The instructions of the longest backward branch's body: the K loop."""
    ins = [(int(m.group(1), 16), m.group(2)) for m in map(ADDR.match, sass.splitlines()) if m]
    best = None
    for addr, text in ins:
        m = re.search(r"BRA\s+(?:`\()?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            span = (int(m.group(1), 16), addr)
            if best is None or span[1] - span[0] > best[1] - best[0]:
                best = span
    return [t for a, t in ins if best and best[0] <= a <= best[1]]


def opcode(text: str) -> str:
    text = re.sub(r"^@!?U?P\w+\s+", "", text.strip())
    return text.split()[0].split(".")[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file", type=Path, default=DEFAULT,
                    help="the kernel file (default: the solution where there is one, else the lab's own file)")
    ap.add_argument("--list", choices=("decode", "small", "large"), default="decode")
    ap.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16")
    ap.add_argument("--ops", action="store_true", help="print the K loop's opcode histogram")
    ap.add_argument("--first", type=int, default=0, help="only the first N configs of the list")
    args = ap.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)
    G = load(args.file)
    configs = {"decode": G.DECODE_CONFIGS, "small": G.SMALL_PREFILL_CONFIGS, "large": G.LARGE_PREFILL_CONFIGS}[args.list]
    print(f"{'BM':>4}{'BN':>5}{'BK':>5}{'SK':>4}{'nib':>4}{'w':>3}{'s':>3} {'regs':>5}{'smem':>7}{'CTA/SM':>7}"
          f"{'instr/wt':>9}{'SM-bound TB/s':>14}  " + "  ".join(f"{k}x{n}: progs/waves" for k, n in SHAPES))
    for cfg in configs[:args.first or None]:
        kw = cfg.kwargs
        cubin, smem = compile_cubin(G, cfg, args.dtype)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            sass = subprocess.run([tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True).stdout
            res = subprocess.run([tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
        regs = int(re.search(r"REG:(\d+)", res).group(1))
        spill = int(re.search(r"STACK:(\d+)", res).group(1))
        loop = k_loop(sass)
        warps = cfg.num_warps
        ctas = min(65536 // (-(-regs // 8) * 8 * 32 * warps), 233472 // (smem + 1024), 32, 64 // warps)
        ipw = len(loop) * warps / (kw["BLOCK_K"] * kw["BLOCK_N"])
        sm_bound = ISSUE_PER_S / ipw * 0.5 / 1e12 if ipw else float("inf")   # TB/s of packed weights
        shapes = "  ".join(f"{-(-n // kw['BLOCK_N']) * kw['SPLIT_K']:>5} / {-(-n // kw['BLOCK_N']) * kw['SPLIT_K'] / (SMS * ctas):4.2f}"
                           + " " * 8 for k, n in SHAPES)
        print(f"{kw['BLOCK_M']:>4}{kw['BLOCK_N']:>5}{kw['BLOCK_K']:>5}{kw['SPLIT_K']:>4}{int(kw.get('NIBBLE_DOTS', 0)):>4}"
              f"{warps:>3}{cfg.num_stages:>3} {regs:>5}{smem:>7}{ctas:>7}{ipw:>9.3f}{sm_bound:>14.1f}  {shapes}"
              + (f"  (stack {spill} B)" if spill else "") + ("" if loop else "  (no K loop found: is the kernel written?)"),
              flush=True)
        if args.ops:
            ops = collections.Counter(map(opcode, loop))
            print("      " + " ".join(f"{o}:{c}" for o, c in ops.most_common(16)))


if __name__ == "__main__":
    main()
